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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, oneshot};

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

/// The hashing threads' nice value. Async workers stay at the process's own priority, so when
/// every core is hashing, a request that needs microseconds of CPU (a /me, a refresh) preempts a
/// hash at once instead of queueing behind it; with no other work the hashes still get every core
/// (BENCHMARKS.md: the p99 of /me during a login flood).
const HASH_THREAD_NICE: i32 = 10;

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
                let salt: [u8; SALT_BYTES] = super::os_random();
                let digest: [u8; OUTPUT_BYTES] = super::os_random();
                Ok(phc(&self.params, &salt, &digest))
            })
            .await
            .map(String::as_str)
    }

    pub fn params(&self) -> &Params {
        &self.params
    }
}

/// One hashing thread: takes jobs off the queue, hashing into memory from the shared pool.
struct Worker {
    jobs: Arc<Mutex<mpsc::Receiver<Queued>>>,
    params: Params,
    in_flight: Arc<AtomicUsize>,
    memory: Arc<MemoryPool>,
    idle_release: Duration,
    wait: prometheus_client::metrics::histogram::Histogram,
}

impl Worker {
    fn run(self) {
        // On Linux a thread id names one thread here, so this lowers this thread only. Without
        // permission to (never the case for lowering) hashing just keeps the normal priority.
        if let Err(e) =
            rustix::process::setpriority_process(Some(rustix::thread::gettid()), HASH_THREAD_NICE)
        {
            tracing::debug!(error = %e, "could not lower the hashing thread's priority");
        }
        loop {
            // One worker waits on the queue at a time; the others wait for the lock, so when
            // the one waiting sees no job for `idle_release`, every worker is idle.
            let next = {
                let Ok(jobs) = self.jobs.lock() else { return };
                jobs.recv_timeout(self.idle_release)
            };
            let queued = match next {
                Ok(queued) => queued,
                Err(RecvTimeoutError::Timeout) => {
                    self.memory.release_idle();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let Queued { job, at, place } = queued;
            drop(place); // the next caller may queue now
            self.wait.observe(at.elapsed().as_secs_f64());
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            let mut memory = self.memory.take();
            let (params, pool) = (&self.params, &*self.memory);
            let answer = match job {
                Job::Hash { password, reply } => {
                    let hashed = hash_with(params, password.expose_secret(), &mut memory, pool);
                    Answer::Hash(reply, hashed)
                }
                Job::Verify {
                    password,
                    stored,
                    reply,
                } => {
                    let verdict =
                        verify_with(params, password.expose_secret(), &stored, &mut memory, pool);
                    Answer::Verify(reply, verdict)
                }
            };
            pool.put(memory, params.block_count());
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            // Last, so a caller that has its answer sees the levels after its job.
            answer.send();
        }
    }
}

/// A finished job's result and where it goes.
enum Answer {
    Hash(
        oneshot::Sender<Result<String, HashError>>,
        Result<String, HashError>,
    ),
    Verify(
        oneshot::Sender<Result<Verification, HashError>>,
        Result<Verification, HashError>,
    ),
}

impl Answer {
    /// A caller that stopped waiting (its request timed out) is no error.
    fn send(self) {
        match self {
            Self::Hash(reply, result) => {
                let _ = reply.send(result);
            }
            Self::Verify(reply, result) => {
                let _ = reply.send(result);
            }
        }
    }
}

/// The workers' argon2 buffers not in use right now. A worker takes one for each job and puts it
/// back, and maps one only when none is free, so there are never more buffers than workers.
#[derive(Default)]
struct MemoryPool {
    free: Mutex<Vec<HashMemory>>,
    /// Bytes of every buffer, free or in use.
    bytes: AtomicUsize,
}

impl MemoryPool {
    fn take(&self) -> Option<HashMemory> {
        self.free.lock().ok().and_then(|mut free| free.pop())
    }

    /// Puts a worker's buffer back, unless a stored hash of a larger cost than `keep` blocks
    /// grew it: that one is unmapped now.
    fn put(&self, memory: Option<HashMemory>, keep: usize) {
        let Some(memory) = memory else { return };
        if memory.len() > keep {
            self.unmap(memory);
        } else if let Ok(mut free) = self.free.lock() {
            free.push(memory);
        }
    }

    /// The first `blocks` blocks of `memory`, mapped anew when it has fewer; the old mapping
    /// goes first, so a worker never holds two.
    fn fit<'m>(
        &self,
        memory: &'m mut Option<HashMemory>,
        blocks: usize,
    ) -> Result<&'m mut [Block], HashError> {
        let fitting = match memory.take() {
            Some(m) if m.len() >= blocks => m,
            old => {
                if let Some(old) = old {
                    self.unmap(old);
                }
                let fresh = HashMemory::new(blocks).map_err(HashError::Memory)?;
                self.bytes.fetch_add(fresh.bytes(), Ordering::Relaxed);
                fresh
            }
        };
        Ok(&mut memory.insert(fitting).blocks()[..blocks])
    }

