//! Optional sign-in through an OpenID Connect provider: the authorization code flow with PKCE
//! (S256), enabled by `--oidc-issuer` and `--oidc-client-id`.
//!
//! `GET /auth/oidc/start` sends the browser to the provider with a fresh `state`, `nonce` and
//! PKCE challenge; the three values (and where to go afterwards) travel in the `deskpod_oidc`
//! cookie, HMAC-signed under a key derived from the portal's signing key, HttpOnly, SameSite=Lax,
//! limited to `/auth/oidc` and valid for ten minutes. `GET /auth/oidc/callback` accepts the
//! provider's answer only with that cookie and a matching `state`, and only once; it exchanges
//! the code (with the PKCE verifier and, if configured, the client secret) for an ID token and
//! verifies it: signed with an algorithm the provider advertises (RSA or ECDSA only, never
//! `none` or a shared-secret HMAC) under a key from the provider's JWKS whose type fits that
//! algorithm, issued by the configured issuer for this client, unexpired, carrying the nonce.
//!
//! The person is then matched to a portal account by their lower-cased e-mail address (a
//! provider that says `email_verified: false` is refused), checked against the allowed domains,
//! and refused if the account is disabled or its access has ended. Unknown addresses are refused
//! or, with `--oidc-accounts create`, given a new account without a password. The session is
//! the same cookie a password sign-in gets, and every outcome is audited as `signin.oidc`.
//!
//! The client secret comes from `DESKPOD_OIDC_CLIENT_SECRET` only; neither it, the code, the
//! PKCE verifier nor any token is logged, put in a page or kept.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use cookie::{Cookie, SameSite};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

use crate::metrics::SignIn;

use super::Keys;
use super::extract::{read_cookie, safe_return_path};
use crate::account::{normalize_email, validate_display_name};
use crate::audit::{self, AuditAction};
use crate::authz::account_is_active;
use crate::config::{Config, PublicUrl};
use crate::error::{Error, Result};
use crate::random;
use crate::state::AppState;
use crate::store::{GlobalRole, NewUser, Outcome, User};

/// The environment variable the client secret is read from (never a flag).
pub const CLIENT_SECRET_ENV: &str = "DESKPOD_OIDC_CLIENT_SECRET";
/// The cookie carrying a sign-in in progress.
pub const FLOW_COOKIE: &str = "deskpod_oidc";
/// Where the provider sends the browser back to, below the public URL.
pub const CALLBACK_PATH: &str = "/auth/oidc/callback";
/// Where a sign-in starts.
pub const START_PATH: &str = "/auth/oidc/start";
/// The path the flow cookie is limited to.
const FLOW_COOKIE_PATH: &str = "/auth/oidc";
/// How long a sign-in at the provider may take.
const FLOW_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// How long a request to the provider may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from the provider, in bytes.
const MAX_PROVIDER_RESPONSE: usize = 512 * 1024;
/// The shortest time between two JWKS fetches prompted by an unknown key id.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Clock difference tolerated between the provider and the portal, in seconds.
const CLOCK_LEEWAY_SECS: u64 = 60;
/// The ID token signature algorithms accepted, if the provider advertises them.
const SUPPORTED_ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Sign-in with an OpenID Connect provider (flags of `deskpod-portal`).
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Sign-in with OpenID Connect (optional)")]
pub struct OidcArgs {
    /// Issuer URL of an OpenID Connect provider (its discovery document is at
    /// <issuer>/.well-known/openid-configuration). Setting it adds a "Sign in with <name>" button
    /// to the sign-in page. Must be https://, except on localhost, 127.0.0.1 or [::1]. Register
    /// <public URL>/auth/oidc/callback as the redirect URI at the provider; a confidential
    /// client's secret is read from DESKPOD_OIDC_CLIENT_SECRET (unset: a public client, PKCE only).
    #[arg(long = "oidc-issuer", env = "DESKPOD_OIDC_ISSUER", value_name = "URL", requires = "client_id")]
    pub issuer: Option<String>,

    /// The portal's client id at the provider.
    #[arg(long = "oidc-client-id", env = "DESKPOD_OIDC_CLIENT_ID", value_name = "ID", requires = "issuer")]
    pub client_id: Option<String>,

    /// The provider's name on the sign-in button ("Sign in with <name>").
    #[arg(long = "oidc-name", env = "DESKPOD_OIDC_NAME", value_name = "NAME", default_value = "single sign-on")]
    pub display_name: String,

    /// Who may sign in with the provider. `existing`: only people who already have a portal
    /// account (matched by lower-cased e-mail address). `create`: also people without one, who get
    /// an account on first sign-in; needs --oidc-allowed-domain.
    #[arg(long = "oidc-accounts", env = "DESKPOD_OIDC_ACCOUNTS", value_enum, default_value_t = AccountPolicy::Existing)]
    pub accounts: AccountPolicy,

    /// E-mail domain allowed to sign in with the provider, e.g. example.com; repeat the flag or
    /// separate with commas. Unset: any domain (for existing accounts only).
    #[arg(
        long = "oidc-allowed-domain",
        env = "DESKPOD_OIDC_ALLOWED_DOMAINS",
        value_name = "DOMAIN",
        value_delimiter = ','
    )]
    pub allowed_domains: Vec<String>,
}

/// Which people signing in with the provider get in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccountPolicy {
    /// Only those who already have an account.
    #[default]
    Existing,
    /// Also those without one: an account is created on first sign-in.
    Create,
}

/// A secret that never shows in `Debug` output.
#[derive(Clone)]
struct ClientSecret(String);

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    issuer: String,
    client_id: String,
    client_secret: Option<ClientSecret>,
    display_name: String,
    accounts: AccountPolicy,
    allowed_domains: Vec<String>,
    redirect_uri: String,
}

