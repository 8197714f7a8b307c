//! Sign-in through an OpenID Connect provider, against a real one: Dex, built from its Go module
//! by `portal/tests/setup-oidc` (once, cached in ~/.cache/deskpod/dex-<version>/), run on
//! 127.0.0.1 with an in-memory store, a static client and static password users. The real portal
//! app serves on 127.0.0.1 too, and a cookie-keeping HTTP client plays the browser: it follows
//! redirects and fills in Dex's login form.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use bytes::Bytes;
use common::Portal;
use deskpod_portal::auth::oidc::{AccountPolicy, OidcArgs, OidcClient};
use deskpod_portal::store::GlobalRole;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The client secret Dex and the portal share; it must never show in the portal's log or pages.
const CLIENT_SECRET: &str = "oidc-client-secret-that-must-never-leak-4f1c9a";
/// The password of Dex's static users.
const DEX_PASSWORD: &str = "password";
/// bcrypt of "password", as Dex's own example configuration has it.
const DEX_PASSWORD_HASH: &str = "$2a$10$2b2cU8CPhOTaGrs1HRQuAueS7JTT5ZHsHSzYiFPm1leZck7Mc8T4W";
/// Dex's static users: e-mail and user name (Dex puts the user name in the `name` claim).
const DEX_USERS: [(&str, &str); 4] = [
    ("alice@example.com", "Alice Liddell"),
    ("bob@other.example", "Bob"),
    ("carol@example.com", "Carol"),
    ("dave@example.com", "Dave"),
];

// ----- the portal's log, captured -----

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends every log line of this test binary, at debug level, to [`LOG`].
fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned()
}

// ----- Dex -----

/// The Dex binary, built by `tests/setup-oidc` if it is not cached yet.
fn dex_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/setup-oidc");
        let output = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(output.status.success(), "{} failed", script.display());
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Dex process owned by the test: killed (by its pid) and its directory removed on drop.
struct Dex {
    child: Child,
    dir: PathBuf,
    issuer: String,
}

impl Dex {
    /// Starts Dex on a free port with a static client whose redirect URI is `redirect_uri`.
    async fn start(redirect_uri: &str) -> Self {
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}/dex");
        let dir = std::env::temp_dir().join(format!("deskpod-dex-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let users: String = DEX_USERS
            .iter()
            .enumerate()
            .map(|(i, (email, name))| {
                format!(
                    "  - email: {email:?}\n    hash: {DEX_PASSWORD_HASH:?}\n    username: {name:?}\n    userID: \
                     \"user-{i}\"\n"
                )
            })
            .collect();
        let config = format!(
            "issuer: {issuer}\nstorage:\n  type: memory\nweb:\n  http: 127.0.0.1:{port}\nlogger:\n  level: info\n\
             oauth2:\n  skipApprovalScreen: true\n  responseTypes: [code]\nenablePasswordDB: true\n\
             staticClients:\n  - id: deskpod\n    name: Deskpod\n    secret: {CLIENT_SECRET}\n    redirectURIs:\n      \
             - {redirect_uri:?}\nstaticPasswords:\n{users}"
        );
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("dex.log")).unwrap();
        let child = Command::new(dex_binary())
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dex");
        let mut dex = Self { child, dir, issuer };
        dex.wait_until_ready().await;
        dex
    }

    async fn wait_until_ready(&mut self) {
        let discovery = format!("{}/.well-known/openid-configuration", self.issuer);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut browser = Browser::new();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("dex exited with {status}:\n{}", self.log());
            }
            if let Ok(page) = browser.try_send(Method::GET, &discovery, None).await
                && page.status == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "dex did not answer within 30 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dex.log")).unwrap_or_default()
    }
}

