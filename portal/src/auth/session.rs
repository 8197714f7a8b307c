//! Sessions: an HS256 JWT in the `deskpod_session` cookie (HttpOnly, SameSite=Lax, Path=/,
//! Secure unless the portal is plain http on localhost).
//!
//! A session is accepted only if its signature is HS256 under the portal's key (no other
//! algorithm, and never `none`), it has not expired (no leeway: the portal issues and checks
//! with the same clock), it was not signed out (its `jti` is in the revoked list until it would
//! have expired), and its user still exists, is not disabled and is not a contractor past expiry.

use std::time::Duration;

use axum::http::HeaderValue;
use cookie::{Cookie, SameSite};
use jiff::Timestamp;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::Keys;
use crate::authz::account_is_active;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::random;
use crate::state::AppState;
use crate::store::{Store, User};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "deskpod_session";

/// What the portal tells someone whose session is not (or no longer) valid.
pub const SESSION_ENDED: &str = "Your session has ended; sign in again.";

/// The JWT's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// The session id: what sign-out revokes and CSRF tokens are bound to.
    pub jti: String,
}

impl Claims {
    /// When the session expires.
    pub fn expires_at(&self) -> Timestamp {
        Timestamp::from_second(self.exp).unwrap_or(Timestamp::MAX)
    }
}

/// A valid session and its user.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: User,
    pub claims: Claims,
}

/// A signed session token for `user_id`, valid for `lifetime` from `now`.
pub fn issue(keys: &Keys, lifetime: Duration, user_id: &str, now: Timestamp) -> Result<(String, Claims)> {
    let claims = Claims {
        sub: user_id.to_owned(),
        iat: now.as_second(),
        exp: now.as_second().saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
        jti: random::url_safe::<16>()?,
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.session_encoding)
        .map_err(Error::SessionSigning)?;
    Ok((token, claims))
}

/// The claims of `token` if it is an unexpired HS256 JWT signed with the portal's key.
pub fn decode(keys: &Keys, token: &str) -> Result<Claims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.algorithms = vec![Algorithm::HS256];
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::decode::<Claims>(token, &keys.session_decoding, &validation).map(|data| data.claims).map_err(|e| {
        tracing::debug!(reason = %e, "session token refused");
        Error::Unauthenticated(SESSION_ENDED.into())
    })
}

/// The session `token` stands for, checked against the store: not signed out, and its user
/// exists and is active at `now`.
pub async fn validate(store: &dyn Store, keys: &Keys, token: &str, now: Timestamp) -> Result<Session> {
    let claims = decode(keys, token)?;
    if store.is_session_revoked(&claims.jti).await? {
        return Err(Error::Unauthenticated(SESSION_ENDED.into()));
    }
    match store.user(&claims.sub).await? {
        Some(user) if account_is_active(&user, now) => Ok(Session { user, claims }),
        _ => Err(Error::Unauthenticated(SESSION_ENDED.into())),
    }
}

/// Starts a session for `user`: the `Set-Cookie` value that carries it.
pub fn start(state: &AppState, user: &User) -> Result<HeaderValue> {
    let (token, _) = issue(&state.keys, state.config.session_lifetime, &user.id, Timestamp::now())?;
    Ok(cookie(&state.config, &token))
}

/// Signs a session out: it stays refused until it would have expired.
pub async fn end(state: &AppState, claims: &Claims) -> Result<()> {
    state.store.revoke_session(claims.jti.clone(), claims.expires_at()).await
}