impl OidcSettings {
    /// Checks `args`; `None` when no issuer is configured. `client_secret` comes from
    /// [`CLIENT_SECRET_ENV`].
    pub fn from_args(args: &OidcArgs, public_url: &PublicUrl, client_secret: Option<String>) -> Result<Option<Self>> {
        let Some(issuer) = args.issuer.as_deref().map(str::trim) else {
            if args.client_id.is_some() {
                return Err(Error::Config("--oidc-client-id needs --oidc-issuer".into()));
            }
            return Ok(None);
        };
        provider_url(issuer).map_err(|why| Error::Config(format!("--oidc-issuer {issuer:?} {why}")))?;
        if issuer.contains('?') || issuer.contains('#') {
            return Err(Error::Config(format!("--oidc-issuer {issuer:?} must not have a query or fragment")));
        }
        let client_id = args.client_id.as_deref().map(str::trim).unwrap_or_default();
        if client_id.is_empty() {
            return Err(Error::Config("--oidc-issuer needs --oidc-client-id".into()));
        }
        let display_name = args.display_name.trim();
        if display_name.is_empty() || display_name.chars().count() > 60 || display_name.chars().any(char::is_control) {
            return Err(Error::Config("--oidc-name must be 1 to 60 characters without control characters".into()));
        }
        let mut allowed_domains = Vec::new();
        for raw in &args.allowed_domains {
            let domain = raw.trim().trim_start_matches('@').to_lowercase();
            if domain.is_empty() {
                continue;
            }
            normalize_email(&format!("x@{domain}"))
                .map_err(|_| Error::Config(format!("--oidc-allowed-domain {raw:?} is not a domain")))?;
            allowed_domains.push(domain);
        }
        if args.accounts == AccountPolicy::Create && allowed_domains.is_empty() {
            return Err(Error::Config(
                "--oidc-accounts create needs --oidc-allowed-domain: otherwise anyone with an account at the provider \
                 would get a portal account"
                    .into(),
            ));
        }
        Ok(Some(Self {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.filter(|s| !s.is_empty()).map(ClientSecret),
            display_name: display_name.to_owned(),
            accounts: args.accounts,
            allowed_domains,
            redirect_uri: public_url.join(CALLBACK_PATH),
        }))
    }

    /// Whether `email` (lower-cased) is in an allowed domain; any is when none is configured.
    fn domain_allowed(&self, email: &str) -> bool {
        let domain = email.rsplit_once('@').map_or("", |(_, domain)| domain);
        self.allowed_domains.is_empty() || self.allowed_domains.iter().any(|allowed| allowed == domain)
    }
}

/// Checks a URL the portal itself fetches from the provider (or the issuer): https, or plain
/// http on a loopback host.
fn provider_url(raw: &str) -> std::result::Result<Uri, String> {
    let uri: Uri = raw.parse().map_err(|_| "is not a URL".to_owned())?;
    let host = uri.host().filter(|host| !host.is_empty()).ok_or_else(|| "has no host".to_owned())?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1") => Ok(uri),
        Some("http") => Err("must be https:// (plain http only on localhost, 127.0.0.1 or [::1])".into()),
        _ => Err("needs https://".into()),
    }
}

/// The provider's discovery document: the parts the portal uses.
#[derive(Clone, Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

/// What discovery established about the provider.
#[derive(Clone, Debug)]
struct Provider {
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    /// The ID token algorithms accepted: advertised by the provider and supported here.
    algorithms: Vec<Algorithm>,
    /// Whether the client secret goes in the form (`client_secret_post`) rather than HTTP Basic.
    secret_in_form: bool,
}

impl Provider {
    fn from_discovery(settings: &OidcSettings, doc: Discovery) -> Result<Self> {
        let bad = |why: String| Error::IdentityProvider(format!("discovery document of {}: {why}", settings.issuer));
        if doc.issuer != settings.issuer {
            return Err(bad(format!("it names the issuer {:?}, not the configured one", doc.issuer)));
        }
        for (name, url) in [
            ("authorization_endpoint", &doc.authorization_endpoint),
            ("token_endpoint", &doc.token_endpoint),
            ("jwks_uri", &doc.jwks_uri),
        ] {
            provider_url(url).map_err(|why| bad(format!("{name} {url:?} {why}")))?;
        }
        let algorithms: Vec<Algorithm> = SUPPORTED_ALGORITHMS
            .into_iter()
            .filter(|alg| doc.id_token_signing_alg_values_supported.iter().any(|name| name == alg_name(*alg)))
            .collect();
        if algorithms.is_empty() {
            return Err(bad(format!(
                "it signs ID tokens with {:?}; the portal verifies only RSA and ECDSA signatures",
                doc.id_token_signing_alg_values_supported
            )));
        }
        if let Some(methods) = &doc.code_challenge_methods_supported
            && !methods.iter().any(|m| m == "S256")
        {
            return Err(bad("it does not support PKCE with S256".into()));
        }
        let methods = doc.token_endpoint_auth_methods_supported.unwrap_or_default();
        let secret_in_form = !methods.is_empty()
            && !methods.iter().any(|m| m == "client_secret_basic")
            && methods.iter().any(|m| m == "client_secret_post");
        Ok(Self {
            authorization_endpoint: doc.authorization_endpoint,
            token_endpoint: doc.token_endpoint,
            jwks_uri: doc.jwks_uri,
            algorithms,
            secret_in_form,
        })
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "an unknown algorithm",
    }
}

/// Whether `jwk` may verify signatures made with `alg`: its type (and curve) fit the algorithm,
/// and its `alg` and `use`, where given, agree.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    let type_fits = match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => ec.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => ec.curve == EllipticCurve::P384,
        _ => false,
    };
    let alg_fits = jwk.common.key_algorithm.is_none_or(|key_alg| key_alg_name(key_alg) == Some(alg_name(alg)));
    let use_fits = jwk.common.public_key_use.as_ref().is_none_or(|usage| *usage == PublicKeyUse::Signature);
    type_fits && alg_fits && use_fits
}

fn key_alg_name(alg: KeyAlgorithm) -> Option<&'static str> {
    Some(match alg {
        KeyAlgorithm::ES256 => "ES256",
        KeyAlgorithm::ES384 => "ES384",
        KeyAlgorithm::RS256 => "RS256",
        KeyAlgorithm::RS384 => "RS384",
        KeyAlgorithm::RS512 => "RS512",
        KeyAlgorithm::PS256 => "PS256",
        KeyAlgorithm::PS384 => "PS384",
        KeyAlgorithm::PS512 => "PS512",
        _ => return None,
    })
}

