//! The invite flow on the Kubernetes backend, against the real test cluster and the real
//! controllers: a lead invites a contractor through the API; the contractor opens the link in a
//! fresh browser, sets a password, is signed in and sent to the desktop of a workspace already
//! starting, which runs within 60 s. The Team lists them with their role and expiry, the link
//! works once, and once their access has ended they are refused.

mod common;
mod kube_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::Browser;
use deskpod_controller::api::{Team, TeamRole, Workspace};
use deskpod_portal::backend::invite::{AUDIT_TEAM_MEMBER_ADD, BackendInviteHook, workspace_name};
use deskpod_portal::backend::kubernetes::members_patch;
use deskpod_portal::store::Outcome;
use deskpod_testsupport::wait_for;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube_common::{Fixture, ONE_CONTROLLER, WAIT};
use serde_json::json;

/// The promise to the contractor: a running desktop this soon after opening the link.
const RUNNING_WITHIN: Duration = Duration::from_secs(60);
const CONTRACTOR_PASSWORD: &str = "a passphrase of my own";

#[tokio::test]
async fn a_contractor_opens_the_link_sets_a_password_and_has_a_running_desktop_within_60s() {
    let _one = ONE_CONTROLLER.lock().await;
    let mut f = Fixture::new("portal-invite", 2, false).await;
    let state = f.portal.state.clone();
    let hook = BackendInviteHook::new(state.backend.clone(), state.store.clone());
    f.portal.state = state.with_invite_hook(Arc::new(hook));
    let dave = format!("dave@{}.test", f.team);
    let access_ends = Timestamp::now() + SignedDuration::from_hours(24 * 30);

    // The lead invites through the JSON API.
    let mut lead = Browser::signed_in(&f.portal, &f.bob).await;
    let csrf = lead.session_csrf(&f.portal).await;
    let request = json!({
        "email": dave.to_uppercase(), "team": f.team, "role": "contractor", "template": f.template,
        "access_expires_at": access_ends.to_string(),
    });
    let reply = lead.api(&f.portal, Method::POST, "/api/v1/invites", Some(&csrf), Some(&request.to_string())).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let url = reply.json()["url"].as_str().unwrap().to_owned();
    let link = url.strip_prefix("http://127.0.0.1:8080").unwrap_or_else(|| panic!("not a portal link: {url}"));

    // The contractor, in a browser that has never seen the portal.
    let opened = Instant::now();
    let mut contractor = Browser::from_addr("127.0.0.1:50123");
    let page = contractor.get(&f.portal, link).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(&format!("Join team {}", f.team)), "{}", page.body);
    let csrf = page.csrf_field();
    let fields = [
        ("csrf", csrf.as_str()),
        ("display_name", "Dave"),
        ("password", CONTRACTOR_PASSWORD),
        ("password_confirm", CONTRACTOR_PASSWORD),
    ];
    let accepted = contractor.post(&f.portal, link, &fields).await;
    assert_eq!(accepted.status, StatusCode::SEE_OTHER, "{}", accepted.body);
    assert!(contractor.cookies.contains_key("deskpod_session"), "the contractor is signed in");
    let name = workspace_name(&f.template, 1);
    let desktop = format!("/workspaces/{}/{name}/desktop", f.team);
    assert_eq!(accepted.location(), desktop, "sent to the desktop of the invited template");
    let redirected_after = opened.elapsed();

    // Their workspace runs, as their own API view shows.
    let running_after = loop {
        let reply = contractor.api(&f.portal, Method::GET, "/api/v1/workspaces", None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let list = reply.json();
        let workspaces = list["workspaces"].as_array().unwrap();
        assert_eq!(workspaces.len(), 1, "exactly the invited workspace: {list}");
        assert_eq!(
            (workspaces[0]["name"].as_str(), workspaces[0]["owner"].as_str()),
            (Some(name.as_str()), Some(dave.as_str()))
        );
        if workspaces[0]["phase"] == "Running" {
            break opened.elapsed();
        }
        assert!(
            opened.elapsed() < RUNNING_WITHIN,
            "not Running {}s after opening the link: {list}",
            RUNNING_WITHIN.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "invite flow: opened the link → signed in and redirected in {:.2}s → workspace Running in {:.2}s",
        redirected_after.as_secs_f64(),
        running_after.as_secs_f64()
    );
    let page = contractor.get(&f.portal, &desktop).await;
    assert_eq!(page.status, StatusCode::OK, "the desktop view opens: {}", page.body);
    assert!(page.body.contains(&format!("/workspaces/{}/{name}/websockify", f.team)), "{}", page.body);

    // The Team lists the contractor with their role and expiry (whole seconds, as the Team keeps
    // times); the lead and the other members are still there.
    let team = Api::<Team>::all(f.client()).get(&f.team).await.unwrap();
    let member = team.spec.members.iter().find(|m| m.user == dave).unwrap_or_else(|| panic!("{:?}", team.spec));
    assert_eq!(member.role, TeamRole::Contractor);
    assert_eq!(member.expires_at.as_ref().map(|t| t.0.as_second()), Some(access_ends.as_second()));
    assert_eq!(team.spec.members.len(), 5, "{:?}", team.spec.members);

    // The link works once.
    let again = Browser::new().get(&f.portal, link).await;
    assert_eq!(again.status, StatusCode::GONE, "{}", again.body);
    assert!(again.body.contains("already been used"), "{}", again.body);

    // The lead ends the contractor's access: from then on they are refused, and the controller
    // stops their workspace.
    let mut members = team.spec.members.clone();
    members.iter_mut().filter(|m| m.user == dave).for_each(|m| {
        m.expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::now() - SignedDuration::from_hours(1),
        ));
    });
    let patch = json!({ "spec": { "members": members } });
    Api::<Team>::all(f.client()).patch(&f.team, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let workspace_path = format!("/api/v1/workspaces/{}/{name}", f.team);
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let reply = contractor.api(&f.portal, Method::GET, &workspace_path, None, None).await;
        if matches!(reply.status, StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED) {
            break reply;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(Instant::now() < deadline, "the expired contractor is still allowed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!refused.json()["error"].as_str().unwrap_or_default().is_empty(), "{}", refused.body);
    let page = contractor.get(&f.portal, &desktop).await;
    assert!(matches!(page.status, StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED), "{}: {}", page.status, page.body);
    wait_for(&f.workspaces(), &name, "stopped for the expired owner", WAIT, |w: Option<&Workspace>| {
        w.is_some_and(|w| !w.spec.running)
    })
    .await
    .unwrap();
    f.delete().await;
}

#[tokio::test]
async fn an_invite_to_a_team_that_does_not_exist_still_signs_the_invitee_in_and_changes_nothing() {
    let _one = ONE_CONTROLLER.lock().await;
    let mut f = Fixture::new("portal-invite-noteam", 1, false).await;
    let state = f.portal.state.clone();
    let hook = BackendInviteHook::new(state.backend.clone(), state.store.clone());
    f.portal.state = state.with_invite_hook(Arc::new(hook));
    let missing_team = format!("{}-gone", f.team);

    // An admin may invite to any team name, even one that does not exist (yet).
    let mut admin = Browser::signed_in(&f.portal, &f.admin).await;
    let csrf = admin.session_csrf(&f.portal).await;
    let request = json!({ "email": format!("frank@{}.test", f.team), "team": missing_team, "role": "engineer",
                          "template": f.template });
    let reply = admin.api(&f.portal, Method::POST, "/api/v1/invites", Some(&csrf), Some(&request.to_string())).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let url = reply.json()["url"].as_str().unwrap().to_owned();
    let link = url.strip_prefix("http://127.0.0.1:8080").unwrap();

    let mut frank = Browser::from_addr("127.0.0.1:50124");
    let csrf = frank.get(&f.portal, link).await.csrf_field();
    let fields = [
        ("csrf", csrf.as_str()),
        ("display_name", "Frank"),
        ("password", CONTRACTOR_PASSWORD),
        ("password_confirm", CONTRACTOR_PASSWORD),
    ];
    let accepted = frank.post(&f.portal, link, &fields).await;
    assert_eq!(accepted.status, StatusCode::SEE_OTHER, "{}", accepted.body);
    assert_eq!(accepted.location(), "/", "nothing to land on");
    assert!(frank.cookies.contains_key("deskpod_session"), "signed in all the same");
    assert_eq!(Browser::new().get(&f.portal, link).await.status, StatusCode::GONE, "the invite is used");
    assert!(Api::<Team>::all(f.client()).get_opt(&missing_team).await.unwrap().is_none(), "no Team was made up");
    assert_eq!(f.workspace_names().await, Vec::<String>::new(), "no workspace was created");
    let log = f.portal.store().audit_log(20).await.unwrap();
    assert!(
        log.iter().any(|e| e.entry.action == AUDIT_TEAM_MEMBER_ADD && e.entry.outcome == Outcome::Failure),
        "the failure is audited: {log:?}"
    );

    // The hook's Team patch is guarded: written against an older resourceVersion it is refused
    // with a conflict (which the hook retries), so a concurrent edit is never overwritten.
    let teams = Api::<Team>::all(f.client());
    let before = teams.get(&f.team).await.unwrap();
    let stale = before.metadata.resource_version.clone().unwrap();
    let touch = json!({ "metadata": { "labels": { "deskpod.test/touched": "yes" } } });
    teams.patch(&f.team, &PatchParams::default(), &Patch::Merge(&touch)).await.unwrap();
    let patch = members_patch(&stale, &[]);
    match teams.patch(&f.team, &PatchParams::default(), &patch).await {
        Err(kube::Error::Api(status)) => assert!(status.is_conflict(), "{status:?}"),
        other => panic!("a stale patch must conflict: {other:?}"),
    }
    assert_eq!(teams.get(&f.team).await.unwrap().spec.members, before.spec.members, "the members are untouched");
    f.delete().await;
}
