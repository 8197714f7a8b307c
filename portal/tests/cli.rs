//! The `deskpod` command against a served portal on the Kubernetes backend, with the real test
//! cluster and controller: create, list, stop, start and delete a workspace with an API token,
//! and clear errors for bad input and a bad token.

mod common;
mod kube_common;

use std::net::SocketAddr;
use std::process::Output;

use axum::http::Method;
use common::Browser;
use deskpod_controller::api::WorkspacePhase;
use kube_common::Fixture;
use serde_json::json;

/// Runs `deskpod` with the portal's URL and `token` in its environment (where it reads them from).
async fn deskpod(url: &str, token: &str, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_deskpod"));
    command.args(args).env("DESKPOD_URL", url).env("DESKPOD_TOKEN", token).env_remove("XDG_CONFIG_HOME");
    command.output().await.expect("deskpod runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn workspaces_from_the_terminal() {
    let _one_controller = kube_common::ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-cli", 3, false).await;
    let team = f.team.as_str();

    // The portal, served on a port as it is in production.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = f.portal.app().into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Alice makes a token on the portal.
    let mut alice = Browser::signed_in(&f.portal, &f.alice).await;
    let csrf = alice.session_csrf(&f.portal).await;
    let body = json!({ "name": "laptop", "scopes": ["workspaces:read", "workspaces:write"] }).to_string();
    let created = alice.api(&f.portal, Method::POST, "/api/v1/tokens", Some(&csrf), Some(&body)).await;
    let token = created.json()["secret"].as_str().expect("the secret, shown once").to_string();

    let out = deskpod(&url, &token, &["workspaces", "create", team, "cli", "--template", &f.template]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("workspace {team}/cli created")), "{}", stdout(&out));
    f.wait_phase("cli", WorkspacePhase::Running).await;

    let out = deskpod(&url, &token, &["workspaces", "list", "--team", team]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    let row = listed.lines().find(|l| l.contains(" cli ")).unwrap_or_else(|| panic!("cli is listed:\n{listed}"));
    assert!(row.contains("Running") && row.contains(&f.template), "{row}");
    assert!(listed.lines().next().unwrap().starts_with("TEAM"), "{listed}");

    let out = deskpod(&url, &token, &["workspaces", "stop", team, "cli"]).await;
    assert!(out.status.success() && stdout(&out).contains("home volume stays"), "{}", stderr(&out));
    f.wait_phase("cli", WorkspacePhase::Stopped).await;
    let out = deskpod(&url, &token, &["workspaces", "start", team, "cli"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    f.wait_phase("cli", WorkspacePhase::Running).await;

    // Bad input: the API's message, exit status 1, nothing created.
    let out = deskpod(&url, &token, &["workspaces", "create", team, "Not_A_Name", "--template", &f.template]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("(field name)"), "{}", stderr(&out));
    let out = deskpod(&url, &token, &["workspaces", "create", team, "ghost", "--template", "no-such-template"]).await;
    assert!(!out.status.success() && stderr(&out).contains("no-such-template"), "{}", stderr(&out));
    assert_eq!(f.workspace_names().await, vec!["cli".to_string()], "nothing else was created");

    // A token that is not one, or was revoked, gets nowhere.
    let out = deskpod(&url, "dpt_not-a-real-token", &["workspaces", "list"]).await;
    assert!(!out.status.success(), "{}", stdout(&out));
    let id = created.json()["id"].as_str().unwrap().to_string();
    let revoked = alice.api(&f.portal, Method::DELETE, &format!("/api/v1/tokens/{id}"), Some(&csrf), None).await;
    assert!(revoked.status.is_success(), "{}", revoked.body);
    let out = deskpod(&url, &token, &["workspaces", "delete", team, "cli"]).await;
    assert!(!out.status.success(), "a revoked token deletes nothing: {}", stdout(&out));
    assert_eq!(f.workspace_names().await, vec!["cli".to_string()]);

    server.abort();
    f.delete().await;
}