/// The provider's signing keys; keys the portal cannot read are left out.
#[derive(Clone, Debug, Default)]
struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    fn parse(body: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Raw {
            keys: Vec<serde_json::Value>,
        }
        let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
        Ok(Self { keys: raw.keys.into_iter().filter_map(|key| serde_json::from_value(key).ok()).collect() })
    }

    /// The key for a token signed with `alg` under key id `kid`; without a key id, the only key
    /// that fits.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Jwk> {
        match kid {
            Some(kid) => self.keys.iter().find(|key| key.common.key_id.as_deref() == Some(kid) && key_fits(key, alg)),
            None => {
                let mut fitting = self.keys.iter().filter(|key| key_fits(key, alg));
                let only = fitting.next();
                if fitting.next().is_some() { None } else { only }
            }
        }
    }
}

/// What the ID token must say.
struct Expected<'a> {
    issuer: &'a str,
    client_id: &'a str,
    nonce: &'a str,
    algorithms: &'a [Algorithm],
}

/// The ID token claims the portal reads (`iss`, `aud` and `exp` are checked by `jsonwebtoken`).
#[derive(Clone, Debug, Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    aud: serde_json::Value,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    name: Option<String>,
}

/// Why an ID token was refused.
#[derive(Debug, PartialEq, Eq)]
enum TokenError {
    /// No key in the set fits the token's key id and algorithm (the set may be stale).
    UnknownKey,
    /// The token is not acceptable; the reason is safe to show and log.
    Invalid(String),
}

/// Verifies an ID token against the provider's keys: the algorithm, the key, the signature,
/// `iss`, `aud` (and `azp`), `exp`, `nbf` and the nonce.
fn verify_id_token(token: &str, keys: &KeySet, expected: &Expected<'_>) -> Result<IdClaims, TokenError> {
    let invalid = |why: &str| TokenError::Invalid(why.to_owned());
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("the ID token is not a signed JWT"))?;
    if !expected.algorithms.contains(&header.alg) {
        return Err(TokenError::Invalid(format!(
            "the ID token is signed with {}, which the provider does not advertise",
            alg_name(header.alg)
        )));
    }
    let jwk = keys.find(header.kid.as_deref(), header.alg).ok_or(TokenError::UnknownKey)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| invalid("the provider's signing key cannot be read"))?;
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.leeway = CLOCK_LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_issuer(&[expected.issuer]);
    validation.set_audience(&[expected.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            TokenError::Invalid(
                match e.kind() {
                    ErrorKind::InvalidSignature => "the ID token's signature does not verify",
                    ErrorKind::ExpiredSignature => "the ID token has expired",
                    ErrorKind::ImmatureSignature => "the ID token is not valid yet",
                    ErrorKind::InvalidIssuer => "the ID token is from another issuer",
                    ErrorKind::InvalidAudience => "the ID token is for another client",
                    ErrorKind::MissingRequiredClaim(_) => "the ID token lacks a required claim",
                    _ => "the ID token cannot be read",
                }
                .to_owned(),
            )
        })?
        .claims;
    if let serde_json::Value::Array(audiences) = &claims.aud
        && audiences.len() > 1
        && claims.azp.as_deref() != Some(expected.client_id)
    {
        return Err(invalid("the ID token is for several clients and not authorized for this one"));
    }
    let nonce_matches = claims.nonce.as_deref().is_some_and(|nonce| constant_time_eq(nonce, expected.nonce));
    if !nonce_matches {
        return Err(invalid("the ID token does not carry this sign-in's nonce"));
    }
    Ok(claims)
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The PKCE S256 challenge of `verifier` (RFC 7636).
fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A sign-in in progress, as the flow cookie carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Flow {
    /// The `state` sent to the provider.
    state: String,
    /// The `nonce` the ID token must carry.
    nonce: String,
    /// The PKCE code verifier.
    verifier: String,
    /// Where to go after signing in (a local path).
    next: String,
    /// When the flow expires, Unix seconds.
    exp: i64,
}

/// The HMAC key for flow cookies, derived from the CSRF key (itself derived from the signing key).
fn flow_mac(keys: &Keys) -> Hmac<Sha256> {
    let mut derive = Hmac::<Sha256>::new_from_slice(&keys.csrf).expect("HMAC takes keys of any length");
    derive.update(b"deskpod oidc flow v1");
    let key = derive.finalize().into_bytes();
    Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length")
}

impl Flow {
    fn seal(&self, keys: &Keys) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a flow serializes"));
        let mut mac = flow_mac(keys);
        mac.update(payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// The flow in `sealed` if its signature verifies and it has not expired at `now`.
    fn open(keys: &Keys, sealed: &str, now: Timestamp) -> Option<Self> {
        let (payload, tag) = sealed.split_once('.')?;
        let mut mac = flow_mac(keys);
        mac.update(payload.as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(tag).ok()?).ok()?;
        let flow: Self = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (now.as_second() < flow.exp).then_some(flow)
    }
}

fn flow_cookie(config: &Config, value: &str, max_age: Option<Duration>) -> HeaderValue {
    let mut cookie = Cookie::build((FLOW_COOKIE, value.to_owned()))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path(FLOW_COOKIE_PATH)
        .secure(config.public_url.secure_cookies());
    cookie = match max_age {
        Some(age) => cookie.max_age(cookie::time::Duration::seconds(i64::try_from(age.as_secs()).unwrap_or(600))),
        None => cookie.removal(),
    };
    HeaderValue::from_str(&cookie.build().to_string()).expect("base64 is a valid header value")
}

/// The `Set-Cookie` value that removes the flow cookie.
pub fn removal_cookie(config: &Config) -> HeaderValue {
    flow_cookie(config, "", None)
}

/// The query the provider sends the browser back with.
#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The portal's client of the OpenID provider: settings, the discovered endpoints and keys, and
/// the `state`s already used.
pub struct OidcClient {
    settings: OidcSettings,
    http: HttpClient,
    provider: RwLock<Option<Provider>>,
    keys: RwLock<(KeySet, Option<Instant>)>,
    /// States seen at the callback, until their flow would have expired.
    used_states: Mutex<HashMap<String, i64>>,
}

impl fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcClient").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Who the provider says signed in.
#[derive(Clone, Debug)]
struct Identity {
    /// The lower-cased e-mail address.
    email: String,
    /// Whether the provider says it verified the address; `None` when it does not say.
    email_verified: Option<bool>,
    name: Option<String>,
}

impl OidcClient {
    /// The client for `args`, or `None` when no issuer is configured. Discovery is tried now so
    /// that a wrong issuer shows in the log at start; if the provider cannot be reached, the
    /// portal starts anyway and discovers it at the first sign-in.
    pub async fn from_args(
        args: &OidcArgs,
        public_url: &PublicUrl,
        client_secret: Option<String>,
    ) -> Result<Option<Self>> {
        let Some(settings) = OidcSettings::from_args(args, public_url, client_secret)? else {
            return Ok(None);
        };
        let client = Self::new(settings)?;
        match client.provider().await {
            Ok(_) => tracing::info!(issuer = %client.settings.issuer, "OpenID Connect sign-in enabled"),
            Err(error) => tracing::warn!(%error, "OpenID Connect provider not reachable yet; retried at sign-in"),
        }
        Ok(Some(client))
    }

