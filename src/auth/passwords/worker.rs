//! The hashing threads: each takes jobs off the shared queue, hashes into memory from the pool,
//! and answers the caller that queued the job.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::Params;
use secrecy::ExposeSecret;
use tokio::sync::oneshot;

use super::argon2id::{hash_with, verify_with};
use super::memory::MemoryPool;
use super::{HashError, Job, Queued, Verification};

/// The hashing threads' nice value. Async workers stay at the process's own priority, so when
/// every core is hashing, a request that needs microseconds of CPU (a /me, a refresh) preempts a
/// hash at once instead of queueing behind it; with no other work the hashes still get every core
/// (BENCHMARKS.md: the p99 of /me during a login flood).
const HASH_THREAD_NICE: i32 = 10;

/// One hashing thread: takes jobs off the queue, hashing into memory from the shared pool.
pub(super) struct Worker {
    pub(super) jobs: Arc<Mutex<mpsc::Receiver<Queued>>>,
    pub(super) params: Params,
    pub(super) in_flight: Arc<AtomicUsize>,
    pub(super) memory: Arc<MemoryPool>,
    pub(super) idle_release: Duration,
    pub(super) wait: prometheus_client::metrics::histogram::Histogram,
}

impl Worker {
    pub(super) fn run(self) {
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
