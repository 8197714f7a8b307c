//! CSRF tokens: an HMAC of what the token is bound to, under a key derived from the signing key.
//!
//! Signed-in forms are bound to the session id (`jti`), so a token is useless with any other
//! session. Forms shown before sign-in (sign-in, invite) are bound to a random value in the
//! `deskpod_csrf` cookie (a "pre-session"), which stops another site from signing a browser in
//! to an account of its choosing. JSON requests that authenticate with the session cookie send
//! the token in the `X-CSRF-Token` header; requests with an API token need none.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Keys;

/// The hidden form field that carries the token.
pub const CSRF_FIELD: &str = "csrf";
/// The header JSON requests authenticated by cookie carry the token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The cookie holding the random value pre-sign-in forms are bound to.
pub const PRE_SESSION_COOKIE: &str = "deskpod_csrf";

/// What a CSRF token is bound to.
#[derive(Clone, Copy, Debug)]
pub enum CsrfBinding<'a> {
    /// A signed-in session, by its id.
    Session(&'a str),
    /// A browser before sign-in, by its `deskpod_csrf` cookie.
    PreSession(&'a str),
}

impl Keys {
    fn csrf_mac(&self, binding: CsrfBinding<'_>) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.csrf).expect("HMAC takes keys of any length");
        match binding {
            CsrfBinding::Session(jti) => {
                mac.update(b"session\0");
                mac.update(jti.as_bytes());
            }
            CsrfBinding::PreSession(value) => {
                mac.update(b"pre-session\0");
                mac.update(value.as_bytes());
            }
        }
        mac
    }

    /// The CSRF token for `binding`.
    pub fn csrf_token(&self, binding: CsrfBinding<'_>) -> String {
        URL_SAFE_NO_PAD.encode(self.csrf_mac(binding).finalize().into_bytes())
    }

    /// Whether `presented` is the CSRF token for `binding` (compared in constant time).
    pub fn verify_csrf(&self, binding: CsrfBinding<'_>, presented: &str) -> bool {
        URL_SAFE_NO_PAD.decode(presented).is_ok_and(|tag| self.csrf_mac(binding).verify_slice(&tag).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn keys() -> Keys {
        Keys::from_secret(&[7; 32]).unwrap()
    }

    #[test]
    fn a_token_verifies_for_its_own_binding() {
        let keys = keys();
        let token = keys.csrf_token(CsrfBinding::Session("jti-1"));
        assert!(keys.verify_csrf(CsrfBinding::Session("jti-1"), &token));
    }

    #[rstest]
    #[case::other_session(CsrfBinding::Session("jti-2"), None)]
    #[case::pre_session_with_same_value(CsrfBinding::PreSession("jti-1"), None)]
    #[case::empty(CsrfBinding::Session("jti-1"), Some(""))]
    #[case::not_base64(CsrfBinding::Session("jti-1"), Some("%%%"))]
    #[case::truncated(CsrfBinding::Session("jti-1"), Some("truncate"))]
    fn a_token_is_refused_elsewhere(#[case] binding: CsrfBinding<'static>, #[case] presented: Option<&str>) {
        let keys = keys();
        let genuine = keys.csrf_token(CsrfBinding::Session("jti-1"));
        let presented = match presented {
            Some("truncate") => genuine[..genuine.len() - 2].to_owned(),
            Some(other) => other.to_owned(),
            None => genuine,
        };
        assert!(!keys.verify_csrf(binding, &presented));
    }

    #[test]
    fn another_signing_key_gives_other_tokens() {
        let other = Keys::from_secret(&[8; 32]).unwrap();
        let token = keys().csrf_token(CsrfBinding::Session("jti-1"));
        assert!(!other.verify_csrf(CsrfBinding::Session("jti-1"), &token));
    }
}