    /// A client for checked settings; nothing is fetched yet.
    pub fn new(settings: OidcSettings) -> Result<Self> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| Error::Config(format!("loading the system's certificate roots for OIDC: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            settings,
            http: Client::builder(TokioExecutor::new()).build(connector),
            provider: RwLock::new(None),
            keys: RwLock::new((KeySet::default(), None)),
            used_states: Mutex::new(HashMap::new()),
        })
    }

    /// The provider's name for the sign-in button.
    pub fn display_name(&self) -> &str {
        &self.settings.display_name
    }

    /// Sends a request to the provider: its status and (bounded) body.
    async fn fetch(&self, request: Request<Full<Bytes>>, what: &str) -> Result<(StatusCode, Bytes)> {
        let failed = |detail: String| Error::IdentityProvider(format!("{what} at {}: {detail}", self.settings.issuer));
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| failed(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_PROVIDER_RESPONSE)
                .collect()
                .await
                .map_err(|e| failed(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(PROVIDER_TIMEOUT, exchange)
            .await
            .map_err(|_| failed(format!("no answer within {} s", PROVIDER_TIMEOUT.as_secs())))?
    }

    async fn get_json(&self, url: &str, what: &str) -> Result<Bytes> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::IdentityProvider(format!("{what}: {e}")))?;
        match self.fetch(request, what).await? {
            (StatusCode::OK, body) => Ok(body),
            (status, _) => Err(Error::IdentityProvider(format!("{what} at {url}: HTTP {status}"))),
        }
    }

