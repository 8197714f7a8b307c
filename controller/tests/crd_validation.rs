//! The generated CRDs, applied to a real API server, accept valid objects (with their defaults)
//! and reject invalid ones with a message a user can act on — before any controller runs.

use deskpod_controller::api::{CiAgent, Team, Workspace, WorkspaceTemplate};
use deskpod_testsupport::{TestCluster, TestNamespace};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Resource};
use serde_json::{Value, json};

/// A dynamic API for `K`, so tests can send JSON the Rust types would refuse to build.
fn dynamic_api<K: Resource<DynamicType = ()>>(client: &Client, namespace: Option<&str>) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(&K::group(&()), &K::version(&()), &K::kind(&()));
    let resource = ApiResource::from_gvk(&gvk);
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

fn object<K: Resource<DynamicType = ()>>(name: &str, spec: Value) -> DynamicObject {
    let gvk = GroupVersionKind::gvk(&K::group(&()), &K::version(&()), &K::kind(&()));
    let mut obj = DynamicObject::new(name, &ApiResource::from_gvk(&gvk));
    obj.data = json!({ "spec": spec });
    obj
}

async fn setup() -> TestNamespace {
    TestCluster::shared().namespace("crd").await.expect("test namespace")
}

#[tokio::test]
async fn one_valid_object_of_each_kind_is_accepted_with_defaults() {
    let ns = setup().await;
    let client = &ns.client;

    let teams = dynamic_api::<Team>(client, None);
    let team_name = format!("{}-team", ns.name);
    let team = teams
        .create(
            &PostParams::default(),
            &object::<Team>(
                &team_name,
                json!({
                    "displayName": "Platform",
                    "quota": { "cpu": "8", "memory": "32Gi", "storage": "100Gi", "pods": 20, "workspaces": 10, "ciAgents": 5, "gpus": 0 },
                    "limits": { "maxCpu": 4, "maxMemory": "8Gi", "maxHomeSize": "50Gi" },
                    "members": [
                        { "user": "alice@example.com", "role": "lead" },
                        { "user": "bob@example.com", "role": "contractor", "expiresAt": "2027-01-31T18:00:00Z" }
                    ],
                    "network": { "egressAllow": [{ "cidr": "10.20.0.0/16", "ports": [443] }] }
                }),
            ),
        )
        .await
        .expect("a valid Team is accepted");
    assert_eq!(team.data["spec"]["allowLeadAccess"], json!(false), "allowLeadAccess defaults to false");

    let templates = dynamic_api::<WorkspaceTemplate>(client, None);
    let template_name = format!("{}-python", ns.name);
    let template = templates
        .create(
            &PostParams::default(),
            &object::<WorkspaceTemplate>(
                &template_name,
                json!({
                    "displayName": "Python 3",
                    "image": "deskpod/python:latest",
                    "resources": { "cpuRequest": "500m", "cpuLimit": "2", "memoryRequest": "1Gi", "memoryLimit": "4Gi" },
                    "homeSize": "10Gi",
                    "shmSize": "1Gi",
                    "env": [{ "name": "TZ", "value": "Europe/Berlin" }],
                    "idleTimeout": "1h30m"
                }),
            ),
        )
        .await
        .expect("a valid WorkspaceTemplate is accepted");
    assert_eq!(template.data["spec"]["port"], json!(6901), "port defaults to 6901");
    assert_eq!(template.data["spec"]["protocol"], json!("novnc"), "protocol defaults to novnc");

    let workspaces = dynamic_api::<Workspace>(client, Some(&ns.name));
    let workspace = workspaces
        .create(
            &PostParams::default(),
            &object::<Workspace>("alice-py", json!({ "owner": "alice@example.com", "template": template_name })),
        )
        .await
        .expect("a valid Workspace is accepted");
    assert_eq!(workspace.data["spec"]["running"], json!(true), "running defaults to true");
    assert_eq!(workspace.data["spec"]["home"]["reclaimPolicy"], json!("Delete"));

    // The typed API reads back what the dynamic one wrote: the Rust types and the schema agree.
    let typed: Api<Workspace> = ns.api();
    let ws = typed.get("alice-py").await.expect("typed read of the workspace");
    assert_eq!(ws.spec.owner, "alice@example.com");

    let agents = dynamic_api::<CiAgent>(client, Some(&ns.name));
    agents
        .create(
            &PostParams::default(),
            &object::<CiAgent>(
                "build-1",
                json!({ "image": "deskpod/ci-agent:latest", "command": ["sh", "-c", "make test"], "deadline": "30m", "ttlAfterFinished": "10m" }),
            ),
        )
        .await
        .expect("a valid CiAgent is accepted");
    let typed: Api<CiAgent> = ns.api();
    assert_eq!(typed.get("build-1").await.expect("typed read").spec.deadline.as_deref(), Some("30m"));

    teams.delete(&team_name, &Default::default()).await.expect("delete team");
    templates.delete(&template_name, &Default::default()).await.expect("delete template");
}