impl Drop for Dex {
    fn drop(&mut self) {
        // `kill` signals this child's pid only; `wait` reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ----- the browser -----

/// One answer, with the URL it came from.
#[derive(Debug)]
struct Page {
    url: String,
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> Option<&str> {
        self.headers.get(header::LOCATION).map(|v| v.to_str().unwrap())
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    }

    /// The `action` of the page's first POST form, unescaped.
    fn form_action(&self) -> String {
        let marker = r#"method="post" action=""#;
        let start = self.body.find(marker).unwrap_or_else(|| panic!("no form on {}:\n{}", self.url, self.body));
        let action = self.body[start + marker.len()..].split('"').next().unwrap();
        action.replace("&amp;", "&").replace("&#43;", "+").replace("&#x2b;", "+")
    }
}

/// A browser: follows redirects when asked, keeps cookies per host (like browsers, ignoring the
/// port) and path, and remembers every URL it was sent to.
struct Browser {
    http: Client<HttpConnector, Full<Bytes>>,
    /// host -> (name, path) -> value
    cookies: BTreeMap<String, BTreeMap<(String, String), String>>,
    visited: Vec<String>,
}

fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    let base: Uri = base.parse().unwrap();
    assert!(location.starts_with('/'), "relative redirect {location:?} from {base}");
    format!("{}://{}{location}", base.scheme_str().unwrap(), base.authority().unwrap())
}

impl Browser {
    fn new() -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            cookies: BTreeMap::new(),
            visited: Vec::new(),
        }
    }

    fn cookie(&self, host: &str, name: &str) -> Option<&str> {
        self.cookies.get(host)?.iter().find(|((n, _), _)| n == name).map(|(_, v)| v.as_str())
    }

    async fn try_send(&mut self, method: Method, url: &str, form: Option<&[(&str, &str)]>) -> Result<Page, String> {
        let uri: Uri = url.parse().unwrap();
        let host = uri.host().unwrap().to_owned();
        let path = uri.path().to_owned();
        let mut request = Request::builder().method(method).uri(url).header(header::ACCEPT, "text/html");
        let jar = self.cookies.entry(host.clone()).or_default();
        let sent: Vec<String> = jar
            .iter()
            .filter(|((_, cookie_path), _)| path.starts_with(cookie_path.as_str()))
            .map(|((name, _), value)| format!("{name}={value}"))
            .collect();
        if !sent.is_empty() {
            request = request.header(header::COOKIE, sent.join("; "));
        }
        let body = match form {
            Some(fields) => {
                request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Bytes::from(serde_urlencoded::to_string(fields).unwrap())
            }
            None => Bytes::new(),
        };
        let response = self.http.request(request.body(Full::new(body)).unwrap()).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let page = Page { url: url.to_owned(), status, headers, body: String::from_utf8_lossy(&body).into_owned() };
        for raw in page.set_cookies() {
            let cookie = cookie::Cookie::parse(raw).unwrap();
            let key = (cookie.name().to_owned(), cookie.path().unwrap_or("/").to_owned());
            let removed = cookie.max_age().is_some_and(|age| age.is_zero()) || cookie.value().is_empty();
            if removed {
                jar.remove(&key);
            } else {
                jar.insert(key, cookie.value().to_owned());
            }
        }
        self.visited.push(url.to_owned());
        Ok(page)
    }

    async fn send(&mut self, method: Method, url: &str, form: Option<&[(&str, &str)]>) -> Page {
        self.try_send(method, url, form).await.unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// Follows redirects from `page` until an answer is not a redirect, or the next hop is a URL
    /// for which `stop_before` is true (that URL is returned then, not visited).
    async fn follow(&mut self, mut page: Page, stop_before: impl Fn(&str) -> bool) -> Result<Page, String> {
        for _ in 0..20 {
            if !page.status.is_redirection() {
                return Ok(page);
            }
            let next = resolve(&page.url, page.location().expect("a redirect has a Location"));
            if stop_before(&next) {
                return Err(next);
            }
            page = self.send(Method::GET, &next, None).await;
        }
        panic!("more than 20 redirects: {:?}", self.visited);
    }

    async fn get_following(&mut self, url: &str) -> Page {
        let page = self.send(Method::GET, url, None).await;
        self.follow(page, |_| false).await.unwrap()
    }
}

// ----- the portal -----