    /// The discovered provider, fetched on first use.
    async fn provider(&self) -> Result<Provider> {
        if let Some(provider) = self.provider.read().await.as_ref() {
            return Ok(provider.clone());
        }
        let mut slot = self.provider.write().await;
        if let Some(provider) = slot.as_ref() {
            return Ok(provider.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
        let body = self.get_json(&url, "the discovery document").await?;
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| Error::IdentityProvider(format!("the discovery document at {url} cannot be read: {e}")))?;
        let provider = Provider::from_discovery(&self.settings, doc)?;
        *slot = Some(provider.clone());
        Ok(provider)
    }

    /// Fetches the provider's keys, unless they were fetched moments ago; whether they were.
    async fn refresh_keys(&self, provider: &Provider) -> Result<bool> {
        let mut keys = self.keys.write().await;
        if keys.1.is_some_and(|at| at.elapsed() < JWKS_REFETCH_INTERVAL) {
            return Ok(false);
        }
        let body = self.get_json(&provider.jwks_uri, "the signing keys (JWKS)").await?;
        let set = KeySet::parse(&body)
            .map_err(|why| Error::IdentityProvider(format!("the signing keys at {}: {why}", provider.jwks_uri)))?;
        *keys = (set, Some(Instant::now()));
        Ok(true)
    }

    /// Verifies an ID token, fetching the provider's keys first if they are not cached or do not
    /// include the token's key.
    async fn verify(&self, provider: &Provider, token: &str, nonce: &str) -> Result<IdClaims> {
        let expected = Expected {
            issuer: &self.settings.issuer,
            client_id: &self.settings.client_id,
            nonce,
            algorithms: &provider.algorithms,
        };
        if self.keys.read().await.1.is_none() {
            self.refresh_keys(provider).await?;
        }
        let first = verify_id_token(token, &self.keys.read().await.0, &expected);
        let outcome = match first {
            Err(TokenError::UnknownKey) if self.refresh_keys(provider).await? => {
                verify_id_token(token, &self.keys.read().await.0, &expected)
            }
            other => other,
        };
        outcome.map_err(|error| match error {
            TokenError::UnknownKey => {
                self.refused("the ID token is signed with a key the provider does not publish".into())
            }
            TokenError::Invalid(why) => self.refused(why),
        })
    }

    /// A 400 saying the sign-in with the provider failed, and why.
    fn refused(&self, why: String) -> Error {
        Error::bad_request(format!(
            "Signing in with {} failed: {why}. Start again from the sign-in page.",
            self.settings.display_name
        ))
    }

    /// Starts a sign-in: the provider's authorization URL to send the browser to, and the flow
    /// cookie to set. `next` is where to go afterwards (a local path).
    pub async fn begin(&self, keys: &Keys, config: &Config, next: &str) -> Result<(String, HeaderValue)> {
        let provider = self.provider().await?;
        let flow = Flow {
            state: random::url_safe::<32>()?,
            nonce: random::url_safe::<32>()?,
            verifier: random::url_safe::<32>()?,
            next: safe_return_path(next).to_owned(),
            exp: Timestamp::now().as_second() + i64::try_from(FLOW_LIFETIME.as_secs()).unwrap_or(600),
        };
        let query = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", self.settings.client_id.as_str()),
            ("redirect_uri", self.settings.redirect_uri.as_str()),
            ("scope", "openid email profile"),
            ("state", flow.state.as_str()),
            ("nonce", flow.nonce.as_str()),
            ("code_challenge", pkce_challenge(&flow.verifier).as_str()),
            ("code_challenge_method", "S256"),
        ])
        .expect("strings encode");
        let separator = if provider.authorization_endpoint.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}{query}", provider.authorization_endpoint);
        Ok((url, flow_cookie(config, &flow.seal(keys), Some(FLOW_LIFETIME))))
    }

    /// Marks `state` used; `false` if it was already.
    fn consume_state(&self, state: &str, until: i64, now: i64) -> bool {
        let mut used = self.used_states.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        used.retain(|_, expiry| *expiry > now);
        used.insert(state.to_owned(), until).is_none()
    }

    /// Checks the provider's answer against this browser's flow, redeems the code and verifies
    /// the ID token: who signed in, and where to go next.
    async fn complete(
        &self,
        keys: &Keys,
        flow_cookie: Option<&str>,
        query: &CallbackQuery,
    ) -> Result<(Identity, String)> {
        let now = Timestamp::now();
        let flow = flow_cookie.and_then(|sealed| Flow::open(keys, sealed, now)).ok_or_else(|| {
            Error::bad_request(format!(
                "This sign-in with {} was not started in this browser, or took longer than {} minutes. Start again \
                 from the sign-in page.",
                self.settings.display_name,
                FLOW_LIFETIME.as_secs() / 60
            ))
        })?;
        if !query.state.as_deref().is_some_and(|state| constant_time_eq(state, &flow.state)) {
            return Err(
                self.refused("the answer does not belong to the sign-in this browser started (state mismatch)".into())
            );
        }
        if !self.consume_state(&flow.state, flow.exp, now.as_second()) {
            return Err(self.refused("this answer was already used".into()));
        }
        if let Some(error) = &query.error {
            let mut said = sanitize(error, 64);
            if let Some(description) = &query.error_description {
                said = format!("{said}: {}", sanitize(description, 200));
            }
            return Err(self.refused(format!("the provider answered {said}")));
        }
        let code = query
            .code
            .as_deref()
            .filter(|code| !code.is_empty())
            .ok_or_else(|| self.refused("the provider's answer has no code".into()))?;
        let provider = self.provider().await?;
        let id_token = self.redeem(&provider, code, &flow.verifier).await?;
        let claims = self.verify(&provider, &id_token, &flow.nonce).await?;
        let raw_email = claims.email.as_deref().ok_or_else(|| {
            Error::Forbidden(format!(
                "{} did not tell the portal your e-mail address, which your account is found by. Ask your admin to \
                 let the portal read it (scope \"email\").",
                self.settings.display_name
            ))
        })?;
        let email = normalize_email(raw_email).map_err(|_| {
            Error::Forbidden(format!("{} gave an e-mail address the portal cannot use.", self.settings.display_name))
        })?;
        let email_verified = claims.email_verified.as_ref().and_then(|value| match value {
            serde_json::Value::Bool(verified) => Some(*verified),
            serde_json::Value::String(text) => Some(text == "true"),
            _ => None,
        });
        tracing::debug!(subject = %claims.sub, %email, "ID token verified");
        Ok((Identity { email, email_verified, name: claims.name }, flow.next))
    }

    /// Exchanges `code` for tokens at the token endpoint: the ID token.
    async fn redeem(&self, provider: &Provider, code: &str, verifier: &str) -> Result<String> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.settings.redirect_uri.as_str()),
            ("code_verifier", verifier),
            ("client_id", self.settings.client_id.as_str()),
        ];
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(&provider.token_endpoint)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("accept", "application/json");
        if let Some(ClientSecret(secret)) = &self.settings.client_secret {
            if provider.secret_in_form {
                form.push(("client_secret", secret.as_str()));
            } else {
                // RFC 6749 §2.3.1: both parts form-encoded before Basic encoding.
                let encode = |s: &str| serde_urlencoded::to_string([("", s)]).expect("strings encode")[1..].to_owned();
                let basic = STANDARD.encode(format!("{}:{}", encode(&self.settings.client_id), encode(secret)));
                let mut value =
                    HeaderValue::from_str(&format!("Basic {basic}")).expect("base64 is a valid header value");
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
        }
        let body = serde_urlencoded::to_string(&form).expect("strings encode");
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::IdentityProvider(format!("building the token request: {e}")))?;
        let (status, body) = self.fetch(request, "redeeming the code").await?;

        #[derive(Deserialize)]
        struct TokenAnswer {
            id_token: Option<String>,
            error: Option<String>,
        }
        let answer: Option<TokenAnswer> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            let error = answer.and_then(|a| a.error).map_or_else(|| format!("HTTP {status}"), |e| sanitize(&e, 64));
            tracing::warn!(issuer = %self.settings.issuer, %error, "the provider refused to redeem a sign-in code");
            return Err(self.refused(format!("the provider did not accept the sign-in code ({error})")));
        }
        answer
            .and_then(|a| a.id_token)
            .ok_or_else(|| Error::IdentityProvider("the token endpoint answered without an ID token".into()))
    }
}