    /// Unmaps every buffer no worker is using.
    fn release_idle(&self) {
        let idle = match self.free.lock() {
            Ok(mut free) => std::mem::take(&mut *free),
            Err(_) => return,
        };
        for memory in idle {
            self.unmap(memory);
        }
    }

    fn unmap(&self, memory: HashMemory) {
        self.bytes.fetch_sub(memory.bytes(), Ordering::Relaxed);
        drop(memory);
    }
}

/// argon2 memory in a mapping of its own, outside the allocator, so that it goes back to the
/// kernel the moment it is dropped: a freed 19 MiB block stays resident inside mimalloc until a
/// later allocation on that thread triggers a purge, which an idle hashing thread never makes.
///
/// The mapping is advised for transparent huge pages. argon2 reads its memory at random, so on
/// 4 KiB pages most reads miss the TLB; on huge pages the same hash takes 3–10% less time
/// (BENCHMARKS.md, "huge pages"). The allocator is built without huge pages (mimalloc's `no_thp`),
/// so the rest of the heap stays small: there every 2 MiB page touched once would stay resident
/// whole. Here all of it is written by every hash anyway. Public so the load harness times the
/// hash on the same memory as the service (its login ceiling).
pub struct HashMemory {
    map: memmap2::MmapMut,
}

// Block is 128 u64 words (argon2's 1 KiB block): any bytes are a valid Block, and a page-aligned
// mapping is aligned for it.
const _: () = assert!(std::mem::size_of::<Block>() == 1024);
const _: () = assert!(std::mem::align_of::<Block>() <= 4096);

impl HashMemory {
    /// `blocks` zeroed blocks (the kernel maps anonymous memory zeroed).
    pub fn new(blocks: usize) -> std::io::Result<Self> {
        let map = memmap2::MmapOptions::new()
            .len(blocks.max(1) * std::mem::size_of::<Block>())
            .map_anon()?;
        // Advised before it is first written, so its pages fault in huge instead of waiting for
        // khugepaged to collapse them.
        #[cfg(target_os = "linux")]
        if let Err(e) = map.advise(memmap2::Advice::HugePage) {
            // THP compiled out or switched off: hashing works the same, only slower.
            tracing::debug!(error = %e, "argon2 memory stays on normal pages");
        }
        Ok(Self { map })
    }

    /// All of its blocks.
    #[allow(unsafe_code)] // the only unsafe code in the crate: bytes of a mapping as blocks
    pub fn blocks(&mut self) -> &mut [Block] {
        let len = self.len();
        // SAFETY: the mapping is page-aligned, so aligned for Block (asserted above); `len`
        // blocks fit in its length; any bytes are a valid Block; and the slice borrows `self`
        // mutably, so the mapping stays mapped and nothing else touches it while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast::<Block>(), len) }
    }

    /// Its size in blocks.
    pub fn len(&self) -> usize {
        self.map.len() / std::mem::size_of::<Block>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bytes(&self) -> usize {
        self.map.len()
    }
}

fn hash_with(
    params: &Params,
    password: &str,
    memory: &mut Option<HashMemory>,
    pool: &MemoryPool,
) -> Result<String, HashError> {
    let salt: [u8; SALT_BYTES] = super::os_random();
    let mut out = [0u8; OUTPUT_BYTES];
    let blocks = pool.fit(memory, params.block_count())?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
        .map_err(|e| HashError::Argon2(e.to_string()))?;
    Ok(phc(params, &salt, &out))
}

/// The PHC string form of an argon2id hash.
fn phc(params: &Params, salt: &[u8], digest: &[u8]) -> String {
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        B64.encode(salt),
        B64.encode(digest)
    )
}

