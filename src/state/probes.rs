//! The health routes' database probes, one at a time per database.

use std::sync::atomic::{AtomicU64, Ordering};

/// The health routes' database probes. Anyone may call `/health`, and each probe holds a
/// connection of the pool the requests need: a flood of health checks, one probe each, would
/// starve logins and refreshes of connections. So one probe per database runs at a time, and
/// the callers that arrive while it runs share the next one: each caller still gets the answer
/// of a probe that began after it asked (a probe that began before may predate an outage), and a
/// flood costs one connection at a time.
#[derive(Default)]
pub struct Probes {
    /// The user store's database.
    pub store: SharedProbe,
    /// The security log's database.
    pub security_db: SharedProbe,
}

/// One probe at a time, its answer shared by the callers that waited for it.
#[derive(Default)]
pub struct SharedProbe {
    /// How many probes have begun.
    begun: AtomicU64,
    /// The number of the last finished probe (from 1; 0: none yet) and its answer. The lock is
    /// held during a probe.
    last: tokio::sync::Mutex<(u64, bool)>,
}

impl SharedProbe {
    /// Whether `probe` succeeds, from a probe that began after this call: the last one if it
    /// did (it ran while this caller waited for the lock), else a new one. Waiters are served
    /// in order (tokio's mutex is fair), so the first after a probe runs the next and the rest
    /// share it. Counted, not timed: two clock readings can be equal.
    pub async fn check<F: Future<Output = bool>>(&self, probe: impl FnOnce() -> F) -> bool {
        let begun_before = self.begun.load(Ordering::Acquire);
        let mut last = self.last.lock().await;
        if last.0 > begun_before {
            return last.1;
        }
        let number = self.begun.fetch_add(1, Ordering::AcqRel) + 1;
        let ok = probe().await;
        *last = (number, ok);
        ok
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::Semaphore;

    use super::*;

    /// A probe that counts its runs and answers `ok` once `gate` gives it a permit.
    async fn gated(runs: &AtomicUsize, gate: &Semaphore, ok: bool) -> bool {
        runs.fetch_add(1, Ordering::SeqCst);
        gate.acquire().await.unwrap().forget();
        ok
    }

    async fn until(what: impl Fn() -> bool) {
        while !what() {
            tokio::task::yield_now().await;
        }
    }

    /// Callers that arrive during a probe do not take its answer (it began before they asked)
    /// and do not each run their own: they share the next one.
    #[tokio::test]
    async fn callers_during_a_probe_share_the_next_one() {
        let probe = Arc::new(SharedProbe::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let call = |ok: bool| {
            let (probe, runs, gate) = (probe.clone(), runs.clone(), gate.clone());
            let arrived = arrived.clone();
            tokio::spawn(async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                // In the same poll: `check` notes the time and queues for the lock.
                probe.check(|| gated(&runs, &gate, ok)).await
            })
        };
        let first = call(true);
        until(|| runs.load(Ordering::SeqCst) == 1).await;
        let waiting: Vec<_> = (0..10).map(|_| call(false)).collect();
        until(|| arrived.load(Ordering::SeqCst) == 11).await;
        gate.add_permits(1);
        assert!(
            first.await.unwrap(),
            "the first caller gets its own probe's answer"
        );
        until(|| runs.load(Ordering::SeqCst) == 2).await;
        // Enough for every waiter: a probe each would end, and be counted, rather than hang.
        gate.add_permits(100);
        for waiter in waiting {
            assert!(
                !waiter.await.unwrap(),
                "a waiter gets the probe that began after it asked"
            );
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2, "ten waiters, one probe");
    }

    /// One caller after another: each gets a probe of its own, so an outage shows at once.
    #[tokio::test]
    async fn a_later_caller_never_gets_an_earlier_answer() {
        let probe = SharedProbe::default();
        assert!(probe.check(|| async { true }).await);
        assert!(!probe.check(|| async { false }).await);
        assert!(probe.check(|| async { true }).await);
    }
}
