//! Table tests of the CiAgent renderer: what an agent runs, the pod it gets and what a pod says.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use rstest::rstest;
use serde_json::{Value, json};

use super::render::*;
use crate::api::{CiAgent, CiAgentPhase, Team, WorkspaceTemplate};

fn agent(spec: Value, annotations: Value) -> CiAgent {
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "CiAgent",
        "metadata": { "name": "build-7", "namespace": "team-web", "uid": "agent-uid", "annotations": annotations },
        "spec": spec
    }))
    .unwrap()
}

fn team(limits: Value) -> Team {
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "metadata": { "name": "web" }, "spec": { "limits": limits }
    }))
    .unwrap()
}

fn template() -> WorkspaceTemplate {
    serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate", "metadata": { "name": "rust" },
        "spec": {
            "displayName": "Rust", "image": "deskpod/rust:1", "imagePullPolicy": "Always",
            "resources": { "cpuRequest": "1", "memoryRequest": "2Gi" },
            "env": [{ "name": "CARGO_HOME", "value": "/cache" }, { "name": "MODE", "value": "template" }]
        }
    }))
    .unwrap()
}

fn env_of(pod: &Pod) -> Vec<(String, Option<String>, Option<String>)> {
    let container = &pod.spec.as_ref().unwrap().containers[0];
    container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let secret =
                e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).map(|s| format!("{}/{}", s.name, s.key));
            (e.name.clone(), e.value.clone(), secret)
        })
        .collect()
}

#[test]
fn a_command_agent_runs_once_restricted_and_without_a_token() {
    let a = agent(
        json!({ "image": "alpine:3", "command": ["sh", "-c"], "args": ["make test"], "deadline": "30m",
                "env": [{ "name": "CI", "value": "true" }], "resources": { "cpuRequest": "500m", "memoryRequest": "1Gi" } }),
        json!({ "kwok.deskpod.io/exit-code": "0", "kubectl.kubernetes.io/last-applied-configuration": "{}" }),
    );
    let d = validate(&a, None, &team(json!({}))).expect("valid");
    let pod = render_pod(&d);
    assert_eq!(pod.metadata.name.as_deref(), Some("build-7-agent"));
    assert_eq!(pod.metadata.labels.as_ref().unwrap()[AGENT_LABEL], "build-7");
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap().keys().collect::<Vec<_>>(),
        ["kwok.deskpod.io/exit-code"],
        "the agent's annotations, not kubectl's"
    );
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("CiAgent", "agent-uid", Some(true)));
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.active_deadline_seconds, Some(1800));
    let security = spec.security_context.as_ref().unwrap();
    assert_eq!((security.run_as_non_root, security.run_as_user), (Some(true), Some(AGENT_UID)));
    assert_eq!(security.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("alpine:3"));
    assert_eq!(c.command.as_deref(), Some(&["sh".to_string(), "-c".to_string()][..]));
    assert_eq!(c.args.as_deref(), Some(&["make test".to_string()][..]));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
    let resources = c.resources.as_ref().unwrap();
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "1Gi", "the limit takes the request's value");
    assert_eq!(env_of(&pod), [("CI".to_string(), Some("true".to_string()), None)]);
}

#[test]
fn a_jenkins_agent_gets_its_url_name_and_secret_reference() {
    let a = agent(
        json!({ "jenkins": { "url": "https://ci.example.com/", "agentName": "k8s-7", "secretRef": { "name": "jnlp", "key": "secret" } } }),
        json!({}),
    );
    let pod = render_pod(&validate(&a, None, &team(json!({}))).expect("valid"));
    assert_eq!(pod.spec.as_ref().unwrap().containers[0].image.as_deref(), Some(JENKINS_IMAGE));
    assert_eq!(
        env_of(&pod),
        [
            ("JENKINS_URL".into(), Some("https://ci.example.com/".into()), None),
            ("JENKINS_AGENT_NAME".into(), Some("k8s-7".into()), None),
            ("JENKINS_SECRET".into(), None, Some("jnlp/secret".into())),
        ]
    );
}

#[test]
fn a_template_agent_takes_the_templates_image_environment_and_resources() {
    let a = agent(json!({ "template": "rust", "env": [{ "name": "MODE", "value": "agent" }] }), json!({}));
    let pod = render_pod(&validate(&a, Some(&template()), &team(json!({}))).expect("valid"));
    let c = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!((c.image.as_deref(), c.image_pull_policy.as_deref()), (Some("deskpod/rust:1"), Some("Always")));
    assert_eq!(c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0, "1");
    let env: Vec<_> = env_of(&pod).into_iter().map(|(n, v, _)| (n, v.unwrap())).collect();
    assert_eq!(env, [("CARGO_HOME".into(), "/cache".into()), ("MODE".into(), "agent".into())], "the agent's wins");
}

