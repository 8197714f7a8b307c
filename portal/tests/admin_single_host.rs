//! The admin pages for teams and templates on the single-host backend (in-process portal, an
//! in-memory database, the real Docker Engine): an admin creates a team and a template through
//! the forms and an engineer of that team then sees the template in the catalog; bad input comes
//! back with a message and saves nothing (templates: an image that is no image reference, absurd
//! quantities, a request over its limit, each a 400 naming the field, from the API and the form);
//! everyone but admins gets 403 on every admin route, page and API; a template in use cannot be
//! deleted; a template Docker cannot run (its image not on the host, or stored before images were
//! checked) makes creating a workspace a 400 naming the template, leaving nothing behind.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::http::{Method, StatusCode};
use common::{Browser, Portal, Reply};
use deskpod_portal::SqliteStore;
use deskpod_portal::backend::Backend;
use deskpod_portal::backend::docker::DockerBackend;
use deskpod_portal::store::GlobalRole;
use rstest::rstest;
use serde_json::json;

const ADMIN: &str = "root@example.com";
const ALICE: &str = "alice@example.com";
const IMAGE: &str = "deskpod/desktop-python:latest";

/// A portal on a fresh single-host backend, an admin and an engineer (in no team yet); removes
/// the containers, volumes and networks of its teams when dropped.
struct Host {
    portal: Portal,
    backend: Arc<DockerBackend>,
    /// Team names of this test, unique on the engine.
    teams: Vec<String>,
}

impl Host {
    async fn new() -> Self {
        Self::on(SqliteStore::open_in_memory().unwrap()).await
    }

    /// The same on `store`.
    async fn on(store: SqliteStore) -> Self {
        let backend = DockerBackend::connect(store).await.expect("a Docker Engine (images/setup-docker)");
        let backend = Arc::new(backend);
        let mut portal = Portal::new().await;
        portal.state = portal.state.clone().with_backend(backend.clone());
        portal.add_user(ADMIN, GlobalRole::Admin).await;
        portal.add_user(ALICE, GlobalRole::User).await;
        Self { portal, backend, teams: vec![] }
    }

    /// A team name of its own.
    fn team_name(&mut self, what: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("adm{}-{}-{what}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        self.teams.push(name.clone());
        name
    }

    async fn audit_actions(&self) -> Vec<(String, String, String)> {
        let log = self.portal.store().audit_log(100).await.unwrap();
        log.into_iter().map(|r| (r.entry.action, r.entry.object, r.entry.outcome.as_str().to_owned())).collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for team in &self.teams {
            let label = format!("label=deskpod.io/team={team}");
            for id in docker(&["ps", "-aq", "--filter", &label]).split_whitespace() {
                docker(&["rm", "-f", id]);
            }
            for volume in docker(&["volume", "ls", "-q", "--filter", &label]).split_whitespace() {
                docker(&["volume", "rm", "-f", volume]);
            }
            docker(&["network", "rm", &self.backend.names().network(team)]);
        }
    }
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("the docker CLI");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A signed-in browser and its session's CSRF token.
async fn signed_in(portal: &Portal, email: &str) -> (Browser, String) {
    let mut browser = Browser::signed_in(portal, email).await;
    let csrf = browser.session_csrf(portal).await;
    (browser, csrf)
}

/// The create-team form's fields: `members` as (e-mail, role, access end) rows.
fn team_fields<'a>(
    csrf: &'a str,
    name: &'a str,
    memory: &'a str,
    members: &[(&'a str, &'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        ("csrf", csrf),
        ("name", name),
        ("display_name", "Platform"),
        ("cpu", "8"),
        ("memory", memory),
        ("storage", ""),
        ("workspaces", "5"),
        ("ci_agents", "2"),
    ];
    for (user, role, expires) in members {
        fields.extend([("member_user", *user), ("member_role", *role), ("member_expires", *expires)]);
    }
    fields
}

/// The create-template form's fields.
fn template_fields<'a>(csrf: &'a str, name: &'a str, cpu_limit: &'a str, port: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf", csrf),
        ("name", name),
        ("display_name", "Python from the admin page"),
        ("description", "Python 3"),
        ("image", IMAGE),
        ("protocol", "novnc"),
        ("port", port),
        ("cpu_request", "500m"),
        ("cpu_limit", cpu_limit),
        ("memory_request", "512Mi"),
        ("memory_limit", "1Gi"),
        ("home_size", ""),
        ("shm_size", "256Mi"),
        ("idle_timeout", "2h"),
    ]
}

