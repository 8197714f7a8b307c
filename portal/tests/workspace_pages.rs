//! The workspace pages and JSON API on the Kubernetes backend, against the real test cluster and
//! the real controllers: a workspace's life through the API and the forms, who may touch whose
//! workspace (every new route), and bad input that must create nothing.

mod common;
mod kube_common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{Browser, Reply};
use deskpod_controller::api::WorkspacePhase;
use deskpod_testsupport::wait_deleted;
use kube_common::{Fixture, ONE_CONTROLLER, WAIT, text};
use serde_json::{Value, json};

/// A signed-in browser and its session's CSRF token.
async fn signed_in(f: &Fixture, email: &str) -> (Browser, String) {
    let mut browser = Browser::signed_in(&f.portal, email).await;
    let csrf = browser.session_csrf(&f.portal).await;
    (browser, csrf)
}

/// Polls the API as `browser` until `name` is at `stage` (the page's script does the same).
async fn wait_stage(f: &Fixture, browser: &Browser, name: &str, stage: Option<&str>, phase: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = browser.api(&f.portal, Method::GET, "/api/v1/workspaces", None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let list = reply.json();
        let found = list["workspaces"].as_array().unwrap().iter().find(|w| w["name"] == name).cloned();
        if let Some(ws) = found
            && ws["stage"].as_str() == stage
            && ws["phase"] == phase
        {
            return ws;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never reached {phase}: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn alice_creates_watches_stops_starts_and_deletes_workspaces() {
    let _one = ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-pages", 3, false).await;
    let (mut alice, csrf) = signed_in(&f, &f.alice).await;
    let team = f.team.as_str();

    // The catalog, as a page and as JSON.
    let catalog = alice.get(&f.portal, "/templates").await;
    assert_eq!(catalog.status, StatusCode::OK);
    assert!(catalog.body.contains("Python 3 and VS Code"), "{}", catalog.body);
    assert!(catalog.body.contains(&format!("/workspaces/new?template={}", f.template)));
    let templates = alice.api(&f.portal, Method::GET, "/api/v1/templates", None, None).await.json();
    assert!(templates["templates"].as_array().unwrap().iter().any(|t| t["name"] == f.template.as_str()));

    // The form offers the team and its remaining quota.
    let form = alice.get(&f.portal, "/workspaces/new").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains(&format!(r#"<option value="{team}""#)), "{}", form.body);
    assert!(form.body.contains("Workspaces") && form.body.contains("0 of 3"), "{}", form.body);

    // One through the API, one through the form.
    let body = json!({ "team": team, "name": "api-ws", "template": f.template }).to_string();
    let created = alice.api(&f.portal, Method::POST, "/api/v1/workspaces", Some(&csrf), Some(&body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let created = created.json();
    assert_eq!((text(&created, "owner"), created["running"].as_bool()), (f.alice.clone(), Some(true)));
    assert_eq!(text(&created, "desktopPath"), format!("/workspaces/{team}/api-ws/desktop"));
    let fields = [("csrf", csrf.as_str()), ("team", team), ("name", "form-ws"), ("template", f.template.as_str())];
    let posted = alice.post(&f.portal, "/workspaces", &fields).await;
    assert_eq!((posted.status, posted.location()), (StatusCode::SEE_OTHER, "/"), "{}", posted.body);

    // Both reach Running (kwok), the stage the page shows is "ready" and the desktop can be opened.
    for name in ["api-ws", "form-ws"] {
        let ws = wait_stage(&f, &alice, name, Some("ready"), "Running").await;
        assert_eq!(ws["blockedReason"], Value::Null);
    }
    let home = alice.get(&f.portal, "/").await;
    assert_eq!(home.status, StatusCode::OK);
    for name in ["api-ws", "form-ws"] {
        let link = format!(r#"data-when="ready" href="/workspaces/{team}/{name}/desktop">"#);
        assert!(home.body.contains(&link), "{name} has an open desktop link: {}", home.body);
    }
    assert!(home.body.contains(r#"<script src="/static/workspaces.js" defer></script>"#));
    let script = alice.get(&f.portal, "/static/workspaces.js").await;
    assert!(script.body.contains("/api/v1/workspaces") || script.body.contains("data-poll"));

    // The team page: members, quota usage and the running workspaces.
    f.wait_workspaces_used("2").await;
    let page = alice.get(&f.portal, &format!("/teams/{team}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&f.bob) && page.body.contains("(expired)"), "{}", page.body);
    assert!(page.body.contains("<meter") && page.body.contains("2 of 3"), "{}", page.body);
    assert!(page.body.contains(&format!(r#"data-workspace="{team}/form-ws""#)));
    let team_json = alice.api(&f.portal, Method::GET, &format!("/api/v1/teams/{team}"), None, None).await.json();
    assert_eq!(team_json["running"].as_array().unwrap().len(), 2, "{team_json}");
    assert_eq!(team_json["quota"]["count/workspaces.deskpod.io"]["used"], "2");

    // Stop through the form, start through the API.
    let stop = [("csrf", csrf.as_str())];
    let stopped = alice.post(&f.portal, &format!("/workspaces/{team}/form-ws/stop"), &stop).await;
    assert_eq!(stopped.status, StatusCode::SEE_OTHER, "{}", stopped.body);
    wait_stage(&f, &alice, "form-ws", None, "Stopped").await;
    f.wait_phase("form-ws", WorkspacePhase::Stopped).await;
    let start = format!("/api/v1/workspaces/{team}/form-ws/start");
    assert_eq!(alice.api(&f.portal, Method::POST, &start, Some(&csrf), None).await.status, StatusCode::NO_CONTENT);
    wait_stage(&f, &alice, "form-ws", Some("ready"), "Running").await;

    // Delete one through the API and one through the form; both go from the cluster.
    let delete = format!("/api/v1/workspaces/{team}/api-ws");
    assert_eq!(alice.api(&f.portal, Method::DELETE, &delete, Some(&csrf), None).await.status, StatusCode::NO_CONTENT);
    let deleted = alice.post(&f.portal, &format!("/workspaces/{team}/form-ws/delete"), &stop).await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.body);
    for name in ["api-ws", "form-ws"] {
        wait_deleted(&f.workspaces(), name, name, WAIT).await.unwrap();
    }
    let gone = alice.api(&f.portal, Method::GET, &delete, None, None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);

    // Every change is in the audit log, by alice.
    let log = f.portal.store().audit_log(100).await.unwrap();
    let actions: Vec<(String, String, String)> = log
        .iter()
        .rev()
        .filter(|r| r.entry.action.starts_with("workspace."))
        .map(|r| (r.entry.action.clone(), r.entry.object.clone(), r.entry.outcome.as_str().to_owned()))
        .collect();
    let expect = |action: &str, name: &str| (action.to_owned(), format!("{team}/{name}"), "success".to_owned());
    assert_eq!(
        actions,
        [
            expect("workspace.create", "api-ws"),
            expect("workspace.create", "form-ws"),
            expect("workspace.stop", "form-ws"),
            expect("workspace.start", "form-ws"),
            expect("workspace.delete", "api-ws"),
            expect("workspace.delete", "form-ws"),
        ]
    );
    assert!(log.iter().all(|r| !r.entry.action.starts_with("workspace.") || r.entry.actor == f.alice));
    f.delete().await;
}

/// What a route answered, for the table's messages.
fn summary(reply: &Reply) -> String {
    format!("{} {}", reply.status, reply.body.chars().take(300).collect::<String>())
}

#[tokio::test]
async fn only_the_owner_may_touch_a_workspace_and_bad_input_creates_nothing() {
    let _one = ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-authz", 1, false).await;
    let team = f.team.as_str();
    let (mut alice, alice_csrf) = signed_in(&f, &f.alice).await;
    let fields = [("csrf", alice_csrf.as_str()), ("team", team), ("name", "dev"), ("template", f.template.as_str())];
    assert_eq!(alice.post(&f.portal, "/workspaces", &fields).await.status, StatusCode::SEE_OTHER);
    f.wait_phase("dev", WorkspacePhase::Running).await;
    f.wait_workspaces_used("1").await;

    // --- Who may touch alice's workspace: table over every route, for everyone else. ---
    let ws = format!("/api/v1/workspaces/{team}/dev");
    let create_body = json!({ "team": team, "name": "theirs", "template": f.template }).to_string();
    // (method, path, JSON body, form post?, who is refused with which status)
    let routes: Vec<(Method, String, Option<String>, bool)> = vec![
        (Method::GET, ws.clone(), None, false),
        (Method::DELETE, ws.clone(), None, false),
        (Method::POST, format!("{ws}/start"), None, false),
        (Method::POST, format!("{ws}/stop"), None, false),
        (Method::POST, format!("/workspaces/{team}/dev/stop"), None, true),
        (Method::POST, format!("/workspaces/{team}/dev/start"), None, true),
        (Method::POST, format!("/workspaces/{team}/dev/delete"), None, true),
    ];
    // Bob leads the team, which does not let leads in; erin is a teammate; carol's contract has
    // ended; mallory is in no team; the admin is refused because the team does not allow it.
    for who in [&f.bob, &f.erin, &f.carol, &f.mallory, &f.admin] {
        let (mut browser, csrf) = signed_in(&f, who).await;
        for (method, path, body, form) in &routes {
            let reply = if *form {
                browser.post(&f.portal, path, &[("csrf", csrf.as_str())]).await
            } else {
                browser.api(&f.portal, method.clone(), path, Some(&csrf), body.as_deref()).await
            };
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{who} {method} {path}: {}", summary(&reply));
        }
    }
    // Team-wide routes: members see them, carol (expired) and mallory do not.
    for (who, allowed) in [(&f.bob, true), (&f.erin, true), (&f.carol, false), (&f.mallory, false)] {
        let (mut browser, csrf) = signed_in(&f, who).await;
        let expected = if allowed { StatusCode::OK } else { StatusCode::FORBIDDEN };
        let page = browser.get(&f.portal, &format!("/teams/{team}")).await;
        assert_eq!(page.status, expected, "{who} team page: {}", summary(&page));
        let api = browser.api(&f.portal, Method::GET, &format!("/api/v1/teams/{team}"), None, None).await;
        assert_eq!(api.status, expected, "{who} team API: {}", summary(&api));
        let list = browser.api(&f.portal, Method::GET, &format!("/api/v1/workspaces?team={team}"), None, None).await;
        assert_eq!(list.status, expected, "{who} list: {}", summary(&list));
        if allowed {
            assert_eq!(list.json()["workspaces"], json!([]), "{who} sees none of alice's workspaces");
        }
        let mine = browser.api(&f.portal, Method::GET, "/api/v1/workspaces", None, None).await;
        assert_eq!(mine.json()["workspaces"], json!([]), "{who}'s own list is empty");
        let home = browser.get(&f.portal, "/").await;
        assert!(home.status == StatusCode::OK && !home.body.contains("data-workspace="), "{who}: {}", summary(&home));
        if !allowed {
            let created =
                browser.api(&f.portal, Method::POST, "/api/v1/workspaces", Some(&csrf), Some(&create_body)).await;
            assert_eq!(created.status, StatusCode::FORBIDDEN, "{who} create: {}", summary(&created));
            let fields = [("csrf", csrf.as_str()), ("team", team), ("name", "theirs"), ("template", &f.template)];
            let posted = browser.post(&f.portal, "/workspaces", &fields).await;
            assert_eq!(posted.status, StatusCode::FORBIDDEN, "{who} create form: {}", summary(&posted));
        }
    }
    // Without the CSRF token nothing changes, with it alice's own workspace is hers.
    let refused = alice.api(&f.portal, Method::POST, &format!("{ws}/stop"), None, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let refused = alice.post(&f.portal, &format!("/workspaces/{team}/dev/stop"), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(alice.api(&f.portal, Method::GET, &ws, None, None).await.status, StatusCode::OK);
    let missing = alice.api(&f.portal, Method::GET, &format!("/api/v1/workspaces/{team}/nope"), None, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let dev = f.workspaces().get("dev").await.expect("dev still exists");
    assert!(dev.spec.running, "nobody stopped it");

    // An API token with only workspaces:read may look but not create.
    let token = json!({ "name": "ro", "scopes": ["workspaces:read"], "expires_in_days": 1 }).to_string();
    let token = alice.api(&f.portal, Method::POST, "/api/v1/tokens", Some(&alice_csrf), Some(&token)).await.json();
    let secret = text(&token, "secret");
    assert_eq!(f.portal.api(Method::GET, &ws, Some(&secret), None).await.status, StatusCode::OK);
    let body = json!({ "team": team, "name": "by-token", "template": f.template }).to_string();
    let refused = f.portal.api(Method::POST, "/api/v1/workspaces", Some(&secret), Some(&body)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("workspaces:write"), "{}", refused.body);

    // --- Bad input: a 4xx saying what is wrong (and about which field), nothing created. ---
    let long = "a".repeat(41);
    let cases: Vec<(String, StatusCode, Option<&str>, &str)> = vec![
        (
            json!({ "team": team, "name": long, "template": f.template }).to_string(),
            StatusCode::BAD_REQUEST,
            Some("name"),
            "at most 40",
        ),
        (
            json!({ "team": team, "name": "Dev_1", "template": f.template }).to_string(),
            StatusCode::BAD_REQUEST,
            Some("name"),
            "not a valid workspace name",
        ),
        (
            json!({ "team": team, "name": "", "template": f.template }).to_string(),
            StatusCode::BAD_REQUEST,
            Some("name"),
            "needs a name",
        ),
        (
            json!({ "team": team, "name": "two", "template": "no-such-template" }).to_string(),
            StatusCode::BAD_REQUEST,
            Some("template"),
            "there is no template \"no-such-template\"",
        ),
        (
            json!({ "team": "", "name": "two", "template": f.template }).to_string(),
            StatusCode::BAD_REQUEST,
            Some("team"),
            "choose the team",
        ),
        (
            json!({ "team": "Not A Team", "name": "two", "template": f.template }).to_string(),
            StatusCode::BAD_REQUEST,
            Some("team"),
            "is not a team name",
        ),
        (
            json!({ "team": team, "name": "two", "template": f.template }).to_string(),
            StatusCode::BAD_REQUEST,
            None,
            "all 1 of its workspaces in use",
        ),
        (
            json!({ "team": team, "name": "dev", "template": f.template }).to_string(),
            StatusCode::CONFLICT,
            Some("name"),
            "already has a workspace named dev",
        ),
        (
            json!({ "team": team, "name": "two", "template": f.template, "size": "1Ti" }).to_string(),
            StatusCode::BAD_REQUEST,
            None,
            "unknown field `size`",
        ),
        (r#"{"team": "#.to_owned(), StatusCode::BAD_REQUEST, None, "not valid JSON"),
        ("[1, 2]".to_owned(), StatusCode::BAD_REQUEST, None, "wrong fields"),
    ];
    for (body, status, field, message) in &cases {
        let reply = alice.api(&f.portal, Method::POST, "/api/v1/workspaces", Some(&alice_csrf), Some(body)).await;
        assert_eq!(reply.status, *status, "{body}: {}", reply.body);
        let error = reply.json();
        assert!(text(&error, "error").contains(message), "{body}: {error}");
        assert_eq!(error["field"].as_str(), *field, "{body}: {error}");
    }
    let plain = alice.api(&f.portal, Method::POST, "/api/v1/workspaces", Some(&alice_csrf), None).await;
    assert_eq!(plain.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", plain.body);
    // The form says the same on the page, keeps what was typed, and creates nothing.
    let fields = [("csrf", alice_csrf.as_str()), ("team", team), ("name", long.as_str()), ("template", &f.template)];
    let page = alice.post(&f.portal, "/workspaces", &fields).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert!(page.body.contains("at most 40") && page.body.contains(&long), "{}", page.body);
    let fields = [("csrf", alice_csrf.as_str()), ("team", team), ("name", "two"), ("template", &f.template)];
    let page = alice.post(&f.portal, "/workspaces", &fields).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert!(page.body.contains("all 1 of its workspaces in use"), "{}", page.body);
    assert_eq!(f.workspace_names().await, ["dev"], "nothing but alice's first workspace was created");
    f.delete().await;
}
