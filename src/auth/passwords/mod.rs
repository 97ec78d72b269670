//! Password hashing: argon2id on a fixed set of worker threads, never on the async runtime.
//!
//! The workers reuse argon2 memory buffers (m KiB each, mapped outside the allocator, on huge
//! pages), never more than one per worker, so peak memory is workers × m no matter how many
//! logins arrive: a naive `spawn_blocking` per hash lets the allocator keep a freed 19 MiB block
//! per blocking thread and grows to gigabytes under a flood. A buffer is mapped at the first hash
//! that needs it and unmapped after [`MEMORY_IDLE_RELEASE`] without a hash, so an instance that
//! is not hashing holds none (idle RSS, BENCHMARKS.md). Requests wait their turn on a bounded
//! queue. Legacy bcrypt hashes from the old service verify
//! here too (the candidate trimmed and HTML-escaped as the old service did before hashing), and
//! so do the argon2id hashes they are upgraded to, which keep that transform (see
//! [`LEGACY_ARGON2ID`]).

mod argon2id;
mod legacy;
mod memory;
mod worker;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use argon2::Params;
use secrecy::SecretString;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, oneshot};

use argon2id::phc;
use legacy::{ARGON2ID_PREFIX, LEGACY_ARGON2ID_PREFIX, legacy_transform, uses_legacy_transform};
pub use legacy::{LEGACY_ARGON2ID, legacy_escape};
use memory::MemoryPool;
use worker::Worker;

const SALT_BYTES: usize = 16;
const OUTPUT_BYTES: usize = 32;
/// Jobs waiting for a worker; beyond this, callers wait to enqueue (and the request timeout
/// bounds how long).
const QUEUE_DEPTH: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Valid,
    /// Valid, but stored with a legacy algorithm or weaker parameters: re-hash it now.
    ValidNeedsRehash,
    Invalid,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing is shutting down")]
    Stopped,
    #[error("argon2: {0}")]
    Argon2(String),
    #[error("argon2 memory could not be mapped: {0}")]
    Memory(std::io::Error),
}

enum Job {
    Hash {
        password: SecretString,
        reply: oneshot::Sender<Result<String, HashError>>,
    },
    Verify {
        password: SecretString,
        stored: String,
        reply: oneshot::Sender<Result<Verification, HashError>>,
    },
}

/// How long the hashing threads must have had nothing to do before they give their argon2
/// memory back (19 MiB each at the default cost). A login after that pays about a millisecond to
/// fault a block in again; an instance that hashed once at 9:00 does not hold the memory all day.
pub const MEMORY_IDLE_RELEASE: Duration = Duration::from_secs(10);

/// A job, when it was queued (for the wait-time histogram), and its place in the queue (given
/// back when a worker takes the job).
struct Queued {
    job: Job,
    at: Instant,
    place: OwnedSemaphorePermit,
}

/// What the metrics report about the hashing threads.
#[derive(Debug, Clone, Copy)]
pub struct HashLevels {
    /// Hashes being computed right now.
    pub in_flight: usize,
    /// Jobs waiting for a worker.
    pub queued: usize,
    /// argon2 memory held by the workers, in use or kept for the next hash.
    pub memory_bytes: usize,
}

pub struct PasswordHasher {
    jobs: mpsc::Sender<Queued>,
    /// Places in the queue: a caller waits (asynchronously) for one before it enqueues.
    places: Arc<Semaphore>,
    params: Params,
    dummy_hash: OnceCell<String>,
    in_flight: Arc<AtomicUsize>,
    memory: Arc<MemoryPool>,
}