/// A new API token of `browser`'s user with `scopes`; its secret.
async fn token(portal: &Portal, browser: &Browser, csrf: &str, scopes: &[&str]) -> String {
    let body = json!({"name": "admin-ci", "scopes": scopes}).to_string();
    let reply = browser.api(portal, Method::POST, "/api/v1/tokens", Some(csrf), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.json()["secret"].as_str().unwrap().to_owned()
}

fn assert_refused(reply: &Reply, status: StatusCode, message: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert!(reply.body.contains(r#"class="error" role="alert""#), "the form shows an error: {}", reply.body);
    assert!(reply.body.contains(message), "expected {message:?} in {}", reply.body);
}

#[tokio::test]
async fn an_admin_creates_a_team_and_a_template_and_the_engineer_then_sees_the_template() {
    let mut host = Host::new().await;
    let team = host.team_name("made");
    let portal = &host.portal;
    let (mut admin, csrf) = signed_in(portal, ADMIN).await;

    // The header links the pages for admins.
    let home = admin.get(portal, "/admin/teams").await;
    assert_eq!(home.status, StatusCode::OK, "{}", home.body);
    assert!(home.body.contains(r#"href="/admin/teams""#) && home.body.contains(r#"href="/admin/templates""#));

    let reply = admin.post(portal, "/admin/templates", &template_fields(&csrf, "adm-python", "2", "6901")).await;
    assert_eq!((reply.status, reply.location()), (StatusCode::SEE_OTHER, "/admin/templates"), "{}", reply.body);
    let fields =
        team_fields(&csrf, &team, "4Gi", &[(ALICE, "engineer", ""), ("carol@example.com", "contractor", "2030-01-31")]);
    let reply = admin.post(portal, "/admin/teams", &fields).await;
    assert_eq!((reply.status, reply.location()), (StatusCode::SEE_OTHER, "/admin/teams"), "{}", reply.body);

    // What the backend saved is what the forms said.
    let spec = host.backend.team_spec(&team).await.unwrap().expect("the team was saved");
    assert_eq!(spec.display_name.as_deref(), Some("Platform"));
    assert_eq!(
        (spec.quota.memory.unwrap().0.as_str(), spec.quota.workspaces, spec.quota.ci_agents),
        ("4Gi", Some(5), Some(2))
    );
    assert_eq!(spec.members.len(), 2);
    assert_eq!(spec.members[1].expires_at.as_ref().unwrap().0.to_string(), "2030-01-31T00:00:00Z");
    let template = host.backend.template_spec("adm-python").await.unwrap().expect("the template was saved");
    assert_eq!((template.image.as_str(), template.port, template.idle_timeout.as_deref()), (IMAGE, 6901, Some("2h")));

    // The list shows the team with its members and quota, the edit page its values.
    let list = admin.get(portal, "/admin/teams").await;
    let row = list.body.split(&format!(r#"<tr data-team="{team}">"#)).nth(1).expect("the team is listed");
    let row = row.split("</tr>").next().unwrap();
    assert!(row.contains("<td>2</td>") && row.contains("Workspaces 0 of 5"), "{row}");
    let edit = admin.get(portal, &format!("/admin/teams/{team}")).await;
    assert_eq!(edit.status, StatusCode::OK, "{}", edit.body);
    assert!(
        edit.body.contains(r#"value="carol@example.com""#) && edit.body.contains(r#"value="2030-01-31T00:00:00Z""#)
    );

    // Alice is now a member and sees the template in the catalog.
    let (mut alice, _) = signed_in(portal, ALICE).await;
    let me = alice.api(portal, Method::GET, "/api/v1/me", None, None).await.json();
    assert!(me.to_string().contains(&team), "alice is a member: {me}");
    let catalog = alice.get(portal, "/templates").await;
    assert_eq!(catalog.status, StatusCode::OK);
    assert!(catalog.body.contains("Python from the admin page"), "{}", catalog.body);

    // Editing removes carol and lets leads in; limits the form does not show stay.
    let mut stored = host.backend.team_spec(&team).await.unwrap().unwrap();
    stored.limits.max_cpu = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()));
    host.backend.put_team(&team, stored).await.unwrap();
    let mut fields = team_fields(&csrf, &team, "6Gi", &[(ALICE, "lead", ""), ("", "engineer", "")]);
    fields.push(("allow_lead_access", "on"));
    let reply = admin.post(portal, &format!("/admin/teams/{team}"), &fields).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let spec = host.backend.team_spec(&team).await.unwrap().unwrap();
    assert_eq!(spec.members.len(), 1);
    assert!(spec.allow_lead_access);
    assert_eq!(spec.quota.memory.unwrap().0, "6Gi");
    assert_eq!(spec.limits.max_cpu.unwrap().0, "2");

    // Every change is in the audit log.
    let actions = host.audit_actions().await;
    for (action, object) in [("template.put", "adm-python"), ("team.put", team.as_str())] {
        assert!(
            actions.iter().any(|(a, o, outcome)| a == action && o == object && outcome == "success"),
            "{action} {object}: {actions:?}"
        );
    }
}

#[tokio::test]
async fn bad_input_comes_back_with_a_message_and_nothing_is_saved() {
    let mut host = Host::new().await;
    let team = host.team_name("bad");
    let portal = &host.portal;
    let (mut admin, csrf) = signed_in(portal, ADMIN).await;

    // A quantity that is not one: the form again, as sent, with the message.
    let reply =
        admin.post(portal, "/admin/teams", &team_fields(&csrf, &team, "16 GB", &[(ALICE, "engineer", "")])).await;
    assert_refused(&reply, StatusCode::BAD_REQUEST, "the memory quota: &#34;16 GB&#34; has an unknown suffix");
    assert!(
        reply.body.contains(r#"value="16 GB""#) && reply.body.contains(&format!(r#"value="{ALICE}""#)),
        "{}",
        reply.body
    );
    // A bad name, a member who is not an e-mail address, a negative count, a count that is no number.
    let cases: [(&str, &str, &str, &str); 4] = [
        ("Bad_Name", "4Gi", ALICE, "is not a valid team name"),
        (&team, "4Gi", "alice", "is not an e-mail address"),
        (&team, "4Gi", ALICE, "whole number"),
        (&team, "4Gi", ALICE, "the workspace quota is -1"),
    ];
    for (i, (name, memory, member, message)) in cases.into_iter().enumerate() {
        let mut fields = team_fields(&csrf, name, memory, &[(member, "engineer", "")]);
        match i {
            2 => fields.push(("workspaces", "five")),
            3 => fields.push(("workspaces", "-1")),
            _ => {}
        }
        let reply = admin.post(portal, "/admin/teams", &fields).await;
        assert_refused(&reply, StatusCode::BAD_REQUEST, message);
    }
    assert!(host.backend.team_spec(&team).await.unwrap().is_none(), "no team was saved");
    assert!(host.backend.teams().await.unwrap().is_empty());
    assert!(host.backend.team_spec("Bad_Name").await.unwrap().is_none());

    // Templates: a CPU limit that is no quantity, a port out of range, an idle timeout that is no duration.
    for (cpu, port, timeout, message) in [
        ("lots", "6901", "2h", "the CPU limit: &#34;lots&#34; does not start with a number"),
        ("2", "70000", "2h", "the port is 70000; it must be from 1 to 65535"),
        ("2", "6901", "2 hours", "the idle timeout: &#34;2 hours&#34; is not a duration"),
    ] {
        let mut fields = template_fields(&csrf, "adm-bad", cpu, port);
        fields.retain(|(k, _)| *k != "idle_timeout");
        fields.push(("idle_timeout", timeout));
        let reply = admin.post(portal, "/admin/templates", &fields).await;
        assert_refused(&reply, StatusCode::BAD_REQUEST, message);
    }
    assert!(host.backend.template_spec("adm-bad").await.unwrap().is_none(), "no template was saved");

    // Editing an existing template with a bad value changes nothing.
    let reply = admin.post(portal, "/admin/templates", &template_fields(&csrf, "adm-good", "2", "6901")).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let before = host.backend.template_spec("adm-good").await.unwrap().unwrap();
    let mut fields = template_fields(&csrf, "adm-good", "2", "6901");
    fields.retain(|(k, _)| *k != "image");
    fields.push(("image", ""));
    let reply = admin.post(portal, "/admin/templates/adm-good", &fields).await;
    assert_refused(&reply, StatusCode::BAD_REQUEST, "the image must not be empty");
    assert_eq!(host.backend.template_spec("adm-good").await.unwrap().unwrap(), before);

    // The JSON API refuses the same way.
    let reply = admin
        .api(
            portal,
            Method::PUT,
            &format!("/api/v1/admin/teams/{team}"),
            Some(&csrf),
            Some(&json!({"quota": {"cpu": "a lot"}}).to_string()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert!(reply.json()["error"].as_str().unwrap().contains("the CPU quota: \"a lot\""), "{}", reply.body);
    assert!(host.backend.team_spec(&team).await.unwrap().is_none());
    // Refusals are audited as failures.
    let actions = host.audit_actions().await;
    assert!(actions.iter().any(|(a, o, outcome)| a == "team.put" && *o == team && outcome == "failure"), "{actions:?}");
}

#[tokio::test]
async fn everyone_but_admins_is_refused_on_every_admin_route() {
    let mut host = Host::new().await;
    let team = host.team_name("guarded");
    host.backend
        .put_team(&team, serde_json::from_value(json!({ "members": [{ "user": ALICE, "role": "lead" }] })).unwrap())
        .await
        .unwrap();
    host.backend
        .put_template("adm-kept", serde_json::from_value(json!({ "displayName": "Kept", "image": IMAGE })).unwrap())
        .await
        .unwrap();
    let portal = &host.portal;
    let (mut alice, csrf) = signed_in(portal, ALICE).await;

    // Pages, including the forms posted with a valid CSRF token.
    let team_path = format!("/admin/teams/{team}");
    for path in ["/admin/teams", team_path.as_str(), "/admin/templates", "/admin/templates/adm-kept"] {
        let page = alice.get(portal, path).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "GET {path}: {}", page.body);
        assert!(page.body.contains("for platform admins"), "{}", page.body);
    }
    let delete_path = "/admin/templates/adm-kept/delete";
    for path in ["/admin/teams", team_path.as_str(), "/admin/templates", "/admin/templates/adm-kept", delete_path] {
        let mut fields = team_fields(&csrf, &team, "1Gi", &[(ALICE, "lead", "")]);
        fields.push(("image", IMAGE));
        let reply = alice.post(portal, path, &fields).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "POST {path}: {}", reply.body);
    }
    // The header does not link the pages for her.
    assert!(!alice.get(portal, "/").await.body.contains("/admin/teams"));

    // The JSON API with her session.
    let team_api = format!("/api/v1/admin/teams/{team}");
    let routes = [
        (Method::GET, "/api/v1/admin/teams", None),
        (Method::GET, team_api.as_str(), None),
        (Method::PUT, team_api.as_str(), Some(json!({ "members": [] }).to_string())),
        (Method::GET, "/api/v1/admin/templates", None),
        (Method::GET, "/api/v1/admin/templates/adm-kept", None),
        (
            Method::PUT,
            "/api/v1/admin/templates/adm-kept",
            Some(json!({ "displayName": "X", "image": "x" }).to_string()),
        ),
        (Method::DELETE, "/api/v1/admin/templates/adm-kept", None),
    ];
    for (method, path, body) in &routes {
        let reply = alice.api(portal, method.clone(), path, Some(&csrf), body.as_deref()).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}: {}", reply.body);
    }
    // And with a token: hers cannot get the scope; an admin's token needs it.
    let reply = alice
        .api(
            portal,
            Method::POST,
            "/api/v1/tokens",
            Some(&csrf),
            Some(&json!({"name": "x", "scopes": ["admin:write"]}).to_string()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert!(reply.body.contains("admin:write is for admins only"), "{}", reply.body);
    let (admin, admin_csrf) = signed_in(portal, ADMIN).await;
    let without = token(portal, &admin, &admin_csrf, &["workspaces:read"]).await;
    let with = token(portal, &admin, &admin_csrf, &["admin:write"]).await;
    for (method, path, body) in &routes {
        let reply = portal.api(method.clone(), path, Some(&without), body.as_deref()).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}: {}", reply.body);
        assert!(reply.body.contains("admin:write"), "{}", reply.body);
    }
    let reply = portal.api(Method::GET, "/api/v1/admin/teams", Some(&with), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["teams"][0]["name"], team.as_str());

    // Nothing changed.
    let spec = host.backend.team_spec(&team).await.unwrap().unwrap();
    assert_eq!((spec.members.len(), spec.quota.memory), (1, None));
    let template = host.backend.template_spec("adm-kept").await.unwrap().expect("not deleted");
    assert_eq!(template.display_name, "Kept");
    let actions = host.audit_actions().await;
    assert!(actions.iter().any(|(a, _, outcome)| a == "template.delete" && outcome == "denied"), "{actions:?}");
}

#[tokio::test]
async fn a_template_in_use_is_not_deleted() {
    let mut host = Host::new().await;
    let team = host.team_name("inuse");
    let portal = &host.portal;
    let (mut admin, csrf) = signed_in(portal, ADMIN).await;
    let reply = admin.post(portal, "/admin/templates", &template_fields(&csrf, "adm-used", "1", "6901")).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let reply = admin.post(portal, "/admin/teams", &team_fields(&csrf, &team, "4Gi", &[(ALICE, "engineer", "")])).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);

    // Alice makes a workspace of it (a real container).
    let (alice, alice_csrf) = signed_in(portal, ALICE).await;
    let body = json!({"team": team, "name": "dev", "template": "adm-used"}).to_string();
    let reply = alice.api(portal, Method::POST, "/api/v1/workspaces", Some(&alice_csrf), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);

    // The page's delete button and the API are refused, saying which workspace uses it.
    let reply = admin.post(portal, "/admin/templates/adm-used/delete", &[("csrf", &csrf)]).await;
    assert_refused(
        &reply,
        StatusCode::CONFLICT,
        &format!("template adm-used is still used by 1 workspace(s) ({team}/dev)"),
    );
    let reply = admin.api(portal, Method::DELETE, "/api/v1/admin/templates/adm-used", Some(&csrf), None).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert!(host.backend.template_spec("adm-used").await.unwrap().is_some(), "the template is still there");

    // Once the workspace is gone, it can be deleted.
    let reply =
        alice.api(portal, Method::DELETE, &format!("/api/v1/workspaces/{team}/dev"), Some(&alice_csrf), None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    let reply = admin.post(portal, "/admin/templates/adm-used/delete", &[("csrf", &csrf)]).await;
    assert_eq!((reply.status, reply.location()), (StatusCode::SEE_OTHER, "/admin/templates"), "{}", reply.body);
    assert!(host.backend.template_spec("adm-used").await.unwrap().is_none());
    let reply = admin.api(portal, Method::DELETE, "/api/v1/admin/templates/adm-used", Some(&csrf), None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    let actions = host.audit_actions().await;
    assert!(actions.iter().any(|(a, o, outcome)| a == "template.delete" && o == "adm-used" && outcome == "success"));
    assert!(actions.iter().any(|(a, o, outcome)| a == "template.delete" && o == "adm-used" && outcome == "failure"));
}

/// A template body the API takes, and the same with the fields of `change` set.
fn template_body(change: serde_json::Value) -> serde_json::Value {
    let mut body = json!({ "displayName": "Kept", "image": IMAGE,
                           "resources": { "cpuRequest": "500m", "cpuLimit": "2", "memoryLimit": "2Gi" } });
    json_merge(&mut body, change);
    body
}

/// `target` with the fields of `change` set, objects merged key by key.
fn json_merge(target: &mut serde_json::Value, change: serde_json::Value) {
    match (target, change) {
        (serde_json::Value::Object(target), serde_json::Value::Object(change)) => {
            for (key, value) in change {
                json_merge(target.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (target, change) => *target = change,
    }
}

/// `PUT /api/v1/admin/templates/{name}` with `body`.
async fn put_template(portal: &Portal, admin: &Browser, csrf: &str, name: &str, body: &serde_json::Value) -> Reply {
    let path = format!("/api/v1/admin/templates/{name}");
    admin.api(portal, Method::PUT, &path, Some(csrf), Some(&body.to_string())).await
}

#[rstest]
// The three of issue #24.
#[case::shell_in_image(json!({ "image": "alpine;rm -rf /" }), "image", "is not a valid image reference: it contains ';'")]
#[case::absurd_memory(
    json!({ "resources": { "memoryLimit": "999999999Ti" } }),
    "resources.memoryLimit",
    "the memory limit 999999999Ti is more than a workspace may have (1Ti)"
)]
#[case::cpu_request_over_limit(
    json!({ "resources": { "cpuRequest": "8", "cpuLimit": "1" } }),
    "resources.cpuRequest",
    "the CPU request 8 is more than the CPU limit 1"
)]
// And their neighbours.
#[case::space_in_image(json!({ "image": "deskpod/python latest" }), "image", "it contains ' '")]
#[case::uppercase_repository(json!({ "image": "Deskpod/Python:latest" }), "image", "must be lowercase")]
#[case::bad_tag(json!({ "image": "deskpod/python:-x" }), "image", "not starting with '.' or '-'")]
#[case::short_digest(json!({ "image": "deskpod/python@sha256:abc" }), "image", "64 lowercase hexadecimal")]
#[case::no_image(json!({ "image": "" }), "image", "the image must not be empty")]
#[case::cpu_not_a_quantity(json!({ "resources": { "cpuLimit": "two" } }), "resources.cpuLimit", "does not start with a number")]
#[case::too_many_cpus(json!({ "resources": { "cpuLimit": "300" } }), "resources.cpuLimit", "more than a workspace may have (256)")]
#[case::no_cpu(json!({ "resources": { "cpuLimit": "0" } }), "resources.cpuLimit", "at least 10m")]
#[case::memory_request_over_limit(
    json!({ "resources": { "memoryRequest": "3Gi" } }),
    "resources.memoryRequest",
    "the memory request 3Gi is more than the memory limit 2Gi"
)]
#[case::shm_over_memory(json!({ "shmSize": "4Gi" }), "shmSize", "more than the memory limit 2Gi")]
#[case::huge_home(json!({ "homeSize": "1Pi" }), "homeSize", "more than a workspace may have (16Ti)")]
#[case::too_many_gpus(json!({ "gpus": 17 }), "gpus", "0 to 16 GPUs, not 17")]
#[tokio::test]
async fn a_bad_template_is_refused_naming_the_field_and_nothing_is_stored(
    #[case] change: serde_json::Value,
    #[case] field: &str,
    #[case] message: &str,
) {
    let host = Host::new().await;
    let portal = &host.portal;
    let (admin, csrf) = signed_in(portal, ADMIN).await;
    let reply = put_template(portal, &admin, &csrf, "adm-kept", &template_body(json!({}))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    // Neither a new template nor a change to one that exists.
    let bad = template_body(change);
    for name in ["adm-kept", "adm-new"] {
        let reply = put_template(portal, &admin, &csrf, name, &bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name} {bad}: {}", reply.body);
        let json = reply.json();
        assert_eq!(json["field"], field, "{name} {bad}: {}", reply.body);
        assert!(json["error"].as_str().unwrap().contains(message), "expected {message:?}: {}", reply.body);
    }
    assert_eq!(
        host.backend.template_spec("adm-kept").await.unwrap(),
        Some(serde_json::from_value(template_body(json!({}))).unwrap())
    );
    assert_eq!(host.backend.template_spec("adm-new").await.unwrap(), None);
    let listed = admin.api(portal, Method::GET, "/api/v1/admin/templates", None, None).await.json();
    assert_eq!(listed["templates"].as_array().unwrap().len(), 1, "{listed}");
}

#[rstest]
#[case::registry_port_path_tag(json!({ "image": "registry.example.com:5000/team/desktops/python:1.2-rc_1" }))]
#[case::digest(json!({ "image": format!("ghcr.io/acme/desktop@sha256:{}", "0123456789abcdef".repeat(4)) }))]
#[case::tag_and_digest(json!({ "image": format!("localhost:5000/desktop:dev@sha256:{}", "a".repeat(64)) }))]
#[case::at_the_bounds(json!({ "resources": { "cpuRequest": "256", "cpuLimit": "256", "memoryRequest": "1Ti", "memoryLimit": "1Ti" },
                              "shmSize": "1Ti", "homeSize": "16Ti", "gpus": 16 }))]
#[case::requests_equal_limits_in_other_units(json!({ "resources": { "cpuRequest": "2000m", "memoryRequest": "2048Mi" } }))]
#[tokio::test]
async fn a_good_template_is_saved(#[case] change: serde_json::Value) {
    let host = Host::new().await;
    let portal = &host.portal;
    let (admin, csrf) = signed_in(portal, ADMIN).await;
    let body = template_body(change);
    let reply = put_template(portal, &admin, &csrf, "adm-good", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.body);
    assert_eq!(host.backend.template_spec("adm-good").await.unwrap(), Some(serde_json::from_value(body).unwrap()));
}

#[tokio::test]
async fn the_template_form_refuses_the_same_and_shows_the_message() {
    let host = Host::new().await;
    let portal = &host.portal;
    let (mut admin, csrf) = signed_in(portal, ADMIN).await;
    let reply = put_template(portal, &admin, &csrf, "adm-kept", &template_body(json!({}))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    let mut fields = template_fields(&csrf, "adm-form", "2", "6901");
    fields.retain(|(k, _)| *k != "image");
    fields.push(("image", "alpine;rm -rf /"));
    let reply = admin.post(portal, "/admin/templates", &fields).await;
    assert_refused(&reply, StatusCode::BAD_REQUEST, "is not a valid image reference: it contains &#39;;&#39;");
    assert!(reply.body.contains(r#"value="Python from the admin page""#), "the form keeps what was typed");
    let mut fields = template_fields(&csrf, "adm-kept", "1", "6901");
    fields.retain(|(k, _)| *k != "cpu_request");
    fields.push(("cpu_request", "8"));
    let reply = admin.post(portal, "/admin/templates/adm-kept", &fields).await;
    assert_refused(&reply, StatusCode::BAD_REQUEST, "the CPU request 8 is more than the CPU limit 1");
    assert_eq!(host.backend.template_spec("adm-form").await.unwrap(), None);
    let kept = host.backend.template_spec("adm-kept").await.unwrap().unwrap();
    assert_eq!((kept.display_name.as_str(), kept.resources.cpu_limit.unwrap().0.as_str()), ("Kept", "2"));
}

/// What a template stored before its image was checked (an older portal) still holds: its image
/// is written into the database directly, past the rules.
fn store_image_past_the_rules(database: &std::path::Path, template: &str, image: &str) {
    let db = rusqlite::Connection::open(database).unwrap();
    let object: String =
        db.query_row("SELECT object FROM docker_templates WHERE name = ?1", [template], |row| row.get(0)).unwrap();
    let mut object: serde_json::Value = serde_json::from_str(&object).unwrap();
    object["spec"]["image"] = json!(image);
    db.execute("UPDATE docker_templates SET object = ?1 WHERE name = ?2", [object.to_string(), template.into()])
        .unwrap();
}

#[rstest]
#[case::image_not_on_this_host(
    Some(format!("deskpod/never-built-{}:latest", std::process::id())),
    None,
    "is not on this host"
)]
#[case::image_stored_before_the_rules(
    None,
    Some("alpine;rm -rf /"),
    "Docker cannot use its image \"alpine;rm -rf /\" (invalid reference format"
)]
#[tokio::test]
async fn a_template_docker_refuses_makes_create_a_4xx_naming_it_and_leaves_nothing(
    #[case] image: Option<String>,
    #[case] stored_past_the_rules: Option<&str>,
    #[case] message: &str,
) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let database = std::env::temp_dir().join(format!(
        "deskpod-admin-{}-{}.db",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut host = Host::on(SqliteStore::open(&database).await.unwrap()).await;
    let team = host.team_name("ghost");
    host.backend
        .put_team(&team, serde_json::from_value(json!({ "members": [{ "user": ALICE, "role": "engineer" }] })).unwrap())
        .await
        .unwrap();
    let portal = &host.portal;
    let (admin, csrf) = signed_in(portal, ADMIN).await;
    let body = template_body(json!({ "displayName": "Ghost", "image": image.as_deref().unwrap_or(IMAGE) }));
    let reply = put_template(portal, &admin, &csrf, "adm-ghost", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "a valid reference is taken, wherever its image is: {}", reply.body);
    if let Some(bad) = stored_past_the_rules {
        store_image_past_the_rules(&database, "adm-ghost", bad);
        assert_eq!(host.backend.template_spec("adm-ghost").await.unwrap().unwrap().image, bad);
    }

    let (alice, alice_csrf) = signed_in(portal, ALICE).await;
    let body = json!({ "team": team, "name": "dev", "template": "adm-ghost" }).to_string();
    let reply = alice.api(portal, Method::POST, "/api/v1/workspaces", Some(&alice_csrf), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let error = reply.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("the template adm-ghost cannot start") && error.contains(message), "{error}");

    // Nothing is left: no workspace, no container, no home volume.
    let listed = alice.api(portal, Method::GET, &format!("/api/v1/workspaces/{team}/dev"), None, None).await;
    assert_eq!(listed.status, StatusCode::NOT_FOUND, "{}", listed.body);
    assert!(host.backend.workspaces(&team, None).await.unwrap().is_empty());
    let label = format!("label=deskpod.io/team={team}");
    assert_eq!(docker(&["ps", "-aq", "--filter", &label]).trim(), "", "no container");
    assert_eq!(docker(&["volume", "ls", "-q", "--filter", &label]).trim(), "", "no volume");
    drop(host);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }
}
