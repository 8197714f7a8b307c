//! Passwords: argon2id hashes (the crate's defaults: 19 MiB, 2 passes, 1 lane), hashed and
//! checked on the blocking pool because each takes tens of milliseconds.
//!
//! Sign-in checks go through a [`VerifyGate`]: at most half as many at once as the machine has
//! cores (at least one) and a short queue, so anonymous sign-in attempts can neither take every
//! core nor 19 MiB each without bound; an attempt that finds the queue full, or waits too long
//! for its turn, is turned away (429).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::sync::Semaphore;

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
    tokio::task::spawn_blocking(move || verify_now(&password, hash.as_deref())).await.map_err(Error::from)
}

fn verify_now(password: &str, hash: Option<&str>) -> bool {
    match hash {
        Some(hash) => verify_blocking(password, hash),
        None => {
            verify_blocking(password, &NO_ACCOUNT_HASH);
            false
        }
    }
}

/// A cap on the password checks that run at once, with a short, bounded queue in front.
///
/// At most `size` checks run; at most `queue` more wait for their turn, each for at most `wait`.
/// An attempt that finds the queue full is turned away at once, so a flood of sign-ins costs
/// neither unbounded memory (19 MiB per running check, a few bytes per waiting one) nor time.
pub struct VerifyGate {
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
    size: usize,
    wait: Duration,
}

impl VerifyGate {
    /// How long a check waits for its turn by default.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);
    /// How many checks may wait per running one by default.
    pub const DEFAULT_QUEUE_PER_SLOT: usize = 4;
    /// What a turned-away attempt is told to wait before trying again.
    pub const RETRY_AFTER: Duration = Duration::from_secs(1);

    /// At most `size` checks at once and `queue` waiting; one that cannot start within `wait`
    /// is not done.
    pub fn new(size: usize, queue: usize, wait: Duration) -> Self {
        let size = size.max(1);
        Self { running: Arc::new(Semaphore::new(size)), admitted: Arc::new(Semaphore::new(size + queue)), size, wait }
    }

    /// Half as many checks at once as this machine has cores (at least one), leaving the rest
    /// to answer everything else while sign-ins are flooded; four waiting per running check.
    pub fn sized_to_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let size = cores.div_ceil(2);
        Self::new(size, size * Self::DEFAULT_QUEUE_PER_SLOT, Self::DEFAULT_WAIT)
    }

    /// How many checks run at once at most.
    pub fn size(&self) -> usize {
        self.size
    }

    /// [`verify`] once a turn is free: `None` when the queue was full or no turn came within the
    /// wait (nothing was checked). The turn is held by the check itself, so it stays taken until
    /// the hash is computed even if the request that asked is dropped meanwhile.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<Option<bool>> {
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let Ok(Ok(permit)) = tokio::time::timeout(self.wait, self.running.clone().acquire_owned()).await else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || {
            let matches = verify_now(&password, hash.as_deref());
            drop((permit, admitted));
            Some(matches)
        })
        .await
        .map_err(Error::from)
    }
}

impl Default for VerifyGate {
    fn default() -> Self {
        Self::sized_to_this_machine()
    }
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

    #[tokio::test]
    async fn the_gate_turns_away_checks_that_cannot_start_in_time() {
        let hashed = hash("correct horse battery".into()).await.unwrap();
        let gate = VerifyGate::new(1, 1, Duration::from_millis(1));
        // Hold the only turn, as a long check would.
        let held = gate.running.clone().acquire_owned().await.unwrap();
        assert_eq!(gate.verify("correct horse battery".into(), Some(hashed.clone())).await.unwrap(), None);
        drop(held);
        assert_eq!(gate.verify("correct horse battery".into(), Some(hashed.clone())).await.unwrap(), Some(true));
        assert_eq!(gate.verify("wrong".into(), Some(hashed)).await.unwrap(), Some(false));
        assert_eq!(gate.running.available_permits(), 1, "every turn is given back");
        assert_eq!(gate.admitted.available_permits(), 2, "every place in the queue is given back");
        assert!(VerifyGate::sized_to_this_machine().size() >= 1);
    }

    #[tokio::test]
    async fn a_full_queue_turns_checks_away_at_once() {
        let gate = VerifyGate::new(1, 1, Duration::from_secs(3600));
        // One check running and one waiting: the whole gate.
        let _running = gate.running.clone().acquire_owned().await.unwrap();
        let _waiting = gate.admitted.clone().acquire_many_owned(2).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(gate.verify("anything".into(), None).await.unwrap(), None);
        assert!(started.elapsed() < Duration::from_secs(1), "not queued: {:?}", started.elapsed());
    }

    #[test]
    fn generated_passwords_are_long_enough_and_differ() {
        let password = generate().unwrap();
        assert!(check_new(&password).is_ok());
        assert_eq!(password.len(), 24);
        assert_ne!(password, generate().unwrap());
    }
}
