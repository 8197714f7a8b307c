//! The OpenAPI document describes the API that exists: every operation it lists is routed.

mod common;

use axum::http::{Method, StatusCode};
use common::Portal;

#[tokio::test]
async fn every_documented_operation_exists_and_needs_authentication() {
    let portal = Portal::new().await;
    let reply = portal.api(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(reply.status, StatusCode::OK, "the document is public");
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 10, "{paths:?}");

    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{team}", "platform").replace("{name}", "dev").replace("{id}", "tok_1");
        for (method, _) in item.as_object().unwrap().iter().filter(|(k, _)| *k != "parameters") {
            let method: Method = method.to_uppercase().parse().unwrap();
            let body = matches!(method, Method::POST).then_some("{}");
            let reply = portal.api(method.clone(), &concrete, None, body).await;
            // Unknown routes answer 404 and wrong methods 405; a real endpoint asks who is calling.
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {concrete}: {}", reply.body);
            operations += 1;
        }
    }
    assert!(operations >= 14, "{operations} operations documented");

    let reply = portal.api(Method::GET, "/api/v1/no-such-endpoint", None, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "the check above can tell a missing route");
}
