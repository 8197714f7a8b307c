//! The extractors handlers use to learn who is asking.
//!
//! - [`CurrentUser`]: a signed-in user. Under `/api/` an `Authorization: Bearer dpt_...` API
//!   token is accepted as well as the session cookie; elsewhere only the cookie. Requests that
//!   change state (not GET/HEAD/OPTIONS) authenticated by the cookie must carry the CSRF token in
//!   `X-CSRF-Token`. Refused requests get a redirect to `/signin` when a browser asked for a page
//!   (`Accept: text/html`, outside `/api/`), a JSON error otherwise.
//! - [`SessionForm`]: a form posted by a signed-in browser, its `csrf` field checked against the
//!   session. Page handlers that change state take this instead of [`CurrentUser`].
//! - [`PublicForm`]: a form posted before sign-in (sign-in, invite), its `csrf` field checked
//!   against the `deskpod_csrf` pre-session cookie that [`PreSession`] hands out.
//! - [`RemoteAddr`]: the client's address (the peer, or what a trusted proxy forwarded), for the
//!   audit log and the sign-in rate limit.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, OriginalUri, Request};
use axum::http::header::{ACCEPT, AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use jiff::Timestamp;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::csrf::{CSRF_HEADER, CsrfBinding, PRE_SESSION_COOKIE};
use super::session::{self, Claims, SESSION_COOKIE};
use crate::config::Config;
use crate::error::Error;
use crate::http::PageError;
use crate::state::AppState;
use crate::store::{ApiToken, User};
use crate::token::{self, Scope};

/// The largest form body read, in bytes.
const FORM_LIMIT: usize = 64 * 1024;

/// What a refused form post says.
pub const CSRF_FORM_MESSAGE: &str = "This form's security token is missing or does not match your session, so nothing \
                                     was changed. Reload the page and try again.";
/// What a refused JSON request says.
pub const CSRF_HEADER_MESSAGE: &str = "The X-CSRF-Token header is missing or wrong, so nothing was changed. Requests \
                                       signed in with the session cookie must send the csrf_token from GET \
                                       /api/v1/me; scripts should use an API token instead.";

/// A signed-in user and how they proved it.
#[derive(Clone, Debug)]
pub struct CurrentUser {
    pub user: User,
    pub auth: Auth,
}

/// How a request was authenticated.
#[derive(Clone, Debug)]
pub enum Auth {
    /// The session cookie; `csrf_token` is what this session's forms and JSON requests carry.
    Session { claims: Claims, csrf_token: String },
    /// An API token, which may do only what its scopes allow.
    Token(ApiToken),
}

impl CurrentUser {
    /// The user's id (their lower-cased e-mail address).
    pub fn id(&self) -> &str {
        &self.user.id
    }

    /// Whether the request may use `scope`: sessions may use every scope (their role still
    /// limits them), API tokens only those they were given.
    pub fn has_scope(&self, scope: Scope) -> bool {
        match &self.auth {
            Auth::Session { .. } => true,
            Auth::Token(token) => token.scopes.contains(&scope),
        }
    }

    /// [`CurrentUser::has_scope`] as a 403.
    pub fn require_scope(&self, scope: Scope) -> Result<(), Error> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!("this API token does not have the scope {}", scope.as_str())))
        }
    }

    /// The CSRF token of a session; `None` for API tokens.
    pub fn csrf_token(&self) -> Option<&str> {
        match &self.auth {
            Auth::Session { csrf_token, .. } => Some(csrf_token),
            Auth::Token(_) => None,
        }
    }
}

/// How a refusal is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResponseMode {
    /// A browser asked for a page: redirect to sign-in, or an HTML error page.
    Page,
    /// Everything else: a JSON error.
    Json,
}

fn request_path(parts: &Parts) -> &str {
    parts.extensions.get::<OriginalUri>().map_or(parts.uri.path(), |original| original.0.path())
}

fn path_and_query(parts: &Parts) -> String {
    let uri = parts.extensions.get::<OriginalUri>().map_or(&parts.uri, |original| &original.0);
    uri.path_and_query().map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned())
}

fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

impl ResponseMode {
    fn of(parts: &Parts) -> Self {
        let wants_html = parts
            .headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.contains("text/html"));
        if wants_html && !is_api(request_path(parts)) { Self::Page } else { Self::Json }
    }
}

/// Why a request was refused, answered as the request calls for.
#[derive(Debug)]
pub struct AuthRejection {
    mode: ResponseMode,
    error: Error,
    /// Where to come back to after signing in.
    return_to: String,
    /// Whether to remove a session cookie that no longer works.
    clear_cookie: Option<HeaderValue>,
}