/// Dex and a portal that signs in with it, both on 127.0.0.1.
struct Setup {
    portal: Portal,
    base: String,
    dex: Dex,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Setup {
    async fn start(accounts: AccountPolicy, allowed_domains: &[&str]) -> Self {
        capture_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let dex = Dex::start(&format!("{base}/auth/oidc/callback")).await;
        let mut portal = Portal::with_url(&base).await;
        let args = OidcArgs {
            issuer: Some(dex.issuer.clone()),
            client_id: Some("deskpod".into()),
            display_name: "Dex".into(),
            accounts,
            allowed_domains: allowed_domains.iter().map(|d| (*d).to_owned()).collect(),
        };
        let client = OidcClient::from_args(&args, &portal.state.config.public_url, Some(CLIENT_SECRET.into()))
            .await
            .unwrap()
            .expect("OIDC is configured");
        portal.state = portal.state.clone().with_oidc(Arc::new(client));
        let app = portal.app().into_make_service_with_connect_info::<SocketAddr>();
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { portal, base, dex, server }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn is_callback(&self, url: &str) -> bool {
        url.starts_with(&self.url("/auth/oidc/callback"))
    }

    /// From the portal's "Sign in with Dex" link through Dex's login form as `email`, up to (not
    /// into) the redirect back to the portal's callback: that URL.
    async fn sign_in_at_dex(&self, browser: &mut Browser, email: &str, next: &str) -> String {
        let start = browser.send(Method::GET, &self.url(&format!("/auth/oidc/start?next={next}")), None).await;
        assert_eq!(start.status, StatusCode::SEE_OTHER, "{}", start.body);
        assert!(start.location().unwrap().starts_with(&self.dex.issuer), "{:?}", start.location());
        let login = browser.follow(start, |_| false).await.unwrap();
        assert_eq!(login.status, StatusCode::OK, "Dex's login page: {}\n{}", login.body, self.dex.log());
        let action = resolve(&login.url, &login.form_action());
        let posted = browser.send(Method::POST, &action, Some(&[("login", email), ("password", DEX_PASSWORD)])).await;
        assert!(posted.status.is_redirection(), "Dex refused the login: {}\n{}", posted.body, self.dex.log());
        browser.follow(posted, |url| self.is_callback(url)).await.expect_err("Dex sends the browser back to the portal")
    }

    /// Signs in all the way as `email`: the last page.
    async fn sign_in(&self, browser: &mut Browser, email: &str) -> Page {
        let callback = self.sign_in_at_dex(browser, email, "/").await;
        let answer = browser.send(Method::GET, &callback, None).await;
        browser.follow(answer, |_| false).await.unwrap()
    }
}

fn query_param(url: &str, name: &str) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap();
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v).unwrap_or_else(|| panic!("no {name} in {url}"))
}

fn assert_no_leak(what: &str, text: &str, codes: &[&str]) {
    assert!(!text.contains(CLIENT_SECRET), "the client secret is in the {what}");
    for code in codes {
        assert!(!text.contains(code), "the authorization code {code} is in the {what}");
    }
}

// ----- the tests -----

#[tokio::test]
async fn signing_in_with_dex_ends_in_a_portal_session() {
    let setup = Setup::start(AccountPolicy::Existing, &[]).await;
    setup.portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::new();

    let page = browser.get_following(&setup.url("/signin")).await;
    assert!(page.body.contains("Sign in with Dex"), "{}", page.body);
    assert!(page.body.contains(r#"href="/auth/oidc/start?next=%2F""#), "{}", page.body);

    let callback = setup.sign_in_at_dex(&mut browser, "alice@example.com", "/account/tokens").await;
    let code = query_param(&callback, "code");
    let flow = browser.cookie("127.0.0.1", "deskpod_oidc").expect("the flow cookie is set").to_owned();
    assert!(!flow.contains(&code));

    let answer = browser.send(Method::GET, &callback, None).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(answer.location(), Some("/account/tokens"), "back where the sign-in started");
    let session = answer.set_cookies().into_iter().find(|c| c.starts_with("deskpod_session=")).expect("a session");
    let session = cookie::Cookie::parse(session).unwrap();
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.same_site(), Some(cookie::SameSite::Lax));
    assert_eq!(browser.cookie("127.0.0.1", "deskpod_oidc"), None, "the flow cookie is removed");

    let home = browser.get_following(&setup.url("/")).await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.body.contains("alice@example.com"), "{}", home.body);
    assert_eq!(home.url, setup.url("/"), "no detour to the sign-in page");

    let audit = setup.portal.store().audit_log(10).await.unwrap();
    let entry = audit.iter().find(|r| r.entry.action == "signin.oidc").expect("the sign-in is audited");
    assert_eq!(
        (entry.entry.actor.as_str(), entry.entry.outcome),
        ("alice@example.com", deskpod_portal::store::Outcome::Success)
    );

    let pages = [page.body, answer.body, home.body].concat();
    assert_no_leak("pages", &pages, &[&code]);
    assert_no_leak("audit log", &format!("{audit:?}"), &[&code]);
    let log = logs();
    assert!(log.contains("signin.oidc") && log.contains("alice@example.com"), "the log is captured");
    assert_no_leak("portal's log", &log, &[&code]);
}