#[test]
fn a_template_agent_goes_where_the_template_says_and_an_image_agent_anywhere() {
    let mut on_real_nodes = template();
    on_real_nodes.spec.node_selector = [("deskpod.io/node".to_string(), "real".to_string())].into();
    on_real_nodes.spec.tolerations =
        serde_json::from_value(json!([{ "key": "deskpod.io/real-node", "operator": "Exists" }])).unwrap();
    let spec =
        |a: CiAgent| render_pod(&validate(&a, Some(&on_real_nodes), &team(json!({}))).expect("valid")).spec.unwrap();
    let placed = spec(agent(json!({ "template": "rust" }), json!({})));
    assert_eq!(placed.node_selector.unwrap()["deskpod.io/node"], "real");
    assert_eq!(placed.tolerations.unwrap()[0].operator.as_deref(), Some("Exists"));
    let anywhere = spec(agent(json!({ "image": "alpine" }), json!({})));
    assert_eq!((anywhere.node_selector, anywhere.tolerations), (None, None));
}

#[rstest]
#[case::missing_template(json!({ "template": "nope" }), json!({}), "TemplateNotFound")]
#[case::over_team_cpu(json!({ "image": "x", "resources": { "cpuLimit": "4" } }), json!({ "maxCpu": "2" }), "OverTeamLimit")]
#[case::request_above_limit(json!({ "image": "x", "resources": { "memoryRequest": "2Gi", "memoryLimit": "1Gi" } }), json!({}), "RequestAboveLimit")]
fn agents_that_cannot_run_say_why(#[case] spec: Value, #[case] limits: Value, #[case] reason: &str) {
    let err = validate(&agent(spec, json!({})), None, &team(limits)).unwrap_err();
    assert_eq!(err.reason, reason, "{}", err.message);
}

fn pod(status: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": "build-7-agent", "creationTimestamp": "2026-01-01T10:00:00Z" },
        "status": status
    }))
    .unwrap()
}

fn terminated(code: i32) -> Value {
    json!([{ "name": AGENT_CONTAINER, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": { "terminated": { "exitCode": code, "startedAt": "2026-01-01T10:00:01Z", "finishedAt": "2026-01-01T10:00:09Z" } } }])
}

#[rstest]
#[case::pending(json!({ "phase": "Pending" }), CiAgentPhase::Starting, None, "waiting for a node")]
#[case::secret_missing(
    json!({ "phase": "Pending", "containerStatuses": [{ "name": AGENT_CONTAINER, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": "CreateContainerConfigError", "message": "secret \"jnlp\" not found" } } }] }),
    CiAgentPhase::Starting, None, "CreateContainerConfigError: secret \"jnlp\" not found"
)]
#[case::running(json!({ "phase": "Running", "startTime": "2026-01-01T10:00:01Z" }), CiAgentPhase::Running, None, "")]
#[case::succeeded(json!({ "phase": "Succeeded", "containerStatuses": terminated(0) }), CiAgentPhase::Succeeded, Some(0), "the job succeeded")]
#[case::failed(json!({ "phase": "Failed", "containerStatuses": terminated(3) }), CiAgentPhase::Failed, Some(3), "the job exited with code 3")]
#[case::evicted(json!({ "phase": "Failed", "reason": "Evicted", "message": "low on memory" }), CiAgentPhase::Failed, None, "the pod failed: Evicted: low on memory")]
#[case::kubelet_deadline(json!({ "phase": "Failed", "reason": "DeadlineExceeded" }), CiAgentPhase::TimedOut, None, "the job ran past its deadline and was stopped")]
fn pods_tell_how_the_job_goes(
    #[case] status: Value,
    #[case] phase: CiAgentPhase,
    #[case] exit_code: Option<i32>,
    #[case] message: &str,
) {
    let observed = observe(&pod(status));
    assert_eq!((observed.phase, observed.exit_code), (phase, exit_code));
    assert_eq!(observed.message.unwrap_or_default(), message);
    if phase.is_finished() && exit_code.is_some() {
        assert_eq!(observed.finished_at.unwrap().0.to_string(), "2026-01-01T10:00:09Z");
    }
}

#[test]
fn the_deadline_counts_from_the_pods_creation() {
    let at = deadline_at(&pod(json!({})), Duration::from_secs(90)).unwrap();
    assert_eq!(at.to_string(), "2026-01-01T10:01:30Z");
}
