//! Who is asking: passwords, JWT sessions, CSRF tokens, the sign-in rate limit, and the
//! extractors handlers take ([`CurrentUser`], [`SessionForm`], [`PublicForm`], [`RemoteAddr`]).
//! Sign-in through an OpenID Connect provider, when configured, is in [`oidc`]; whether a
//! long-lived connection may go on is re-checked by [`access`].
//!
//! One secret of at least 32 bytes signs sessions (HS256) and, through a derived key, CSRF
//! tokens. It comes from `DESKPOD_JWT_KEY` or is generated on first start and kept in the
//! database; [`Keys`] never shows it (its `Debug` is redacted) and nothing puts it in a page,
//! URL or log line.

pub mod access;
mod csrf;
mod extract;
pub mod oidc;
pub mod password;
mod ratelimit;
pub mod session;

use std::fmt;

use hmac::{Hmac, Mac};
use jsonwebtoken::{DecodingKey, EncodingKey};
use sha2::Sha256;

pub use csrf::{CSRF_FIELD, CSRF_HEADER, CsrfBinding, PRE_SESSION_COOKIE};
pub use extract::{
    Auth, AuthRejection, CurrentUser, PreSession, PublicForm, RemoteAddr, SessionForm, safe_return_path,
};
pub use oidc::{OidcArgs, OidcClient};
pub use password::VerifyGate;
pub use ratelimit::{Exhausted, Limit, Refused, SignInLimiter};

use crate::error::{Error, Result};
use crate::random;
use crate::store::Store;

/// The name the generated signing key is stored under.
const SIGNING_KEY_SECRET: &str = "session_signing_key";

/// The key material for sessions and CSRF tokens.
pub struct Keys {
    session_encoding: EncodingKey,
    session_decoding: DecodingKey,
    csrf: [u8; 32],
}

impl Keys {
    /// The shortest signing key accepted, in bytes.
    pub const MIN_LEN: usize = 32;

    /// Keys from a signing secret of at least [`Keys::MIN_LEN`] bytes.
    pub fn from_secret(secret: &[u8]) -> Result<Self> {
        if secret.len() < Self::MIN_LEN {
            return Err(Error::Config(format!(
                "the session signing key must be at least {} bytes, it has {}",
                Self::MIN_LEN,
                secret.len()
            )));
        }
        let mut derive = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        derive.update(b"deskpod csrf v1");
        Ok(Self {
            session_encoding: EncodingKey::from_secret(secret),
            session_decoding: DecodingKey::from_secret(secret),
            csrf: derive.finalize().into_bytes().into(),
        })
    }

    /// The configured key (`DESKPOD_JWT_KEY`) if there is one; otherwise the one kept in the
    /// database, generated and stored on first start.
    pub async fn load(store: &dyn Store, configured: Option<&str>) -> Result<Self> {
        match configured {
            Some(key) => Self::from_secret(key.as_bytes())
                .map_err(|_| Error::Config(format!("DESKPOD_JWT_KEY must be at least {} bytes", Self::MIN_LEN))),
            None => {
                let candidate = random::bytes::<32>()?.to_vec();
                Self::from_secret(&store.secret_or_insert(SIGNING_KEY_SECRET, candidate).await?)
            }
        }
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys { <redacted> }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn a_generated_key_is_kept_and_a_configured_key_wins() {
        let store = SqliteStore::open_in_memory().unwrap();
        let first = Keys::load(&store, None).await.unwrap();
        let second = Keys::load(&store, None).await.unwrap();
        let binding = CsrfBinding::Session("jti");
        assert_eq!(first.csrf_token(binding), second.csrf_token(binding), "the stored key is reused");

        let configured = Keys::load(&store, Some("k".repeat(32).as_str())).await.unwrap();
        assert_ne!(configured.csrf_token(binding), first.csrf_token(binding));

        let short = Keys::load(&store, Some("too short")).await.unwrap_err();
        assert!(short.to_string().contains("at least 32 bytes"), "{short}");
        assert!(!short.to_string().contains("too short"), "the key itself is never in a message");
        assert_eq!(format!("{first:?}"), "Keys { <redacted> }");
    }
}
