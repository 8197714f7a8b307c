//! In-process test harness: a portal on an in-memory database, a cookie-keeping browser and a
//! JSON API client, all driving the router with `tower::ServiceExt::oneshot`.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use deskpod_portal::store::{GlobalRole, NewUser, User};
use deskpod_portal::{
    AppState, Config, Keys, Membership, PublicUrl, SqliteStore, StaticMemberships, Store, TeamRole, auth,
};
use tower::ServiceExt;

/// The signing key tests configure, so they can check it never leaks.
pub const SIGNING_KEY: &str = "test-signing-key-that-is-long-enough-0123456789";
pub const PASSWORD: &str = "correct horse battery staple";

pub struct Portal {
    pub state: AppState,
    pub memberships: Arc<StaticMemberships>,
}

impl Portal {
    pub async fn new() -> Self {
        Self::with_url("http://127.0.0.1:8080").await
    }

    pub async fn with_url(public_url: &str) -> Self {
        let store = SqliteStore::open_in_memory().unwrap();
        let keys = Keys::load(&store, Some(SIGNING_KEY)).await.unwrap();
        let memberships = Arc::new(StaticMemberships::new());
        let config = Config::new(PublicUrl::parse(public_url).unwrap());
        let state = AppState::new(config, Arc::new(store), keys, memberships.clone());
        Self { state, memberships }
    }

    pub fn app(&self) -> Router {
        deskpod_portal::app(self.state.clone())
    }

    pub fn store(&self) -> &dyn Store {
        self.state.store.as_ref()
    }

    pub async fn add_user(&self, email: &str, role: GlobalRole) -> User {
        let hash = auth::password::hash(PASSWORD.into()).await.unwrap();
        let user = NewUser {
            id: email.into(),
            display_name: email.split('@').next().unwrap().into(),
            role,
            password_hash: Some(hash),
            expires_at: None,
        };
        self.store().create_user(user).await.unwrap()
    }

    pub fn set_role(&self, user: &str, team: &str, role: TeamRole) {
        self.memberships.set(user, vec![Membership { team: team.into(), role, expires_at: None }]);
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        Reply { status, headers, body: String::from_utf8(body.to_vec()).unwrap() }
    }

    /// A JSON API request, with a bearer token or none.
    pub async fn api(&self, method: Method, path: &str, bearer: Option<&str>, body: Option<&str>) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => {
                request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_owned())).unwrap()
            }
            None => request.body(Body::empty()).unwrap(),
        };
        self.send(request).await
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn location(&self) -> &str {
        self.headers.get(header::LOCATION).map_or("", |v| v.to_str().unwrap())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    }

    /// The value of the first `name="csrf"` hidden field on the page.
    pub fn csrf_field(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let start = self.body.find(marker).unwrap_or_else(|| panic!("no csrf field in {}", self.body)) + marker.len();
        self.body[start..].split('"').next().unwrap().to_owned()
    }
}

/// A browser: keeps cookies, asks for HTML, comes from a fixed address.
pub struct Browser {
    pub cookies: BTreeMap<String, String>,
    pub addr: SocketAddr,
}

impl Browser {
    pub fn new() -> Self {
        Self::from_addr("127.0.0.1:50000")
    }

    pub fn from_addr(addr: &str) -> Self {
        Self { cookies: BTreeMap::new(), addr: addr.parse().unwrap() }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub async fn request(&mut self, portal: &Portal, method: Method, path: &str, form: Option<String>) -> Reply {
        let mut builder = Request::builder().method(method).uri(path).header(header::ACCEPT, "text/html");
        if !self.cookies.is_empty() {
            builder = builder.header(header::COOKIE, self.cookie_header());
        }
        let mut request = match form {
            Some(form) => builder
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        };
        request.extensions_mut().insert(ConnectInfo(self.addr));
        let reply = portal.send(request).await;
        for set in reply.set_cookies() {
            let cookie = cookie::Cookie::parse(set).unwrap();
            let removed = cookie.max_age().is_some_and(|age| age.is_zero()) || cookie.value().is_empty();
            if removed {
                self.cookies.remove(cookie.name());
            } else {
                self.cookies.insert(cookie.name().to_owned(), cookie.value().to_owned());
            }
        }
        reply
    }

    pub async fn get(&mut self, portal: &Portal, path: &str) -> Reply {
        self.request(portal, Method::GET, path, None).await
    }

    pub async fn post(&mut self, portal: &Portal, path: &str, fields: &[(&str, &str)]) -> Reply {
        let form = serde_urlencoded::to_string(fields).unwrap();
        self.request(portal, Method::POST, path, Some(form)).await
    }

    /// Opens the sign-in page and submits it.
    pub async fn sign_in(&mut self, portal: &Portal, email: &str, password: &str) -> Reply {
        let page = self.get(portal, "/signin").await;
        assert_eq!(page.status, StatusCode::OK);
        let csrf = page.csrf_field();
        self.post(portal, "/signin", &[("csrf", &csrf), ("email", email), ("password", password)]).await
    }

    /// Signs in and checks it worked.
    pub async fn signed_in(portal: &Portal, email: &str) -> Self {
        let mut browser = Self::new();
        let reply = browser.sign_in(portal, email, PASSWORD).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
        assert!(browser.cookies.contains_key("deskpod_session"));
        browser
    }

    /// The session's CSRF token, from a page that has the sign-out form.
    pub async fn session_csrf(&mut self, portal: &Portal) -> String {
        self.get(portal, "/").await.csrf_field()
    }

    /// A JSON request with the session cookie (and, if given, the CSRF header).
    pub async fn api(
        &self,
        portal: &Portal,
        method: Method,
        path: &str,
        csrf: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path).header(header::COOKIE, self.cookie_header());
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        let request = match body {
            Some(body) => {
                request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_owned())).unwrap()
            }
            None => request.body(Body::empty()).unwrap(),
        };
        portal.send(request).await
    }
}