/// The `Set-Cookie` value carrying a session token.
pub fn cookie(config: &Config, token: &str) -> HeaderValue {
    let lifetime = i64::try_from(config.session_lifetime.as_secs()).unwrap_or(i64::MAX);
    let cookie = Cookie::build((SESSION_COOKIE, token))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(config.public_url.secure_cookies())
        .max_age(cookie::time::Duration::seconds(lifetime))
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("a JWT is a valid header value")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn removal_cookie(config: &Config) -> HeaderValue {
    let cookie = Cookie::build((SESSION_COOKIE, ""))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(config.public_url.secure_cookies())
        .removal()
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("a removal cookie is a valid header value")
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jiff::SignedDuration;
    use rstest::rstest;

    use super::*;
    use crate::store::{GlobalRole, NewUser, SqliteStore};

    const KEY: [u8; 32] = [42; 32];
    const LIFETIME: Duration = Duration::from_secs(3600);

    fn keys() -> Keys {
        Keys::from_secret(&KEY).unwrap()
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn claims_json(sub: &str, exp: i64) -> String {
        let now = Timestamp::now().as_second();
        format!(r#"{{"sub":"{sub}","iat":{now},"exp":{exp},"jti":"j1"}}"#)
    }

    /// Signs `header.payload` with HMAC-SHA256 under `key`, the way an attacker holding a key would.
    fn signed_with(key: &[u8], algorithm: Algorithm, claims: &str) -> String {
        let claims: serde_json::Value = serde_json::from_str(claims).unwrap();
        jsonwebtoken::encode(&Header::new(algorithm), &claims, &jsonwebtoken::EncodingKey::from_secret(key)).unwrap()
    }

    /// Token variants, by name, all for alice.
    fn token(kind: &str) -> String {
        let in_an_hour = Timestamp::now().as_second() + 3600;
        let valid = claims_json("alice@example.com", in_an_hour);
        match kind {
            "valid" => signed_with(&KEY, Algorithm::HS256, &valid),
            "alg-none" => format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&valid)),
            "alg-none-with-signature" => {
                let genuine = signed_with(&KEY, Algorithm::HS256, &valid);
                let signature = genuine.rsplit('.').next().unwrap();
                format!("{}.{}.{signature}", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&valid))
            }
            "hs384-same-key" => signed_with(&KEY, Algorithm::HS384, &valid),
            "hs512-same-key" => signed_with(&KEY, Algorithm::HS512, &valid),
            "wrong-key" => signed_with(&[43; 32], Algorithm::HS256, &valid),
            "expired" => signed_with(&KEY, Algorithm::HS256, &claims_json("alice@example.com", in_an_hour - 3601)),
            "tampered-sub" => {
                let genuine = signed_with(&KEY, Algorithm::HS256, &valid);
                let mut parts = genuine.split('.');
                let (header, _, signature) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
                format!("{header}.{}.{signature}", b64(&claims_json("admin@example.com", in_an_hour)))
            }
            "tampered-exp" => {
                let genuine = signed_with(&KEY, Algorithm::HS256, &valid);
                let mut parts = genuine.split('.');
                let (header, _, signature) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
                format!("{header}.{}.{signature}", b64(&claims_json("alice@example.com", in_an_hour + 86_400)))
            }
            "no-exp" => signed_with(&KEY, Algorithm::HS256, r#"{"sub":"alice@example.com","iat":1,"jti":"j1"}"#),
            "no-jti" => signed_with(
                &KEY,
                Algorithm::HS256,
                &format!(r#"{{"sub":"alice@example.com","iat":1,"exp":{in_an_hour}}}"#),
            ),
            "garbage" => "not.a.jwt".into(),
            "empty" => String::new(),
            other => panic!("no token kind {other}"),
        }
    }

    #[rstest]
    #[case::valid("valid", true)]
    #[case::alg_none("alg-none", false)]
    #[case::alg_none_with_signature("alg-none-with-signature", false)]
    #[case::other_hmac_algorithm("hs384-same-key", false)]
    #[case::another_other_hmac_algorithm("hs512-same-key", false)]
    #[case::wrong_key("wrong-key", false)]
    #[case::expired("expired", false)]
    #[case::tampered_subject("tampered-sub", false)]
    #[case::tampered_expiry("tampered-exp", false)]
    #[case::without_expiry("no-exp", false)]
    #[case::without_session_id("no-jti", false)]
    #[case::garbage("garbage", false)]
    #[case::empty("empty", false)]
    fn only_unexpired_hs256_tokens_under_our_key_decode(#[case] kind: &str, #[case] accepted: bool) {
        match decode(&keys(), &token(kind)) {
            Ok(claims) => {
                assert!(accepted, "{kind} must be refused");
                assert_eq!(claims.sub, "alice@example.com");
            }
            Err(error) => {
                assert!(!accepted, "{kind} must be accepted: {error}");
                assert!(matches!(error, Error::Unauthenticated(_)), "{error:?}");
            }
        }
    }

    #[test]
    fn issued_tokens_decode_to_their_claims_and_carry_no_secret() {
        let now = Timestamp::now();
        let (token, claims) = issue(&keys(), LIFETIME, "alice@example.com", now).unwrap();
        assert_eq!(decode(&keys(), &token).unwrap(), claims);
        assert_eq!(claims.exp - claims.iat, 3600);
        assert_eq!(claims.iat, now.as_second());
        let (_, other) = issue(&keys(), LIFETIME, "alice@example.com", now).unwrap();
        assert_ne!(claims.jti, other.jti, "every session has its own id");
        let header = String::from_utf8(URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert!(header.contains(r#""alg":"HS256""#), "{header}");
    }

    /// What happens to alice's account (or her session) before her valid session is checked.
    #[rstest]
    #[case::valid("nothing", true)]
    #[case::signed_out("signed-out", false)]
    #[case::disabled("disabled", false)]
    #[case::expired_contractor("expired-contractor", false)]
    #[case::contractor_before_expiry("contractor", true)]
    #[case::deleted("deleted", false)]
    #[tokio::test]
    async fn a_session_needs_a_live_account(#[case] change: &str, #[case] accepted: bool) {
        let store = SqliteStore::open_in_memory().unwrap();
        let now = Timestamp::now();
        let expires_at = match change {
            "expired-contractor" => Some(now - SignedDuration::from_secs(1)),
            "contractor" => Some(now + SignedDuration::from_hours(1)),
            _ => None,
        };
        if change != "deleted" {
            let alice = NewUser {
                id: "alice@example.com".into(),
                display_name: "Alice".into(),
                role: GlobalRole::User,
                password_hash: None,
                expires_at,
            };
            store.create_user(alice).await.unwrap();
        }
        let (token, claims) = issue(&keys(), LIFETIME, "alice@example.com", now).unwrap();
        match change {
            "signed-out" => store.revoke_session(claims.jti.clone(), claims.expires_at()).await.unwrap(),
            "disabled" => store.set_disabled("alice@example.com", true).await.unwrap(),
            _ => {}
        }
        match validate(&store, &keys(), &token, now).await {
            Ok(session) => {
                assert!(accepted, "{change}: must be refused");
                assert_eq!(session.user.id, "alice@example.com");
                assert_eq!(session.claims, claims);
            }
            Err(error) => {
                assert!(!accepted, "{change}: must be accepted, got {error}");
                assert!(matches!(error, Error::Unauthenticated(_)), "{error:?}");
            }
        }
    }

    #[rstest]
    #[case::localhost_http("http://localhost:8080", false)]
    #[case::https("https://deskpod.example.com", true)]
    fn the_cookie_has_the_right_attributes(#[case] public_url: &str, #[case] secure: bool) {
        let config = Config::new(crate::PublicUrl::parse(public_url).unwrap());
        let value = cookie(&config, "header.payload.signature");
        let value = value.to_str().unwrap();
        let parsed = Cookie::parse(value).unwrap();
        assert_eq!((parsed.name(), parsed.value()), (SESSION_COOKIE, "header.payload.signature"));
        assert_eq!(parsed.http_only(), Some(true));
        assert_eq!(parsed.same_site(), Some(SameSite::Lax));
        assert_eq!(parsed.path(), Some("/"));
        assert_eq!(parsed.secure().unwrap_or(false), secure, "{value}");
        assert_eq!(parsed.max_age(), Some(cookie::time::Duration::hours(12)));

        let removal = removal_cookie(&config);
        let removal = Cookie::parse(removal.to_str().unwrap().to_owned()).unwrap();
        assert_eq!((removal.name(), removal.value()), (SESSION_COOKIE, ""));
        assert_eq!(removal.max_age(), Some(cookie::time::Duration::ZERO));
    }
}