impl PasswordHasher {
    /// Starts `workers` hashing threads (0 = one per core) with the given argon2id cost. Their
    /// memory is given back after `idle_release` without a job ([`MEMORY_IDLE_RELEASE`]).
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        workers: usize,
        idle_release: Duration,
        wait: prometheus_client::metrics::histogram::Histogram,
    ) -> anyhow::Result<Self> {
        let params = Params::new(memory_kib, iterations, parallelism, Some(OUTPUT_BYTES))
            .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            workers
        };
        let (tx, rx) = mpsc::channel();
        let rx: Arc<Mutex<mpsc::Receiver<Queued>>> = Arc::new(Mutex::new(rx));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let memory = Arc::new(MemoryPool::default());
        for i in 0..workers {
            let worker = Worker {
                jobs: rx.clone(),
                params: params.clone(),
                in_flight: in_flight.clone(),
                memory: memory.clone(),
                idle_release,
                wait: wait.clone(),
            };
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker.run())?;
        }
        Ok(Self {
            jobs: tx,
            places: Arc::new(Semaphore::new(QUEUE_DEPTH)),
            params,
            dummy_hash: OnceCell::new(),
            in_flight,
            memory,
        })
    }

    /// Queues a job once there is a place for it (the wait is bounded by the request timeout).
    async fn submit(&self, job: Job) -> Result<(), HashError> {
        let place = self
            .places
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Stopped)?;
        self.jobs
            .send(Queued {
                job,
                at: Instant::now(),
                place,
            })
            .map_err(|_| HashError::Stopped)
    }

    pub fn levels(&self) -> HashLevels {
        HashLevels {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            queued: QUEUE_DEPTH - self.places.available_permits(),
            memory_bytes: self.memory.bytes.load(Ordering::Relaxed),
        }
    }

    /// The hash that replaces `stored` after `password` verified against it: an old-service hash
    /// (bcrypt, or one already upgraded) is replaced by an argon2id hash of the old service's
    /// transform of the password, marked [`LEGACY_ARGON2ID`], so every form that logged in before
    /// (as typed, and trimmed) still does; any other by a plain argon2id hash at today's cost.
    pub async fn rehash(&self, password: &str, stored: &str) -> Result<String, HashError> {
        if !uses_legacy_transform(stored) {
            return self.hash(password).await;
        }
        let hash = self.hash(&legacy_transform(password)).await?;
        Ok(hash.replacen(ARGON2ID_PREFIX, LEGACY_ARGON2ID_PREFIX, 1))
    }

    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Hash {
            password: SecretString::from(password),
            reply,
        };
        self.submit(job).await?;
        rx.await.map_err(|_| HashError::Stopped)?
    }

    /// Verifies `password` against `stored`; with no stored hash (unknown user, Google-only
    /// account) it verifies against a dummy hash of the same cost and fails, so both paths take
    /// the same time.
    pub async fn verify(
        &self,
        password: &str,
        stored: Option<&str>,
    ) -> Result<Verification, HashError> {
        let (stored, real) = match stored {
            Some(hash) => (hash.to_owned(), true),
            None => (self.dummy_hash().await?.to_owned(), false),
        };
        let (reply, rx) = oneshot::channel();
        let job = Job::Verify {
            password: SecretString::from(password),
            stored,
            reply,
        };
        self.submit(job).await?;
        let verdict = rx.await.map_err(|_| HashError::Stopped)??;
        Ok(if real { verdict } else { Verification::Invalid })
    }

    /// Makes the dummy hash now, so the first login for an unknown email takes no longer than
    /// any other.
    pub async fn prepare(&self) -> Result<(), HashError> {
        self.dummy_hash().await.map(|_| ())
    }

    /// A PHC string with the current cost, a random salt and a random digest. Verifying against
    /// it costs exactly one hash of the current cost and never succeeds, which is all a dummy has
    /// to do; it needs no hashing to make, so start-up stays fast and touches no argon2 memory.
    async fn dummy_hash(&self) -> Result<&str, HashError> {
        self.dummy_hash
            .get_or_try_init(|| async {
                let salt: [u8; SALT_BYTES] = crate::auth::os_random();
                let digest: [u8; OUTPUT_BYTES] = crate::auth::os_random();
                Ok(phc(&self.params, &salt, &digest))
            })
            .await
            .map(String::as_str)
    }

    pub fn params(&self) -> &Params {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use argon2::Argon2;
    use argon2::password_hash::PasswordHash;

    use super::*;

    /// A hasher of `memory_kib` and `iterations` (parallelism 1) on `workers` threads.
    fn hasher_of(
        memory_kib: u32,
        iterations: u32,
        workers: usize,
        idle_release: Duration,
    ) -> PasswordHasher {
        let wait = crate::metrics::Metrics::default().hash_wait_seconds;
        PasswordHasher::new(memory_kib, iterations, 1, workers, idle_release, wait).unwrap()
    }

    fn hasher() -> PasswordHasher {
        // Cheap parameters keep unit tests fast; the integration tests use the real defaults.
        hasher_of(8192, 1, 2, MEMORY_IDLE_RELEASE)
    }

    #[tokio::test]
    async fn a_stored_hash_of_a_larger_cost_does_not_keep_its_memory() {
        let larger = hasher_of(16384, 1, 1, MEMORY_IDLE_RELEASE);
        let stored = larger.hash("a long passphrase").await.unwrap();
        assert_eq!(larger.levels().memory_bytes, 16384 * 1024);
        let h = hasher();
        assert_eq!(
            h.verify("a long passphrase", Some(&stored)).await.unwrap(),
            Verification::Valid
        );
        assert_eq!(h.levels().memory_bytes, 0, "the 16 MiB block is unmapped");
        h.hash("a long passphrase").await.unwrap();
        assert_eq!(h.levels().memory_bytes, 8192 * 1024);
        assert_eq!((h.levels().in_flight, h.levels().queued), (0, 0));
    }

    #[tokio::test]
    async fn idle_workers_give_their_memory_back_and_hash_again() {
        let h = hasher_of(8192, 1, 2, Duration::from_millis(200));
        assert_eq!(h.levels().memory_bytes, 0, "nothing before the first hash");
        let stored = h.hash("correct horse battery").await.unwrap();
        assert_eq!(
            h.levels().memory_bytes,
            8192 * 1024,
            "one worker, one block"
        );
        let started = Instant::now();
        while h.levels().memory_bytes != 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "idle workers still hold {} bytes",
                h.levels().memory_bytes
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            h.verify("correct horse battery", Some(&stored))
                .await
                .unwrap(),
            Verification::Valid
        );
        assert_eq!(h.levels().memory_bytes, 8192 * 1024);
    }

    #[tokio::test]
    async fn hashes_are_phc_argon2id_with_unique_salts_and_verify() {
        let h = hasher();
        let a = h.hash("correct horse battery").await.unwrap();
        let b = h.hash("correct horse battery").await.unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"), "{a}");
        assert_ne!(a, b);
        assert_eq!(
            h.verify("correct horse battery", Some(&a)).await.unwrap(),
            Verification::Valid
        );
        assert_eq!(
            h.verify("correct horse batterY", Some(&a)).await.unwrap(),
            Verification::Invalid
        );
        assert_eq!(
            h.verify("anything", None).await.unwrap(),
            Verification::Invalid
        );
        // The argon2 crate's own verifier accepts what we wrote.
        use argon2::PasswordVerifier;
        let parsed = PasswordHash::new(&a).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse battery", &parsed)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn weaker_parameters_ask_for_a_rehash() {
        let weak = hasher_of(8192, 1, 1, MEMORY_IDLE_RELEASE);
        let strong = hasher_of(8192, 2, 1, MEMORY_IDLE_RELEASE);
        let stored = weak.hash("a long passphrase").await.unwrap();
        assert_eq!(
            strong
                .verify("a long passphrase", Some(&stored))
                .await
                .unwrap(),
            Verification::ValidNeedsRehash
        );
    }

    #[tokio::test]
    async fn an_upgraded_legacy_hash_keeps_the_old_transform_and_a_fresh_one_does_not() {
        let h = hasher();
        let bcrypt_hash = bcrypt::hash(legacy_escape("p<a>ss word"), 4).unwrap();
        let upgraded = h.rehash(" p<a>ss word  ", &bcrypt_hash).await.unwrap();
        assert!(upgraded.starts_with("$argon2id-legacy$v=19$"), "{upgraded}");
        for form in ["p<a>ss word", "  p<a>ss word ", "p<a>ss word\t"] {
            assert_eq!(
                h.verify(form, Some(&upgraded)).await.unwrap(),
                Verification::Valid,
                "{form:?}"
            );
        }
        for wrong in ["p&lt;a&gt;ss word", "p<a>ss  word", "P<a>ss word"] {
            assert_eq!(
                h.verify(wrong, Some(&upgraded)).await.unwrap(),
                Verification::Invalid,
                "{wrong:?}"
            );
        }
        // Upgrading again (weaker parameters) keeps the mark; a fresh hash never gets it.
        assert!(
            h.rehash("p<a>ss word", &upgraded)
                .await
                .unwrap()
                .starts_with("$argon2id-legacy$")
        );
        let fresh = h.hash(" spaced out ").await.unwrap();
        let plain = h.rehash(" spaced out ", &fresh).await.unwrap();
        assert!(plain.starts_with("$argon2id$v=19$"), "{plain}");
        assert_eq!(
            h.verify("spaced out", Some(&plain)).await.unwrap(),
            Verification::Invalid
        );
    }

    #[tokio::test]
    async fn legacy_bcrypt_hashes_of_escaped_passwords_verify() {
        let stored = bcrypt::hash(legacy_escape("p<a>ss/word&1"), 4).unwrap();
        let h = hasher();
        assert_eq!(
            h.verify("  p<a>ss/word&1 ", Some(&stored)).await.unwrap(),
            Verification::ValidNeedsRehash
        );
        assert_eq!(
            h.verify("p<a>ss/word&2", Some(&stored)).await.unwrap(),
            Verification::Invalid
        );
    }
}
