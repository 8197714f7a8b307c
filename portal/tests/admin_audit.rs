//! `GET /admin/audit`: platform admins read the audit log as a page, newest first, with actor,
//! action, object, outcome, time and address; everyone else is refused, and only admins' headers
//! link it.

mod common;

use axum::http::StatusCode;
use common::{Browser, PASSWORD, Portal};
use deskpod_portal::store::GlobalRole;

#[tokio::test]
async fn admins_read_the_audit_log_newest_first_and_engineers_are_refused() {
    let portal = Portal::new().await;
    portal.add_user("root@example.com", GlobalRole::Admin).await;
    portal.add_user("alice@example.com", GlobalRole::User).await;

    // Things to find in the log: a failed sign-in from one address, then alice signing in from another.
    let mut stranger = Browser::from_addr("192.0.2.7:40000");
    let refused = stranger.sign_in(&portal, "alice@example.com", "not her password").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    let mut alice = Browser::from_addr("198.51.100.4:40001");
    assert_eq!(alice.sign_in(&portal, "alice@example.com", PASSWORD).await.status, StatusCode::SEE_OTHER);
    let mut admin = Browser::signed_in(&portal, "root@example.com").await;

    let page = admin.get(&portal, "/admin/audit").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("<h1>Audit log</h1>"), "{}", page.body);
    let rows: Vec<&str> = page.body.split("<tr data-action=").skip(1).collect();
    let row_of = |actor: &str, outcome: &str| {
        rows.iter()
            .position(|row| {
                row.contains(&format!("<td>{actor}</td>")) && row.contains(&format!("data-outcome=\"{outcome}\""))
            })
            .unwrap_or_else(|| panic!("no {outcome} entry by {actor}: {}", page.body))
    };
    let failed = row_of("alice@example.com", "failure");
    let succeeded = row_of("alice@example.com", "success");
    let admin_signin = row_of("root@example.com", "success");
    assert!(admin_signin < succeeded && succeeded < failed, "newest first: {rows:#?}");
    for (row, address) in [(failed, "192.0.2.7"), (succeeded, "198.51.100.4")] {
        assert!(rows[row].contains("<code>signin</code>"), "{}", rows[row]);
        assert!(rows[row].contains(&format!("<td>{address}</td>")), "{}", rows[row]);
        assert!(rows[row].contains(" UTC</td>"), "a time: {}", rows[row]);
    }
    assert!(rows[failed].contains(r#"class="error">failure"#), "{}", rows[failed]);
    // The admin's header links the page.
    assert!(admin.get(&portal, "/account/tokens").await.body.contains(r#"href="/admin/audit""#));

    // An engineer is refused, sees none of it, and is not offered the link.
    let engineer_page = alice.get(&portal, "/admin/audit").await;
    assert_eq!(engineer_page.status, StatusCode::FORBIDDEN, "{}", engineer_page.body);
    assert!(engineer_page.body.contains("for platform admins"), "{}", engineer_page.body);
    assert!(
        !engineer_page.body.contains("192.0.2.7") && !engineer_page.body.contains("<td>"),
        "{}",
        engineer_page.body
    );
    assert!(!alice.get(&portal, "/account/tokens").await.body.contains("/admin/audit"));

    // Signed out, the page asks to sign in.
    let anonymous = Browser::new().get(&portal, "/admin/audit").await;
    assert_eq!((anonymous.status, anonymous.location()), (StatusCode::SEE_OTHER, "/signin?next=%2Fadmin%2Faudit"));
}