#[tokio::test]
async fn a_callback_is_accepted_once() {
    let setup = Setup::start(AccountPolicy::Existing, &[]).await;
    setup.portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::new();
    let callback = setup.sign_in_at_dex(&mut browser, "alice@example.com", "/").await;
    let code = query_param(&callback, "code");
    let cookies_before = browser.cookies.clone();

    let first = browser.send(Method::GET, &callback, None).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);

    // The same answer again, with the flow cookie as it was (an attacker who captured both).
    let mut replay = Browser::new();
    replay.cookies = cookies_before;
    let again = replay.send(Method::GET, &callback, None).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "{}", again.body);
    assert!(again.body.contains("already used"), "{}", again.body);
    assert!(again.set_cookies().iter().all(|c| !c.starts_with("deskpod_session=")));
    assert_eq!(replay.cookie("127.0.0.1", "deskpod_session"), None);

    // And in the browser that signed in, whose flow cookie is gone.
    let later = browser.send(Method::GET, &callback, None).await;
    assert_eq!(later.status, StatusCode::BAD_REQUEST, "{}", later.body);
    assert!(later.body.contains("was not started in this browser"), "{}", later.body);

    assert_no_leak("pages", &[first.body, again.body, later.body].concat(), &[&code]);
    assert_no_leak("portal's log", &logs(), &[&code]);
}

