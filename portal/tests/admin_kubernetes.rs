//! The admin API for teams and templates on the Kubernetes backend, against the real test
//! cluster: what an admin puts is the Team or WorkspaceTemplate the API server holds (its whole
//! spec, written by the portal, whoever wrote the fields before); what the API server refuses (schema, CEL) comes back as a 400 in its
//! own words and changes nothing; a template a Workspace uses is not deleted. Templates the
//! portal's rules refuse (an image that is no image reference, absurd quantities, a request over
//! its limit) are a 400 naming the field without reaching the API server, which would have taken
//! them; a template with such an image written with kubectl makes creating a workspace a 400
//! naming the template, and no Workspace is created.

mod common;
mod kube_common;

use axum::http::{Method, StatusCode};
use common::Browser;
use deskpod_controller::api::{Team, TeamMember, TeamRole, TeamSpec, WorkspaceTemplate, WorkspaceTemplateSpec};
use kube::api::{Api, DeleteParams, PostParams};
use kube_common::{Fixture, ONE_CONTROLLER};
use serde_json::json;

/// `PUT path` with `body` as the admin's session.
async fn put(
    admin: &Browser,
    portal: &common::Portal,
    csrf: &str,
    path: String,
    body: serde_json::Value,
) -> common::Reply {
    admin.api(portal, Method::PUT, &path, Some(csrf), Some(&body.to_string())).await
}