impl AuthRejection {
    fn new(parts: &Parts, error: Error) -> Self {
        Self { mode: ResponseMode::of(parts), error, return_to: path_and_query(parts), clear_cookie: None }
    }

    /// Whether the request was refused for want of a valid session or token (not, say, CSRF).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self.error, Error::Unauthenticated(_))
    }

    fn page(mut self) -> Self {
        self.mode = ResponseMode::Page;
        self
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let mut response = match (self.mode, &self.error) {
            (ResponseMode::Page, Error::Unauthenticated(_)) => {
                let query = serde_urlencoded::to_string([("next", safe_return_path(&self.return_to))])
                    .unwrap_or_else(|_| "next=%2F".into());
                let location = format!("/signin?{query}");
                let mut response = StatusCode::SEE_OTHER.into_response();
                if let Ok(location) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(LOCATION, location);
                }
                response
            }
            (ResponseMode::Page, _) => PageError(self.error).into_response(),
            (ResponseMode::Json, _) => self.error.into_response(),
        };
        if let Some(removal) = self.clear_cookie {
            response.headers_mut().append(SET_COOKIE, removal);
        }
        response
    }
}

impl From<Error> for AuthRejection {
    fn from(error: Error) -> Self {
        Self { mode: ResponseMode::Page, error, return_to: "/".into(), clear_cookie: None }
    }
}

/// `raw` if it is a path on this site (so `?next=` cannot send anyone elsewhere), `/` otherwise.
pub fn safe_return_path(raw: &str) -> &str {
    let local = raw.starts_with('/')
        && !raw.starts_with("//")
        && !raw.contains('\\')
        && !raw.chars().any(|c| c.is_control() || c.is_whitespace());
    if local { raw } else { "/" }
}

/// The value of cookie `name`, if the request has it.
pub(crate) fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)
        .map(|cookie| cookie.value().to_owned())
}

/// Where a session's CSRF token is checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CsrfCheck {
    /// In `X-CSRF-Token`, for requests that change state.
    Header,
    /// By the caller, in the form body.
    Form,
}

async fn authenticate(parts: &Parts, state: &AppState, csrf: CsrfCheck) -> Result<CurrentUser, AuthRejection> {
    let now = Timestamp::now();
    if is_api(request_path(parts))
        && let Some(header) = parts.headers.get(AUTHORIZATION)
    {
        let presented = header.to_str().ok().and_then(|value| value.strip_prefix("Bearer ")).ok_or_else(|| {
            AuthRejection::new(
                parts,
                Error::Unauthenticated("the Authorization header must be `Bearer <API token>`".into()),
            )
        })?;
        let (user, token) =
            token::authenticate(state, presented.trim(), now).await.map_err(|e| AuthRejection::new(parts, e))?;
        return Ok(CurrentUser { user, auth: Auth::Token(token) });
    }

    let Some(cookie) = read_cookie(&parts.headers, SESSION_COOKIE) else {
        return Err(AuthRejection::new(parts, Error::Unauthenticated("Sign in first.".into())));
    };
    let session = match session::validate(state.store.as_ref(), &state.keys, &cookie, now).await {
        Ok(session) => session,
        Err(error @ Error::Unauthenticated(_)) => {
            let mut rejection = AuthRejection::new(parts, error);
            rejection.clear_cookie = Some(session::removal_cookie(&state.config));
            return Err(rejection);
        }
        Err(error) => return Err(AuthRejection::new(parts, error)),
    };
    let binding = CsrfBinding::Session(&session.claims.jti);
    if csrf == CsrfCheck::Header && !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        let presented = parts.headers.get(CSRF_HEADER).and_then(|value| value.to_str().ok()).unwrap_or("");
        if !state.keys.verify_csrf(binding, presented) {
            return Err(AuthRejection::new(parts, Error::Forbidden(CSRF_HEADER_MESSAGE.into())));
        }
    }
    let csrf_token = state.keys.csrf_token(binding);
    Ok(CurrentUser { user: session.user, auth: Auth::Session { claims: session.claims, csrf_token } })
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        authenticate(parts, state, CsrfCheck::Header).await
    }
}

/// Just the CSRF field of a form.
#[derive(Deserialize)]
struct CsrfField {
    csrf: Option<String>,
}

async fn read_form<T: DeserializeOwned>(
    body: axum::body::Body,
    keys: &super::Keys,
    binding: CsrfBinding<'_>,
) -> Result<T, Error> {
    let bytes = axum::body::to_bytes(body, FORM_LIMIT).await.map_err(|e| Error::unreadable_body(&e, FORM_LIMIT))?;
    let presented = serde_urlencoded::from_bytes::<CsrfField>(&bytes).ok().and_then(|field| field.csrf);
    if !presented.is_some_and(|token| keys.verify_csrf(binding, &token)) {
        return Err(Error::Forbidden(CSRF_FORM_MESSAGE.into()));
    }
    serde_urlencoded::from_bytes(&bytes).map_err(|e| Error::bad_request(format!("The form could not be read: {e}.")))
}