fn verify_with(
    current: &Params,
    password: &str,
    stored: &str,
    memory: &mut Option<HashMemory>,
    pool: &MemoryPool,
) -> Result<Verification, HashError> {
    if stored.starts_with("$2") {
        return Ok(verify_legacy_bcrypt(password, stored));
    }
    let transformed;
    let (password, stored) = match stored.strip_prefix(LEGACY_ARGON2ID_PREFIX) {
        Some(rest) => {
            transformed = (
                legacy_transform(password),
                format!("{ARGON2ID_PREFIX}{rest}"),
            );
            (transformed.0.as_str(), transformed.1.as_str())
        }
        None => (password, stored),
    };
    let Ok(phc) = PasswordHash::new(stored) else {
        return Ok(Verification::Invalid);
    };
    let algorithm = match phc.algorithm.as_str() {
        "argon2id" => Algorithm::Argon2id,
        "argon2i" => Algorithm::Argon2i,
        "argon2d" => Algorithm::Argon2d,
        _ => return Ok(Verification::Invalid),
    };
    let Ok(params) = Params::try_from(&phc) else {
        return Ok(Verification::Invalid);
    };
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        return Ok(Verification::Invalid);
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return Ok(Verification::Invalid);
    };
    let blocks = pool.fit(memory, params.block_count())?;
    let mut out = vec![0u8; expected.len()];
    let version = phc
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or(Version::V0x13);
    if Argon2::new(algorithm, version, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
        .is_err()
    {
        return Ok(Verification::Invalid);
    }
    if !bool::from(out.as_slice().ct_eq(expected.as_bytes())) {
        return Ok(Verification::Invalid);
    }
    let weaker = algorithm != Algorithm::Argon2id
        || params.m_cost() < current.m_cost()
        || params.t_cost() < current.t_cost()
        || params.p_cost() != current.p_cost();
    Ok(if weaker {
        Verification::ValidNeedsRehash
    } else {
        Verification::Valid
    })
}

/// The PHC identifier of an argon2id hash of [`legacy_transform`] of the password: what an old
/// service's bcrypt hash is upgraded to at the first login. Keeping the transform keeps the
/// password as the user knew it (the old service ignored surrounding spaces), and applying it
/// only to these hashes keeps every password set here exact.
pub const LEGACY_ARGON2ID: &str = "argon2id-legacy";
const ARGON2ID_PREFIX: &str = "$argon2id$";
const LEGACY_ARGON2ID_PREFIX: &str = "$argon2id-legacy$";

/// Whether `stored` is a hash of the old service's transform of the password (bcrypt, or its
/// upgrade).
fn uses_legacy_transform(stored: &str) -> bool {
    stored.starts_with("$2") || stored.starts_with(LEGACY_ARGON2ID_PREFIX)
}

/// What the old service hashed: `escape(trim(password))` (express-validator).
fn legacy_transform(password: &str) -> String {
    legacy_escape(password.trim())
}

/// The old service hashed `escape(trim(password))` (express-validator) with bcryptjs.
fn verify_legacy_bcrypt(password: &str, stored: &str) -> Verification {
    let candidate = legacy_transform(password);
    match bcrypt::verify(candidate.as_bytes(), stored) {
        Ok(true) => Verification::ValidNeedsRehash,
        _ => Verification::Invalid,
    }
}

/// validator.js `escape()`, which express-validator applied to passwords before bcrypt.
pub fn legacy_escape(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '/' => out.push_str("&#x2F;"),
            '\\' => out.push_str("&#x5C;"),
            '`' => out.push_str("&#96;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
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

    /// The AnonHugePages (KiB) of the mapping holding `addr`, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn anon_huge_kib_at(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((start, end)) = range.split_once('-')
                && let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                )
            {
                inside = (start..end).contains(&addr);
            } else if inside && let Some(kib) = line.strip_prefix("AnonHugePages:") {
                return kib.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn argon2_memory_is_on_huge_pages_where_the_kernel_offers_them() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let mut memory = HashMemory::new(19 * 1024).unwrap();
        let blocks = memory.blocks();
        assert_eq!(blocks.len(), 19 * 1024);
        blocks.fill(Block::new()); // fault it in, as a hash does
        let huge = anon_huge_kib_at(blocks.as_ptr() as usize + (8 << 20));
        if thp.contains("[never]") || thp.is_empty() {
            assert_eq!(huge, 0, "THP is off, yet {huge} KiB are huge");
        } else {
            // The allocator itself is built without huge pages: these come from our advice.
            assert!(
                huge >= 2048,
                "THP is {thp:?}, but the argon2 memory has {huge} KiB huge"
            );
        }
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