/// Provider-supplied text fit for a page and a log line: printable, at most `max` characters.
fn sanitize(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// The account `identity` signs in as, under the configured policy: an existing, active account
/// with that address in an allowed domain, or (with `--oidc-accounts create`) a new one.
async fn account_for(state: &AppState, settings: &OidcSettings, identity: &Identity) -> Result<User> {
    let name = &settings.display_name;
    let email = &identity.email;
    if identity.email_verified == Some(false) {
        return Err(Error::Forbidden(format!(
            "{name} has not verified the e-mail address {email}, so it cannot sign you in to the portal."
        )));
    }
    if !settings.domain_allowed(email) {
        return Err(Error::Forbidden(format!(
            "Signing in with {name} is open to addresses at {} only, not {email}.",
            settings.allowed_domains.join(", ")
        )));
    }
    let store = state.store.as_ref();
    if let Some(user) = store.user(email).await? {
        return if account_is_active(&user, Timestamp::now()) {
            Ok(user)
        } else {
            Err(Error::Forbidden(format!("The account {email} is disabled or its access has ended.")))
        };
    }
    if settings.accounts == AccountPolicy::Existing {
        return Err(Error::Forbidden(format!(
            "There is no Deskpod account for {email}. Ask an admin to invite you, then sign in again."
        )));
    }
    let local_part = email.split('@').next().unwrap_or(email);
    let display_name = identity
        .name
        .as_deref()
        .and_then(|name| validate_display_name(name).ok())
        .unwrap_or_else(|| local_part.to_owned());
    let new =
        NewUser { id: email.clone(), display_name, role: GlobalRole::User, password_hash: None, expires_at: None };
    match store.create_user(new).await {
        Ok(user) => {
            audit::record(store, email, AuditAction::UserCreate, email, Outcome::Success, None).await;
            Ok(user)
        }
        // Created by a sign-in running at the same time.
        Err(Error::Conflict { .. }) => {
            store.user(email).await?.ok_or_else(|| Error::NotFound(format!("the account {email} is gone")))
        }
        Err(error) => Err(error),
    }
}

/// Completes a sign-in at the callback: checks the answer against the browser's flow cookie,
/// verifies who signed in, finds (or creates) their account and audits the outcome. The user
/// and where to send them.
pub async fn finish(
    state: &AppState,
    client: &OidcClient,
    headers: &HeaderMap,
    query: &CallbackQuery,
    remote: Option<IpAddr>,
) -> Result<(User, String)> {
    let store = state.store.as_ref();
    let cookie = read_cookie(headers, FLOW_COOKIE);
    let (identity, next) = match client.complete(&state.keys, cookie.as_deref(), query).await {
        Ok(done) => done,
        Err(error) => {
            let outcome = if error.status().is_server_error() { Outcome::Failure } else { Outcome::Denied };
            audit::record(store, "unknown", AuditAction::SignInOidc, &client.settings.issuer, outcome, remote).await;
            state.metrics.sign_in("oidc", SignIn::Failure);
            return Err(error);
        }
    };
    match account_for(state, &client.settings, &identity).await {
        Ok(user) => {
            audit::record(store, &user.id, AuditAction::SignInOidc, &user.id, Outcome::Success, remote).await;
            state.metrics.sign_in("oidc", SignIn::Success);
            Ok((user, next))
        }
        Err(error) => {
            let email = &identity.email;
            audit::record(store, email, AuditAction::SignInOidc, email, Outcome::Denied, remote).await;
            state.metrics.sign_in("oidc", SignIn::Failure);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn keys() -> Keys {
        Keys::from_secret(&[9; 32]).unwrap()
    }

    fn settings(accounts: AccountPolicy, domains: &[&str]) -> Result<Option<OidcSettings>> {
        let args = OidcArgs {
            issuer: Some("https://login.example.com/realms/main".into()),
            client_id: Some("deskpod".into()),
            display_name: "Example SSO".into(),
            accounts,
            allowed_domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        };
        OidcSettings::from_args(&args, &PublicUrl::parse("https://deskpod.example.com").unwrap(), Some("s3cret".into()))
    }

    #[test]
    fn pkce_challenge_matches_rfc_7636() {
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[rstest]
    #[case("https://login.example.com", true)]
    #[case("https://login.example.com/realms/main", true)]
    #[case("http://127.0.0.1:5556/dex", true)]
    #[case("http://localhost:5556", true)]
    #[case("http://[::1]:5556", true)]
    #[case("http://login.example.com", false)]
    #[case("http://127.0.0.1.example.com", false)]
    #[case("ftp://login.example.com", false)]
    #[case("login.example.com", false)]
    fn the_provider_is_reached_over_https_or_loopback_http(#[case] url: &str, #[case] accepted: bool) {
        assert_eq!(provider_url(url).is_ok(), accepted, "{url}");
    }

    #[test]
    fn settings_are_checked() {
        let good = settings(AccountPolicy::Existing, &[]).unwrap().unwrap();
        assert_eq!(good.redirect_uri, "https://deskpod.example.com/auth/oidc/callback");
        assert!(!format!("{good:?}").contains("s3cret"), "the secret never shows in Debug");

        let error = settings(AccountPolicy::Create, &[]).unwrap_err();
        assert!(error.to_string().contains("needs --oidc-allowed-domain"), "{error}");
        let create = settings(AccountPolicy::Create, &["Example.COM", "@corp.example"]).unwrap().unwrap();
        assert_eq!(create.allowed_domains, ["example.com", "corp.example"]);
        assert!(settings(AccountPolicy::Existing, &["not a domain"]).is_err());

        let none = OidcSettings::from_args(&OidcArgs::default(), &PublicUrl::parse("https://x.example").unwrap(), None);
        assert!(none.unwrap().is_none(), "no issuer, no OIDC");
        let plain = OidcArgs {
            issuer: Some("http://login.example.com".into()),
            client_id: Some("deskpod".into()),
            display_name: "SSO".into(),
            ..OidcArgs::default()
        };
        let error = OidcSettings::from_args(&plain, &PublicUrl::parse("https://x.example").unwrap(), None).unwrap_err();
        assert!(error.to_string().contains("must be https://"), "{error}");
    }

    #[rstest]
    #[case(&[], "alice@anything.example", true)]
    #[case(&["example.com"], "alice@example.com", true)]
    #[case(&["example.com"], "alice@sub.example.com", false)]
    #[case(&["example.com"], "alice@example.com.evil.example", false)]
    #[case(&["example.com", "corp.example"], "bob@corp.example", true)]
    fn allowed_domains(#[case] domains: &[&str], #[case] email: &str, #[case] allowed: bool) {
        let settings = settings(AccountPolicy::Existing, domains).unwrap().unwrap();
        assert_eq!(settings.domain_allowed(email), allowed);
    }

    fn flow(exp: i64) -> Flow {
        Flow { state: "s".into(), nonce: "n".into(), verifier: "v".into(), next: "/x".into(), exp }
    }

    #[test]
    fn flow_cookies_open_only_untampered_unexpired_and_under_the_same_key() {
        let now = Timestamp::now();
        let sealed = flow(now.as_second() + 60).seal(&keys());
        assert_eq!(Flow::open(&keys(), &sealed, now), Some(flow(now.as_second() + 60)));

        let (payload, tag) = sealed.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&flow(now.as_second() + 6000)).unwrap());
        assert_eq!(Flow::open(&keys(), &format!("{other}.{tag}"), now), None, "tampered payload");
        assert_eq!(Flow::open(&keys(), &format!("{payload}.{}", URL_SAFE_NO_PAD.encode([0; 32])), now), None);
        assert_eq!(Flow::open(&keys(), payload, now), None, "no signature");
        assert_eq!(Flow::open(&Keys::from_secret(&[8; 32]).unwrap(), &sealed, now), None, "another portal's key");
        let expired = flow(now.as_second() - 1).seal(&keys());
        assert_eq!(Flow::open(&keys(), &expired, now), None, "expired");
    }

    #[test]
    fn a_state_is_consumed_once() {
        let client = OidcClient::new(settings(AccountPolicy::Existing, &[]).unwrap().unwrap()).unwrap();
        assert!(client.consume_state("a", 100, 10));
        assert!(!client.consume_state("a", 100, 20), "a replay");
        assert!(client.consume_state("b", 100, 20));
        assert!(client.consume_state("a", 200, 150), "forgotten only after its flow expired");
    }

    /// An RSA key made with `openssl genrsa 2048` for these tests only; it signs nothing else.
    const TEST_RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCwOb5O68S+uFeL
y/cbiona8j1qtj5NAvbWYMpoRsW5FDfm9ha0eTDBSr/eQS+mUvmXl2i57DofIhzt
3HDro1dmt2SJ8CNDO6HrM7oGBlQ/PAjBGd/44yP3JEPrO9gLEz/inCYTeNuhvaix
xyqDIlRghyYU3iDZKOTDZIHhBTAV404g7lvgvhQOd4EdTt/8/VLCItrzBtaFlQ+a
4ygv5TZIyMRZv+yOR/kZ2XGtHNSqaPq0JcE+b45OEeWsh3tMtARFNzdYNcqXEeIa
wRN29BxnTaOq2qdnrJBd77eAFqxz4ZEmRD39s2p5ea6zUlyobpW8pZGTh+y45vqb
50Zg8CYPAgMBAAECggEAPzJuB6Jwe47jQmyCcRuFJYISuWaiv/5so+OxIqUiuiVA
iPC+orkFXYQfe6Z33pdKD+2J7ocDLvAOXNTdn/uDWAAzq231T2KexhjWQNvbMZQn
dYyAcCKQ3svgGYdsCki8c9lYpEoGxaGc0ihhHAbfKIC/DOO99vK92z57f0VbgbVY
r3vQZm3LNC1esRroL3wxqWzI0EIQ3y+pBRqzZ6peXUiuDb/EDFwP5nNKCaTAWEwI
nCPlz+PQkihdzAvqtQipEpDvuf54nfW3KNTynVKrhngFAdSvK74BZ9PJDl3C5IpU
3fJRvYejku92Sr0J1pKiHiiOT6Rhe3Lh80RDivqwVQKBgQD4maU2/npzSH10zf6U
o2aJpxIX1VJWJRXflnf4hJbs3KeDTXuR3qhYLcU6WJYZlcpwAnCV70KxcvgMYS7W
8hwSuD33uVSXrL0/Cktt0BAG2aYkGq64LFSZfgtpkIlWCGUpWf5d48flCK/gypl/
sayhu2RlCXWOrW/EF545D2/SIwKBgQC1eJjk/Gz9nZNo7bzpJ9bJvdv67E8hIAYl
+LZcQ6wG5+qwqej6yDIbiHL0E09b7c+QdbenNpsd2flqwM7mDscsDprL/K7yAKPj
ol+u2mSRXcw7vi9KE2H5ENcnLyZTJLWzZ6hD0sb4cT1s4Hp3APsC3rOqOaq+/VFe
Qv5etakNJQKBgEIb+ceKHN4TZOlu7khwu4/XkgQsglzON+bhiL3Z5JjQhOtx6257
G6F3an99l0zufIsU2wPEQKQXwsboASC/+Z8wx6nc6xX6pcjh3/Uv41MvBfOL9PKd
N1IqJrbH7P2n9d7tQ6uMK1hI2xyYRAGlKhdIUgZcYZqznIk1Dqp15HKpAoGAXrGd
Zu/pl7XgNALKbwfg5sjxv1AMQobJbosH7cFKRRhDuQgQkLximUdsZLymzpubkhA7
U0AFVWBm7DPMQvQ3LmA4mnUyfQmke6ZBM6a2j7xYVFx7pLXUi/kjrEjIQN6JCiLv
BOU5+m5s1SGWBf82/FplelA5LwxUp1FiFt3IZxkCgYB1LsOJ+2UNQnB4F/uwfD8z
AWu43L1Mtn/XU5xDmCwfxb8D+kDFy1MR7erIU8P74tYkXWGEa8HzwgwAo5Ed41k+
Xv2cCuqKSoUTyNezbhwlbnwraHKa5YAwY81yV2Gp7yNTm+qt/VwZplK1zb1zzUb2
oQZOVTi6rL+epZY3JRLNDQ==
-----END PRIVATE KEY-----
";

    /// The test key's public half as a JWK with key id `kid` and, if given, `alg`.
    fn test_jwk(kid: &str, alg: Option<&str>) -> serde_json::Value {
        let private = jsonwebtoken::EncodingKey::from_rsa_pem(TEST_RSA_PRIVATE.as_bytes()).unwrap();
        let public = Jwk::from_encoding_key(&private, Algorithm::RS256).unwrap();
        let mut jwk = serde_json::to_value(public).unwrap();
        jwk["kid"] = kid.into();
        match alg {
            Some(alg) => jwk["alg"] = alg.into(),
            None => {
                jwk.as_object_mut().unwrap().remove("alg");
            }
        }
        jwk
    }

    fn key_set(keys: &[serde_json::Value]) -> KeySet {
        KeySet::parse(serde_json::json!({ "keys": keys }).to_string().as_bytes()).unwrap()
    }

    fn claims(change: &str) -> serde_json::Value {
        let now = Timestamp::now().as_second();
        let mut claims = serde_json::json!({
            "iss": "https://login.example.com/realms/main",
            "aud": "deskpod",
            "sub": "u-1",
            "exp": now + 300,
            "iat": now,
            "nonce": "the-nonce",
            "email": "Alice@Example.com",
            "email_verified": true,
        });
        match change {
            "valid" => {}
            "wrong-iss" => claims["iss"] = "https://evil.example.com".into(),
            "wrong-aud" => claims["aud"] = "another-client".into(),
            "several-aud-no-azp" => claims["aud"] = serde_json::json!(["deskpod", "other"]),
            "several-aud-azp" => {
                claims["aud"] = serde_json::json!(["deskpod", "other"]);
                claims["azp"] = "deskpod".into();
            }
            "expired" => claims["exp"] = (now - 120).into(),
            "not-yet" => claims["nbf"] = (now + 600).into(),
            "wrong-nonce" => claims["nonce"] = "another-nonce".into(),
            "no-nonce" => {
                claims.as_object_mut().unwrap().remove("nonce");
            }
            "no-exp" => {
                claims.as_object_mut().unwrap().remove("exp");
            }
            other => panic!("no claims change {other}"),
        }
        claims
    }

    fn rs256(kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(TEST_RSA_PRIVATE.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    fn token(kind: &str) -> String {
        match kind {
            "alg-none" => {
                format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "kid": "k1"})), b64(&claims("valid")))
            }
            "hs256-with-public-key" => {
                // Algorithm confusion: an HMAC keyed with the provider's public key material.
                let jwk = test_jwk("k1", None);
                let n = jwk["n"].as_str().unwrap().to_owned();
                let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
                header.kid = Some("k1".into());
                jsonwebtoken::encode(&header, &claims("valid"), &jsonwebtoken::EncodingKey::from_secret(n.as_bytes()))
                    .unwrap()
            }
            "tampered" => {
                let genuine = rs256(Some("k1"), &claims("valid"));
                let mut parts = genuine.split('.');
                let (header, _, signature) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
                let mut forged = claims("valid");
                forged["email"] = "admin@example.com".into();
                format!("{header}.{}.{signature}", b64(&forged))
            }
            "unknown-kid" => rs256(Some("k9"), &claims("valid")),
            "no-kid" => rs256(None, &claims("valid")),
            "garbage" => "not-a-jwt".into(),
            change => rs256(Some("k1"), &claims(change)),
        }
    }

    #[rstest]
    #[case::valid("valid", Ok(()))]
    #[case::without_kid_one_key("no-kid", Ok(()))]
    #[case::several_audiences_authorized("several-aud-azp", Ok(()))]
    #[case::alg_none("alg-none", Err("not a signed JWT"))]
    #[case::hmac_confusion("hs256-with-public-key", Err("signed with HS256"))]
    #[case::tampered("tampered", Err("signature does not verify"))]
    #[case::unknown_kid("unknown-kid", Err("unknown key"))]
    #[case::wrong_issuer("wrong-iss", Err("another issuer"))]
    #[case::wrong_audience("wrong-aud", Err("another client"))]
    #[case::several_audiences_unauthorized("several-aud-no-azp", Err("several clients"))]
    #[case::expired("expired", Err("expired"))]
    #[case::not_yet_valid("not-yet", Err("not valid yet"))]
    #[case::wrong_nonce("wrong-nonce", Err("nonce"))]
    #[case::no_nonce("no-nonce", Err("nonce"))]
    #[case::no_expiry("no-exp", Err("required claim"))]
    #[case::garbage("garbage", Err("not a signed JWT"))]
    fn only_id_tokens_from_the_provider_for_this_sign_in_verify(
        #[case] kind: &str,
        #[case] expected: std::result::Result<(), &str>,
    ) {
        let set = key_set(&[test_jwk("k1", Some("RS256"))]);
        let expect = Expected {
            issuer: "https://login.example.com/realms/main",
            client_id: "deskpod",
            nonce: "the-nonce",
            algorithms: &[Algorithm::RS256],
        };
        let outcome = verify_id_token(&token(kind), &set, &expect);
        match (outcome, expected) {
            (Ok(claims), Ok(())) => assert_eq!(claims.email.as_deref(), Some("Alice@Example.com")),
            (Err(TokenError::UnknownKey), Err(want)) => assert_eq!(want, "unknown key", "{kind}"),
            (Err(TokenError::Invalid(why)), Err(want)) => assert!(why.contains(want), "{kind}: {why}"),
            (got, want) => panic!("{kind}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn a_key_must_fit_the_algorithm() {
        let token = token("valid");
        let expect = |algorithms: &'static [Algorithm]| Expected {
            issuer: "https://login.example.com/realms/main",
            client_id: "deskpod",
            nonce: "the-nonce",
            algorithms,
        };
        // The key says it is for RS512: a token signed with RS256 does not get to use it.
        let set = key_set(&[test_jwk("k1", Some("RS512"))]);
        assert_eq!(verify_id_token(&token, &set, &expect(&[Algorithm::RS256])).unwrap_err(), TokenError::UnknownKey);
        // A provider that does not advertise RS256.
        let set = key_set(&[test_jwk("k1", None)]);
        assert!(matches!(verify_id_token(&token, &set, &expect(&[Algorithm::ES256])), Err(TokenError::Invalid(_))));
        // An encryption key with the right id is not a signing key.
        let mut encryption = test_jwk("k1", None);
        encryption["use"] = "enc".into();
        let set = key_set(&[encryption]);
        assert_eq!(verify_id_token(&token, &set, &expect(&[Algorithm::RS256])).unwrap_err(), TokenError::UnknownKey);
        // Keys the portal cannot read are skipped, not fatal.
        let set = key_set(&[serde_json::json!({"kty": "weird", "kid": "x"}), test_jwk("k1", None)]);
        assert!(verify_id_token(&token, &set, &expect(&[Algorithm::RS256])).is_ok());
    }

    #[test]
    fn discovery_pins_the_issuer_and_the_algorithms() {
        let settings = settings(AccountPolicy::Existing, &[]).unwrap().unwrap();
        let doc = |issuer: &str, algs: &[&str], token_url: &str| Discovery {
            issuer: issuer.into(),
            authorization_endpoint: "https://login.example.com/auth".into(),
            token_endpoint: token_url.into(),
            jwks_uri: "https://login.example.com/keys".into(),
            id_token_signing_alg_values_supported: algs.iter().map(|a| (*a).to_owned()).collect(),
            token_endpoint_auth_methods_supported: None,
            code_challenge_methods_supported: Some(vec!["plain".into(), "S256".into()]),
        };
        let issuer = "https://login.example.com/realms/main";
        let provider = Provider::from_discovery(
            &settings,
            doc(issuer, &["RS256", "HS256", "none"], "https://login.example.com/token"),
        )
        .unwrap();
        assert_eq!(provider.algorithms, [Algorithm::RS256], "never HMAC or none");
        assert!(!provider.secret_in_form, "HTTP Basic unless the provider says otherwise");
        assert!(
            Provider::from_discovery(
                &settings,
                doc("https://evil.example.com", &["RS256"], "https://login.example.com/token")
            )
            .is_err()
        );
        assert!(
            Provider::from_discovery(&settings, doc(issuer, &["HS256"], "https://login.example.com/token")).is_err()
        );
        assert!(
            Provider::from_discovery(&settings, doc(issuer, &["RS256"], "http://login.example.com/token")).is_err()
        );
    }
}