/// A form posted by a signed-in browser, its `csrf` field checked against the session.
#[derive(Debug)]
pub struct SessionForm<T> {
    pub user: CurrentUser,
    pub form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for SessionForm<T> {
    type Rejection = AuthRejection;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let user = authenticate(&parts, state, CsrfCheck::Form).await.map_err(AuthRejection::page)?;
        let Auth::Session { claims, .. } = &user.auth else {
            return Err(AuthRejection::new(&parts, Error::Forbidden("Forms need a signed-in browser.".into())).page());
        };
        let form = read_form(body, &state.keys, CsrfBinding::Session(&claims.jti))
            .await
            .map_err(|e| AuthRejection::new(&parts, e).page())?;
        Ok(Self { user, form })
    }
}

/// The random value a browser's pre-sign-in forms are bound to, from the `deskpod_csrf` cookie
/// or new (then the page must set the cookie, see [`PreSession::set_cookie`]).
#[derive(Clone, Debug)]
pub struct PreSession {
    value: String,
    is_new: bool,
}

impl PreSession {
    /// The CSRF token for this browser's pre-sign-in forms.
    pub fn csrf_token(&self, keys: &super::Keys) -> String {
        keys.csrf_token(CsrfBinding::PreSession(&self.value))
    }

    /// The `Set-Cookie` value to send, if the browser does not have the cookie yet.
    pub fn set_cookie(&self, config: &Config) -> Option<HeaderValue> {
        self.is_new.then(|| {
            let cookie = Cookie::build((PRE_SESSION_COOKIE, self.value.as_str()))
                .http_only(true)
                .same_site(SameSite::Lax)
                .path("/")
                .secure(config.public_url.secure_cookies())
                .build();
            HeaderValue::from_str(&cookie.to_string()).expect("base64 is a valid header value")
        })
    }
}

fn is_pre_session_value(value: &str) -> bool {
    value.len() == 43 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FromRequestParts<AppState> for PreSession {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        match read_cookie(&parts.headers, PRE_SESSION_COOKIE).filter(|value| is_pre_session_value(value)) {
            Some(value) => Ok(Self { value, is_new: false }),
            None => Ok(Self { value: crate::random::url_safe::<32>()?, is_new: true }),
        }
    }
}

/// A form posted before sign-in, its `csrf` field checked against the pre-session cookie.
#[derive(Debug)]
pub struct PublicForm<T> {
    pub form: T,
    /// The browser's pre-session, to render the form again (with the same CSRF token).
    pub pre_session: PreSession,
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for PublicForm<T> {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let Some(value) = read_cookie(&parts.headers, PRE_SESSION_COOKIE).filter(|value| is_pre_session_value(value))
        else {
            return Err(PageError(Error::Forbidden(CSRF_FORM_MESSAGE.into())));
        };
        let form = read_form(body, &state.keys, CsrfBinding::PreSession(&value)).await?;
        Ok(Self { form, pre_session: PreSession { value, is_new: false } })
    }
}

/// The address the request came from: the TCP peer, unless that is one of the configured trusted
/// proxies ([`crate::config::TrustedProxies`]), whose `X-Forwarded-For` then names the client.
/// `None` when the server was not started with connection info, as in tests.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub Option<IpAddr>);

/// The header a reverse proxy names the client in.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

impl FromRequestParts<AppState> for RemoteAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
        Ok(Self(peer.map(|peer| {
            let forwarded = parts.headers.get_all(X_FORWARDED_FOR).iter().filter_map(|value| value.to_str().ok());
            state.config.trusted_proxies.client_addr(peer, forwarded)
        })))
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("/", "/")]
    #[case("/account/tokens?x=1", "/account/tokens?x=1")]
    #[case("//evil.example.com", "/")]
    #[case("/\\evil.example.com", "/")]
    #[case("https://evil.example.com", "/")]
    #[case("evil", "/")]
    #[case("/a\nb", "/")]
    #[case("", "/")]
    fn only_local_paths_are_return_targets(#[case] raw: &str, #[case] safe: &str) {
        assert_eq!(safe_return_path(raw), safe);
    }

    #[test]
    fn cookies_are_found_among_several_headers() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; deskpod_session=abc.def.ghi"));
        headers.append(COOKIE, HeaderValue::from_static("deskpod_csrf=xyz"));
        assert_eq!(read_cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc.def.ghi"));
        assert_eq!(read_cookie(&headers, PRE_SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(read_cookie(&headers, "missing"), None);
    }
}