#[tokio::test]
async fn a_tampered_state_or_a_foreign_browser_gets_no_session() {
    let setup = Setup::start(AccountPolicy::Existing, &[]).await;
    setup.portal.add_user("alice@example.com", GlobalRole::User).await;
    let mut browser = Browser::new();
    let callback = setup.sign_in_at_dex(&mut browser, "alice@example.com", "/").await;
    let state = query_param(&callback, "state");
    let code = query_param(&callback, "code");

    // Another browser (no flow cookie) gets the genuine answer: a login-CSRF attempt.
    let mut stranger = Browser::new();
    let foreign = stranger.send(Method::GET, &callback, None).await;
    assert_eq!(foreign.status, StatusCode::BAD_REQUEST, "{}", foreign.body);
    assert_eq!(stranger.cookie("127.0.0.1", "deskpod_session"), None);

    let mut tampered_state = state.clone();
    tampered_state.replace_range(0..1, if state.starts_with('A') { "B" } else { "A" });
    let tampered = callback.replace(&format!("state={state}"), &format!("state={tampered_state}"));
    assert_ne!(tampered, callback);
    let answer = browser.send(Method::GET, &tampered, None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert!(answer.body.contains("state mismatch"), "{}", answer.body);
    assert!(answer.set_cookies().iter().all(|c| !c.starts_with("deskpod_session=")));
    assert_eq!(browser.cookie("127.0.0.1", "deskpod_session"), None);
    let home = browser.send(Method::GET, &setup.url("/"), None).await;
    assert_eq!(home.status, StatusCode::SEE_OTHER, "still signed out");
    assert!(home.location().unwrap().starts_with("/signin"));

    let audit = setup.portal.store().audit_log(10).await.unwrap();
    assert!(
        audit
            .iter()
            .all(|r| r.entry.outcome != deskpod_portal::store::Outcome::Success || r.entry.action != "signin.oidc")
    );
    assert!(audit.iter().any(|r| r.entry.action == "signin.oidc"), "refusals are audited too");
    assert_no_leak("pages", &[foreign.body, answer.body].concat(), &[&code]);
    assert_no_leak("portal's log", &logs(), &[&code]);
}

#[tokio::test]
async fn a_provider_error_is_shown_without_a_session() {
    let setup = Setup::start(AccountPolicy::Existing, &[]).await;
    let mut browser = Browser::new();
    let start = browser.send(Method::GET, &setup.url("/auth/oidc/start"), None).await;
    let state = query_param(start.location().unwrap(), "state");
    let url =
        setup.url(&format!("/auth/oidc/callback?error=access_denied&error_description=The+user+said+no&state={state}"));
    let answer = browser.send(Method::GET, &url, None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert!(answer.body.contains("access_denied: The user said no"), "{}", answer.body);
    assert_eq!(browser.cookie("127.0.0.1", "deskpod_session"), None);
}

#[tokio::test]
async fn people_the_policy_does_not_admit_get_403_with_the_reason() {
    let setup = Setup::start(AccountPolicy::Existing, &["example.com"]).await;
    setup.portal.add_user("bob@other.example", GlobalRole::User).await;
    setup.portal.add_user("dave@example.com", GlobalRole::User).await;
    setup.portal.store().set_disabled("dave@example.com", true).await.unwrap();

    let cases = [
        ("bob@other.example", "open to addresses at example.com only"),
        ("carol@example.com", "There is no Deskpod account for carol@example.com"),
        ("dave@example.com", "disabled or its access has ended"),
    ];
    for (email, message) in cases {
        let mut browser = Browser::new();
        let page = setup.sign_in(&mut browser, email).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{email}: {}", page.body);
        assert!(page.body.contains(message), "{email}: {}", page.body);
        assert_eq!(browser.cookie("127.0.0.1", "deskpod_session"), None, "{email}");
        assert!(!page.body.contains(CLIENT_SECRET));
    }
    let audit = setup.portal.store().audit_log(20).await.unwrap();
    for (email, _) in cases {
        assert!(
            audit.iter().any(|r| r.entry.action == "signin.oidc"
                && r.entry.actor == email
                && r.entry.outcome == deskpod_portal::store::Outcome::Denied),
            "{email}: {audit:?}"
        );
    }
    assert!(setup.portal.store().user("carol@example.com").await.unwrap().is_none(), "no account was created");
    assert_no_leak("portal's log", &logs(), &[]);
}

#[tokio::test]
async fn with_the_create_policy_a_first_sign_in_creates_the_account() {
    let setup = Setup::start(AccountPolicy::Create, &["example.com"]).await;
    let mut browser = Browser::new();
    let page = setup.sign_in(&mut browser, "carol@example.com").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.url, setup.url("/"));
    let carol = setup.portal.store().user("carol@example.com").await.unwrap().expect("carol's account");
    assert_eq!(carol.display_name, "Carol");
    assert_eq!(carol.role, GlobalRole::User);
    assert_eq!(carol.password_hash, None, "no password: she signs in with Dex");

    // Other domains are still refused.
    let mut browser = Browser::new();
    let page = setup.sign_in(&mut browser, "bob@other.example").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(setup.portal.store().user("bob@other.example").await.unwrap().is_none());
}

#[tokio::test]
async fn a_contractor_keeps_their_expiry() {
    let setup = Setup::start(AccountPolicy::Existing, &[]).await;
    let ends = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2);
    let contractor = deskpod_portal::store::NewUser {
        id: "alice@example.com".into(),
        display_name: "Alice".into(),
        role: GlobalRole::User,
        password_hash: None,
        expires_at: Some(ends),
    };
    setup.portal.store().create_user(contractor).await.unwrap();
    let mut browser = Browser::new();
    let page = setup.sign_in(&mut browser, "alice@example.com").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let alice = setup.portal.store().user("alice@example.com").await.unwrap().unwrap();
    assert_eq!(alice.expires_at.map(|t| t.as_second()), Some(ends.as_second()), "signing in does not extend access");
}

#[tokio::test]
async fn without_a_provider_there_is_no_button_and_no_flow() {
    let portal = Portal::new().await;
    let mut browser = common::Browser::new();
    let page = browser.get(&portal, "/signin").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("Sign in with"), "{}", page.body);
    for path in ["/auth/oidc/start", "/auth/oidc/callback?code=x&state=y"] {
        let reply = browser.get(&portal, path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}: {}", reply.body);
        assert!(reply.body.contains("not configured"), "{}", reply.body);
    }
}