#[tokio::test]
async fn an_admin_puts_teams_and_templates_and_the_api_servers_refusals_come_back() {
    let _one = ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-admin", 2, false).await;
    let portal = &f.portal;
    let teams = Api::<Team>::all(f.client());
    let templates = Api::<WorkspaceTemplate>::all(f.client());
    let made = format!("{}-made", f.team);
    let made_template = format!("{}-tpl", f.team);
    let mut admin = Browser::signed_in(portal, &f.admin).await;
    let csrf = admin.session_csrf(portal).await;
    // A new Team: the API server has exactly that spec, applied by the portal's field manager.
    let spec = json!({
        "displayName": "Made by the admin",
        "quota": { "cpu": "4", "memory": "8Gi", "workspaces": 3, "ciAgents": 1 },
        "members": [{ "user": f.alice, "role": "engineer" }, { "user": f.bob, "role": "lead", "expiresAt": "2030-01-31T00:00:00Z" }],
        "allowLeadAccess": true
    });
    let reply = put(&admin, portal, &csrf, format!("/api/v1/admin/teams/{made}"), spec.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let object = teams.get(&made).await.expect("the Team exists");
    assert_eq!(object.spec, serde_json::from_value::<TeamSpec>(spec).unwrap());
    let managers: Vec<_> =
        object.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.contains(&"deskpod-portal".to_owned()), "{managers:?}");
    // Its members count at once, and the list shows it.
    let me = Browser::signed_in(portal, &f.alice).await.api(portal, Method::GET, "/api/v1/me", None, None).await;
    assert!(me.body.contains(&made), "alice is a member: {}", me.body);
    let list = admin.api(portal, Method::GET, "/api/v1/admin/teams", None, None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert!(list.json()["teams"].as_array().unwrap().iter().any(|t| t["name"] == made.as_str()), "{}", list.body);
    let page = admin.get(portal, "/admin/teams").await;
    assert!(page.body.contains(&format!(r#"<tr data-team="{made}">"#)), "{}", page.body);

    // Replaced: a member removed is gone.
    let smaller = json!({ "quota": { "workspaces": 1 }, "members": [{ "user": f.alice, "role": "engineer" }] });
    let reply = put(&admin, portal, &csrf, format!("/api/v1/admin/teams/{made}"), smaller.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(teams.get(&made).await.unwrap().spec, serde_json::from_value::<TeamSpec>(smaller.clone()).unwrap());

    // Members written by others: one joined through an invite (the backend's member patch), one
    // with kubectl (another field manager). The admin's save without them removes both.
    let invited = TeamMember { user: f.erin.clone(), role: TeamRole::Contractor, expires_at: None };
    portal.state.backend.add_member(&made, invited).await.expect("the invite adds erin");
    let mut by_kubectl = teams.get(&made).await.unwrap();
    by_kubectl.spec.members.push(TeamMember { user: f.carol.clone(), role: TeamRole::Engineer, expires_at: None });
    by_kubectl.metadata.managed_fields = None;
    let params = PostParams { field_manager: Some("kubectl-edit".into()), ..PostParams::default() };
    teams.replace(&made, &params, &by_kubectl).await.expect("kubectl adds carol");
    let members = |team: Team| team.spec.members.into_iter().map(|m| m.user).collect::<Vec<_>>();
    assert_eq!(members(teams.get(&made).await.unwrap()), [f.alice.as_str(), &f.erin, &f.carol]);
    let reply = put(&admin, portal, &csrf, format!("/api/v1/admin/teams/{made}"), smaller.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(members(teams.get(&made).await.unwrap()), [f.alice.as_str()], "the removal sticks, whoever added them");

    // The API server's refusals: a CEL rule (quantity) and the schema (a negative count).
    for (bad, message) in [
        (json!({ "quota": { "cpu": "lots" } }), "must be a non-negative Kubernetes quantity such as 500m, 2 or 4Gi"),
        (json!({ "quota": { "workspaces": -1 } }), "should be greater than or equal to 0"),
    ] {
        let reply = put(&admin, portal, &csrf, format!("/api/v1/admin/teams/{made}"), bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(message) && error.contains("Team.deskpod.io"), "the API server's words: {error}");
    }
    assert_eq!(teams.get(&made).await.unwrap().spec, serde_json::from_value::<TeamSpec>(smaller).unwrap(), "unchanged");

    // A template, and its refusal.
    let template = json!({ "displayName": "From the admin API", "image": "deskpod/python:latest", "port": 6901,
                           "resources": { "cpuLimit": "2", "memoryLimit": "2Gi" }, "idleTimeout": "2h" });
    let reply = put(&admin, portal, &csrf, format!("/api/v1/admin/templates/{made_template}"), template.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let object = templates.get(&made_template).await.expect("the template exists");
    assert_eq!(object.spec, serde_json::from_value::<WorkspaceTemplateSpec>(template.clone()).unwrap());
    let reply = put(
        &admin,
        portal,
        &csrf,
        format!("/api/v1/admin/templates/{made_template}"),
        json!({ "displayName": "x", "image": "x", "idleTimeout": "2 hours" }),
    )
    .await;
    // Refused by the portal's template rules before the API server is asked (its schema says the same).
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(reply.json()["field"], "idleTimeout", "{}", reply.body);
    assert!(reply.body.contains("a duration such as 90s, 30m or 1h30m"), "{}", reply.body);
    assert_eq!(templates.get(&made_template).await.unwrap().spec.display_name, "From the admin API");

    // A template a Workspace uses is not deleted; one nobody uses is.
    let mut alice = Browser::signed_in(portal, &f.alice).await;
    let alice_csrf = alice.session_csrf(portal).await;
    let body = json!({ "team": f.team, "name": "dev", "template": f.template }).to_string();
    let reply = alice.api(portal, Method::POST, "/api/v1/workspaces", Some(&alice_csrf), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let path = format!("/api/v1/admin/templates/{}", f.template);
    let reply = admin.api(portal, Method::DELETE, &path, Some(&csrf), None).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert!(reply.body.contains(&format!("({}/dev)", f.team)), "{}", reply.body);
    assert!(templates.get_opt(&f.template).await.unwrap().is_some());
    let path = format!("/api/v1/admin/templates/{made_template}");
    let reply = admin.api(portal, Method::DELETE, &path, Some(&csrf), None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert!(templates.get_opt(&made_template).await.unwrap().is_none());

    // An engineer may do none of it.
    let reply =
        alice.api(portal, Method::PUT, &format!("/api/v1/admin/teams/{made}"), Some(&alice_csrf), Some("{}")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);

    let _ = teams.delete(&made, &DeleteParams::background()).await;
    f.delete().await;
}

#[tokio::test]
async fn bad_templates_are_refused_before_the_api_server_and_a_bad_image_from_kubectl_refuses_create() {
    let _one = ONE_CONTROLLER.lock().await;
    let f = Fixture::new("portal-tplrules", 2, false).await;
    let portal = &f.portal;
    let templates = Api::<WorkspaceTemplate>::all(f.client());
    let kept = format!("{}-kept", f.team);
    let new = format!("{}-new", f.team);
    let mut admin = Browser::signed_in(portal, &f.admin).await;
    let csrf = admin.session_csrf(portal).await;
    let good = json!({ "displayName": "Kept", "image": "deskpod/python:latest",
                       "resources": { "cpuRequest": "500m", "cpuLimit": "2", "memoryLimit": "2Gi" } });
    let reply = put(&admin, portal, &csrf, format!("/api/v1/admin/templates/{kept}"), good.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let before = templates.get(&kept).await.expect("the template exists");

    let resources = |r: serde_json::Value| {
        let mut body = good.clone();
        body["resources"] = r;
        body
    };
    let mut shell = good.clone();
    shell["image"] = json!("alpine;rm -rf /");
    for (bad, field, message) in [
        (shell.clone(), "image", "is not a valid image reference: it contains ';'"),
        (
            resources(json!({ "memoryLimit": "999999999Ti" })),
            "resources.memoryLimit",
            "more than a workspace may have (1Ti)",
        ),
        (
            resources(json!({ "cpuRequest": "8", "cpuLimit": "1" })),
            "resources.cpuRequest",
            "the CPU request 8 is more than the CPU limit 1",
        ),
    ] {
        for name in [&kept, &new] {
            let reply = put(&admin, portal, &csrf, format!("/api/v1/admin/templates/{name}"), bad.clone()).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name} {bad}: {}", reply.body);
            let json = reply.json();
            assert_eq!(json["field"], field, "{}", reply.body);
            let error = json["error"].as_str().unwrap();
            // The portal's words, not the API server's ("WorkspaceTemplate.deskpod.io ... is invalid").
            assert!(error.contains(message) && !error.contains("deskpod.io"), "{error}");
        }
        let now = templates.get(&kept).await.unwrap();
        assert_eq!(
            (now.spec.clone(), now.metadata.resource_version.clone()),
            (before.spec.clone(), before.metadata.resource_version.clone()),
            "unchanged"
        );
        assert!(templates.get_opt(&new).await.unwrap().is_none(), "not created");
    }

    // The API server alone takes such an image (kubectl apply): creating a workspace from it is
    // refused by the portal, naming the template, and no Workspace is created.
    let by_kubectl = format!("{}-shell", f.team);
    let object: WorkspaceTemplate = serde_json::from_value(json!({
        "apiVersion": "deskpod.io/v1alpha1", "kind": "WorkspaceTemplate", "metadata": { "name": by_kubectl },
        "spec": shell
    }))
    .unwrap();
    templates.create(&PostParams::default(), &object).await.expect("the API server takes it");
    let mut alice = Browser::signed_in(portal, &f.alice).await;
    let alice_csrf = alice.session_csrf(portal).await;
    let body = json!({ "team": f.team, "name": "dev", "template": by_kubectl }).to_string();
    let reply = alice.api(portal, Method::POST, "/api/v1/workspaces", Some(&alice_csrf), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let error = reply.json()["error"].as_str().unwrap().to_owned();
    let expected =
        format!("the template {by_kubectl} cannot start: its image \"alpine;rm -rf /\" is not a valid image reference");
    assert!(error.contains(&expected), "{error}");
    assert!(f.workspace_names().await.is_empty(), "no Workspace was created");

    for name in [&kept, &by_kubectl] {
        let _ = templates.delete(name, &DeleteParams::default()).await;
    }
    f.delete().await;
}
