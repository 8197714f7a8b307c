//! Passwords: argon2id hashes (the crate's defaults: 19 MiB, 2 passes, 1 lane), hashed and
//! checked off the async threads because each takes tens of milliseconds.
//!
//! Sign-in checks go through a [`VerifyGate`]: at most half as many at once as the machine has
//! cores (at least one) and a short queue, so anonymous sign-in attempts can neither take every
//! core nor 19 MiB each without bound; an attempt that finds the queue full, or waits too long
//! for its turn, is turned away (429).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use argon2::password_hash::SaltString;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

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

/// [`verify_blocking`] computing in `memory`, which is grown to what the hash's parameters need
/// and kept for the next check, instead of allocating 19 MiB for each.
fn verify_in(password: &str, hash: &str, memory: &mut Vec<Block>) -> bool {
    if password.len() > MAX_BYTES {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else { return false };
    let Ok(version) = parsed.version.map_or(Ok(Version::default()), Version::try_from) else { return false };
    let Ok(params) = Params::try_from(&parsed) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let mut output = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut output, memory.as_mut_slice())
        .is_ok()
        // Output compares in constant time.
        && argon2::password_hash::Output::new(&output).is_ok_and(|computed| computed == expected)
}

/// [`verify_now`] in `memory` (see [`verify_in`]).
fn verify_now_in(password: &str, hash: Option<&str>, memory: &mut Vec<Block>) -> bool {
    match hash {
        Some(hash) => verify_in(password, hash, memory),
        None => {
            verify_in(password, &NO_ACCOUNT_HASH, memory);
            false
        }
    }
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
/// Checks run on `size` threads of the gate's own, not on the blocking pool: each argon2id check
/// takes a 19 MiB buffer, and the allocator keeps such a buffer in the arena of the thread that
/// freed it, so checks spread over the blocking pool's many threads left hundreds of MiB behind.
/// On a few threads of its own, the memory is reused. At most `queue` more checks wait for a
/// thread, each at most `wait`; an attempt that finds the queue full is turned away at once.
pub struct VerifyGate {
    admitted: Arc<Semaphore>,
    jobs: std::sync::mpsc::Sender<Job>,
    size: usize,
    wait: Duration,
}

/// Work for the gate's threads, given the thread's argon2 memory: skipped (dropped unrun) once
/// `deadline` has passed.
struct Job {
    deadline: std::time::Instant,
    work: Box<dyn FnOnce(&mut ArgonMemory) + Send>,
}

/// The memory one argon2 computation works in.
type ArgonMemory = Vec<Block>;

impl VerifyGate {
    /// How long a check waits for its turn by default.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);
    /// How many checks may wait per running one by default.
    pub const DEFAULT_QUEUE_PER_SLOT: usize = 4;
    /// What a turned-away attempt is told to wait before trying again.
    pub const RETRY_AFTER: Duration = Duration::from_secs(1);

    /// At most `size` checks at once (on `size` threads, which end with the gate) and `queue`
    /// waiting; one that cannot start within `wait` is not done.
    pub fn new(size: usize, queue: usize, wait: Duration) -> Self {
        let size = size.max(1);
        let (jobs, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        for index in 0..size {
            let receiver = Arc::clone(&receiver);
            let spawned = std::thread::Builder::new().name(format!("password-check-{index}")).spawn(move || {
                let mut memory = Vec::new();
                loop {
                    let next = receiver.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
                    let Ok(job) = next else { return };
                    if std::time::Instant::now() <= job.deadline {
                        (job.work)(&mut memory);
                    }
                }
            });
            if let Err(error) = spawned {
                tracing::error!(%error, "could not start a password check thread");
            }
        }
        Self { admitted: Arc::new(Semaphore::new(size + queue)), jobs, size, wait }
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

    /// Runs `work` on one of the gate's threads, if a place in the queue is free now and a thread
    /// within the wait: `None` otherwise (`work` was not run). The place is held by the job, so it
    /// stays taken until `work` is done even if the caller is dropped meanwhile.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static) -> Option<T> {
        let admitted = self.admitted.clone().try_acquire_owned().ok()?;
        let (started, starting) = tokio::sync::oneshot::channel();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let work = Box::new(move |memory: &mut Vec<Block>| {
            let _ = started.send(());
            let result = work(memory);
            drop(admitted);
            let _ = reply.send(result);
        });
        let deadline = std::time::Instant::now() + self.wait;
        self.jobs.send(Job { deadline, work }).ok()?;
        // A thread takes the job before the deadline, or the job is skipped when one gets to it.
        match tokio::time::timeout_at(deadline.into(), starting).await {
            Ok(Ok(())) => answer.await.ok(),
            _ => None,
        }
    }

    /// [`verify`] on one of the gate's threads: `None` when the queue was full or no thread was
    /// free within the wait (nothing was checked).
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<Option<bool>> {
        Ok(self.run(move |memory| verify_now_in(&password, hash.as_deref(), memory)).await)
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

    /// Occupies the gate's only thread until the returned sender is dropped.
    async fn occupy(gate: &Arc<VerifyGate>) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<Option<()>>) {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let held = tokio::spawn({
            let gate = Arc::clone(gate);
            async move {
                gate.run(move |_| {
                    let _ = started.send(());
                    let _ = released.recv();
                })
                .await
            }
        });
        running.await.unwrap();
        (release, held)
    }

    #[test]
    fn checking_in_reused_memory_answers_as_the_crate_does() {
        let mut memory = Vec::new();
        let first = hash_blocking("correct horse battery").unwrap();
        let second = hash_blocking("another long password").unwrap();
        let small = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(64, 1, 1, Some(16)).unwrap())
            .hash_password(b"tiny memory hash", &SaltString::encode_b64(&[7; 16]).unwrap())
            .unwrap()
            .to_string();
        for _ in 0..2 {
            for (password, hash) in [
                ("correct horse battery", &first),
                ("correct horse batterY", &first),
                ("another long password", &second),
                ("correct horse battery", &second),
                ("tiny memory hash", &small),
                ("tiny memory hasH", &small),
                ("anything", &"not a hash".to_owned()),
            ] {
                assert_eq!(
                    verify_in(password, hash, &mut memory),
                    verify_blocking(password, hash),
                    "{password} {hash}"
                );
            }
        }
        assert!(verify_in("correct horse battery", &first, &mut memory));
        assert_eq!(memory.len(), Params::DEFAULT_M_COST as usize, "the memory is kept, at the largest size needed");
        assert!(!verify_now_in("correct horse battery", None, &mut memory));
    }

    #[tokio::test]
    async fn the_gate_turns_away_checks_that_cannot_start_in_time() {
        let hashed = hash("correct horse battery".into()).await.unwrap();
        let gate = Arc::new(VerifyGate::new(1, 1, Duration::from_millis(300)));
        let (release, held) = occupy(&gate).await;
        assert_eq!(gate.verify("correct horse battery".into(), Some(hashed.clone())).await.unwrap(), None);
        drop(release);
        held.await.unwrap().unwrap();
        // The thread skips the check that gave up waiting, which gives its place back.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while gate.admitted.available_permits() < 2 {
            assert!(std::time::Instant::now() < deadline, "the skipped check kept its place");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(gate.verify("correct horse battery".into(), Some(hashed.clone())).await.unwrap(), Some(true));
        assert_eq!(gate.verify("wrong".into(), Some(hashed)).await.unwrap(), Some(false));
        assert_eq!(gate.admitted.available_permits(), 2, "every place in the queue is given back");
        assert!(VerifyGate::sized_to_this_machine().size() >= 1);
    }

    #[tokio::test]
    async fn a_full_queue_turns_checks_away_at_once() {
        let gate = Arc::new(VerifyGate::new(1, 1, Duration::from_secs(3600)));
        // One check running and one waiting: the whole gate.
        let (release, held) = occupy(&gate).await;
        let waiting = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.verify("anything".into(), None).await.unwrap() }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while gate.admitted.available_permits() > 0 {
            assert!(std::time::Instant::now() < deadline, "the second check never queued");
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        assert_eq!(gate.verify("anything".into(), None).await.unwrap(), None);
        assert!(started.elapsed() < Duration::from_secs(1), "not queued: {:?}", started.elapsed());
        drop(release);
        held.await.unwrap().unwrap();
        assert_eq!(waiting.await.unwrap(), Some(false), "the queued check ran once a thread was free");
    }

    #[test]
    fn generated_passwords_are_long_enough_and_differ() {
        let password = generate().unwrap();
        assert!(check_new(&password).is_ok());
        assert_eq!(password.len(), 24);
        assert_ne!(password, generate().unwrap());
    }
}