/// Which API an invalid object is sent to.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Team,
    Template,
    Workspace,
    Agent,
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_clear_message_and_nothing_is_created() {
    let ns = setup().await;
    let quantity = "must be a non-negative Kubernetes quantity such as 500m, 2 or 4Gi";
    let name_rule = "name must be at most 40 characters";
    let team = |quota: Value| json!({ "quota": quota });
    let template = |extra: Value| {
        let mut spec = json!({ "displayName": "Python", "image": "deskpod/python:latest" });
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        spec
    };
    let long_name = "a-workspace-name-that-is-far-too-long-for-a-hostname";

    let cases: Vec<(&str, Kind, String, Value, &str)> = vec![
        ("quantity that is not a quantity", Kind::Team, "lots", team(json!({ "cpu": "lots" })), quantity),
        ("negative quantity", Kind::Team, "neg", team(json!({ "memory": "-1Gi" })), quantity),
        ("negative count", Kind::Team, "negpods", team(json!({ "pods": -1 })), "should be greater than or equal to 0"),
        (
            "unknown member role",
            Kind::Team,
            "role",
            json!({ "members": [{ "user": "eve", "role": "owner" }] }),
            r#"Unsupported value: "owner": supported values: "lead", "engineer", "contractor""#,
        ),
        (
            "user listed twice",
            Kind::Team,
            "dup",
            json!({ "members": [{ "user": "eve", "role": "lead" }, { "user": "eve", "role": "engineer" }] }),
            "Duplicate value",
        ),
        (
            "egress CIDR out of range",
            Kind::Team,
            "cidr",
            json!({ "network": { "egressAllow": [{ "cidr": "10.0.0.0/33" }] } }),
            "must be a CIDR such as 10.20.0.0/16",
        ),
        ("team name starting with a digit", Kind::Team, "9lives", json!({}), name_rule),
        (
            "unknown protocol",
            Kind::Template,
            "rdp",
            template(json!({ "protocol": "rdp" })),
            r#"Unsupported value: "rdp": supported values: "novnc", "kasm""#,
        ),
        ("template without image", Kind::Template, "noimage", json!({ "displayName": "X" }), "spec.image: Required value"),
        ("port out of range", Kind::Template, "port", template(json!({ "port": 70000 })), "less than or equal to 65535"),
        ("idle timeout in words", Kind::Template, "idle", template(json!({ "idleTimeout": "2 hours" })), "must be a duration such as 90s, 30m or 1h30m"),
        (
            "relative home path",
            Kind::Template,
            "home",
            template(json!({ "homePath": "../etc" })),
            "must be an absolute path without '..'",
        ),
        (
            "illegal env name",
            Kind::Template,
            "env",
            template(json!({ "env": [{ "name": "1BAD", "value": "x" }] })),
            "must be a valid environment variable name",
        ),
        (
            "home size with a wrong unit",
            Kind::Workspace,
            "badsize",
            json!({ "owner": "alice", "template": "python", "home": { "size": "10Gb" } }),
            quantity,
        ),
        (
            "unknown reclaim policy",
            Kind::Workspace,
            "reclaim",
            json!({ "owner": "alice", "template": "python", "home": { "reclaimPolicy": "Recycle" } }),
            r#"Unsupported value: "Recycle""#,
        ),
        ("workspace without owner", Kind::Workspace, "noowner", json!({ "template": "python" }), "spec.owner: Required value"),
        ("workspace name too long", Kind::Workspace, long_name, json!({ "owner": "alice", "template": "python" }), name_rule),
        ("agent with image and template", Kind::Agent, "both", json!({ "image": "x", "template": "y" }), "set exactly one of image or template"),
        ("agent with neither image nor template", Kind::Agent, "neither", json!({ "args": ["x"] }), "set exactly one of image or template"),
        (
            "jenkins agent with a command",
            Kind::Agent,
            "jenkins",
            json!({ "image": "x", "command": ["sh"], "jenkins": { "url": "https://ci.example.com", "agentName": "a", "secretRef": { "name": "s", "key": "k" } } }),
            "jenkins mode runs the inbound agent; command must not be set",
        ),
        ("agent deadline in words", Kind::Agent, "deadline", json!({ "image": "x", "deadline": "soon" }), "must be a duration"),
    ]
    .into_iter()
    .map(|(what, kind, name, spec, msg)| {
        // Cluster-scoped names are shared by all tests: make them unique to this namespace.
        let name = match kind {
            Kind::Team | Kind::Template if name != "9lives" => format!("{}-{name}", ns.name),
            _ => name.to_string(),
        };
        (what, kind, name, spec, msg)
    })
    .collect();

    let mut failures = Vec::new();
    for (what, kind, name, spec, expected) in &cases {
        let (api, obj) = match kind {
            Kind::Team => (dynamic_api::<Team>(&ns.client, None), object::<Team>(name, spec.clone())),
            Kind::Template => {
                (dynamic_api::<WorkspaceTemplate>(&ns.client, None), object::<WorkspaceTemplate>(name, spec.clone()))
            }
            Kind::Workspace => {
                (dynamic_api::<Workspace>(&ns.client, Some(&ns.name)), object::<Workspace>(name, spec.clone()))
            }
            Kind::Agent => (dynamic_api::<CiAgent>(&ns.client, Some(&ns.name)), object::<CiAgent>(name, spec.clone())),
        };
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => failures.push(format!("{what}: accepted, expected rejection with {expected:?}")),
            Err(kube::Error::Api(status)) => {
                if status.code != 422 || !status.message.contains(expected) {
                    failures.push(format!(
                        "{what}: got {} {:?}, expected 422 containing {expected:?}",
                        status.code, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{what}: unexpected error {e}")),
        }
        if api.get_opt(name).await.expect("get after rejected create").is_some() {
            failures.push(format!("{what}: the object exists after being rejected"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[tokio::test]
async fn owner_and_template_of_a_workspace_cannot_change() {
    let ns = setup().await;
    let api = dynamic_api::<Workspace>(&ns.client, Some(&ns.name));
    api.create(&PostParams::default(), &object::<Workspace>("mine", json!({ "owner": "alice", "template": "python" })))
        .await
        .expect("create workspace");

    for (field, value, expected) in
        [("owner", "mallory", "owner cannot be changed"), ("template", "java", "template cannot be changed")]
    {
        let mut ws = api.get("mine").await.expect("get workspace");
        ws.data["spec"][field] = json!(value);
        let err = api.replace("mine", &PostParams::default(), &ws).await.expect_err("the change is refused");
        match err {
            kube::Error::Api(status) => assert!(status.message.contains(expected), "{field}: {}", status.message),
            other => panic!("{field}: unexpected error {other}"),
        }
    }
    // Stopping is an allowed change.
    let mut ws = api.get("mine").await.expect("get workspace");
    ws.data["spec"]["running"] = json!(false);
    let ws = api.replace("mine", &PostParams::default(), &ws).await.expect("running may change");
    assert_eq!(ws.data["spec"]["owner"], json!("alice"));
}

#[tokio::test]
async fn a_teams_placement_is_fixed_once_it_exists() {
    let ns = setup().await;
    let api = dynamic_api::<Team>(&ns.client, None);
    let here = format!("{}-here", ns.name);
    let there = format!("{}-there", ns.name);
    api.create(&PostParams::default(), &object::<Team>(&here, json!({ "quota": { "pods": 2 } })))
        .await
        .expect("a team on the management cluster");
    api.create(
        &PostParams::default(),
        &object::<Team>(&there, json!({ "quota": { "pods": 2 }, "placement": { "cluster": "east" } })),
    )
    .await
    .expect("a team placed on a member cluster");

    for (team, placement) in
        [(&here, Some(json!({ "cluster": "east" }))), (&there, Some(json!({ "cluster": "west" }))), (&there, None)]
    {
        let mut object = api.get(team).await.expect("get team");
        match &placement {
            Some(p) => object.data["spec"]["placement"] = p.clone(),
            None => _ = object.data["spec"].as_object_mut().unwrap().remove("placement"),
        }
        let err = api.replace(team, &PostParams::default(), &object).await.expect_err("moving is refused");
        match err {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 422, "{team} → {placement:?}: {}", status.message);
                assert!(status.message.contains("placement cannot be changed"), "{}", status.message);
            }
            other => panic!("{team} → {placement:?}: unexpected error {other}"),
        }
    }
    // Everything else about a placed team may change.
    let mut object = api.get(&there).await.expect("get team");
    object.data["spec"]["quota"]["pods"] = json!(3);
    object.data["spec"]["members"] = json!([{ "user": "alice@example.com", "role": "lead" }]);
    let changed = api.replace(&there, &PostParams::default(), &object).await.expect("other changes are allowed");
    assert_eq!(changed.data["spec"]["placement"]["cluster"], json!("east"));
    for team in [&here, &there] {
        api.delete(team, &Default::default()).await.expect("delete team");
    }
}
