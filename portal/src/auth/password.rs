//! Passwords: argon2id hashes (the crate's defaults: 19 MiB, 2 passes, 1 lane), hashed and
//! checked on the blocking pool because each takes tens of milliseconds.

use std::sync::LazyLock;

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

use crate::error::{Error, Result};
use crate::random;

/// The shortest password accepted, in characters.
pub const MIN_LEN: usize = 12;
/// The longest password accepted, in bytes (so hashing cost stays bounded).
pub const MAX_BYTES: usize = 1024;

/// A hash no password matches, checked when there is no account so that a wrong e-mail costs
/// as long as a wrong password and response times do not tell which accounts exist.
static NO_ACCOUNT_HASH: LazyLock<String> =
    LazyLock::new(|| hash_blocking("no account has this password").expect("hashing a constant"));

/// Refuses a new password that is too short or too long, saying why.
pub fn check_new(password: &str) -> Result<()> {
    let chars = password.chars().count();
    if chars < MIN_LEN {
        return Err(Error::invalid("password", format!("the password must be at least {MIN_LEN} characters long")));
    }
    if password.len() > MAX_BYTES {
        return Err(Error::invalid("password", format!("the password must be at most {MAX_BYTES} bytes long")));
    }
    Ok(())
}

/// The argon2id PHC string for `password`, with a random salt.
pub fn hash_blocking(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random::bytes::<16>()?).map_err(|e| Error::PasswordHash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::PasswordHash(e.to_string()))
}

/// Whether `password` matches `hash`; a hash that does not parse matches nothing.
pub fn verify_blocking(password: &str, hash: &str) -> bool {
    if password.len() > MAX_BYTES {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// [`hash_blocking`] on the blocking pool.
pub async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_blocking(&password)).await?
}

/// [`verify_blocking`] on the blocking pool; with no hash (no account, or one without a
/// password) it checks a dummy hash and answers `false`, taking the same time.
pub async fn verify(password: String, hash: Option<String>) -> Result<bool> {
    tokio::task::spawn_blocking(move || match hash {
        Some(hash) => verify_blocking(&password, &hash),
        None => {
            verify_blocking(&password, &NO_ACCOUNT_HASH);
            false
        }
    })
    .await
    .map_err(Error::from)
}

/// A password for a generated account: 24 characters of URL-safe base64 (144 random bits).
pub fn generate() -> Result<String> {
    random::url_safe::<18>()
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::empty("", false)]
    #[case::eleven("abcdefghijk", false)]
    #[case::twelve("abcdefghijkl", true)]
    #[case::twelve_multibyte("äöüäöüäöüäöü", true)]
    #[case::eleven_multibyte("äöüäöüäöüäö", false)]
    fn new_passwords_need_twelve_characters(#[case] password: &str, #[case] accepted: bool) {
        let checked = check_new(password);
        assert_eq!(checked.is_ok(), accepted, "{checked:?}");
        if let Err(error) = checked {
            assert_eq!(error.to_string(), "the password must be at least 12 characters long");
            assert_eq!(error.field(), Some("password"));
        }
    }

    #[test]
    fn very_long_passwords_are_refused() {
        assert!(check_new(&"x".repeat(MAX_BYTES + 1)).is_err());
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hashed = hash("correct horse battery".into()).await.unwrap();
        assert!(hashed.starts_with("$argon2id$"), "{hashed}");
        assert!(!hashed.contains("correct horse"));
        assert!(verify("correct horse battery".into(), Some(hashed.clone())).await.unwrap());
        assert!(!verify("correct horse batterY".into(), Some(hashed.clone())).await.unwrap());
        assert!(!verify("correct horse battery".into(), None).await.unwrap());
        assert!(!verify("anything".into(), Some("not a hash".into())).await.unwrap());
        assert_ne!(hashed, hash("correct horse battery".into()).await.unwrap(), "salts differ");
    }

    #[test]
    fn generated_passwords_are_long_enough_and_differ() {
        let password = generate().unwrap();
        assert!(check_new(&password).is_ok());
        assert_eq!(password.len(), 24);
        assert_ne!(password, generate().unwrap());
    }
}
