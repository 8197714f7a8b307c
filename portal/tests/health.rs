mod common;

use axum::http::{Method, StatusCode};
use common::Portal;

#[tokio::test]
async fn healthz_answers_ok_and_unknown_paths_are_404() {
    let portal = Portal::new().await;
    let reply = portal.api(Method::GET, "/healthz", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains(r#""status":"ok""#), "{}", reply.body);

    let reply = portal.api(Method::GET, "/nope", None, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_stylesheet_is_served_by_the_portal_and_pages_use_nothing_external() {
    let portal = Portal::new().await;
    let reply = portal.api(Method::GET, "/static/portal.css", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"].to_str().unwrap().starts_with("text/css"));
    assert!(reply.body.contains("font-family"));

    let page = common::Browser::new().get(&portal, "/signin").await;
    assert!(page.body.contains(r#"href="/static/portal.css""#));
    for external in ["http://", "https://", "//fonts", "cdn"] {
        assert!(!page.body.contains(external), "the sign-in page refers to {external}");
        assert!(!reply.body.contains(external), "the stylesheet refers to {external}");
    }
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
}
