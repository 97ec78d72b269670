//! The work forgot-password and resend-verification leave for after their answer: looking the
//! address up and queueing its mail. A request only puts `(what, address, request)` in a bounded
//! queue — the same step for an address with an account and one without, so the answer's time
//! tells nothing — and a fixed number of workers do the rest.
//!
//! The queue is split in one part per worker, chosen by a keyed hash of the address's canonical
//! key: the requests for one address are handled in the order they came (the link of the later
//! request is the one that works), and the key is per process, so nobody can aim a flood of
//! addresses at one part. When a part is full the request is answered alike and dropped, counted
//! in `flux_auth_mail_requests_dropped_total` (a warning logged at most every 10 s): the request
//! path never waits, and memory stays bounded (`MAIL_REQUEST_QUEUE` requests, each an address and
//! its request's context). Requests still waiting when the service stops are not handled; their
//! owners ask again, as for a mail that never came.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::AuthService;
use crate::domain::Email;
use crate::security_log::event::RequestContext;

/// Workers handling the queue. Each spends most of its time waiting for the store's commit, so a
/// few keep the commits grouped without taking the cores from the requests.
pub const MAIL_REQUEST_WORKERS: usize = 4;
/// At most one warning about dropped requests this often.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// What a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailRequestKind {
    /// Forgot-password: a reset link (or "sign in with Google") if the account exists.
    ResetPassword,
    /// Resend-verification: a new link if the account exists and is unverified.
    Verification,
}

/// One answered request waiting for its lookup.
#[derive(Debug)]
pub struct MailRequest {
    pub kind: MailRequestKind,
    pub email: Email,
    pub ctx: RequestContext,
}

/// The queue's levels, for `/metrics` and `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailRequestLevels {
    pub waiting: usize,
    pub capacity: usize,
    pub accepted: u64,
    pub dropped: u64,
}

/// The bounded queue between the answer and the workers.
pub struct MailRequests {
    parts: Vec<mpsc::Sender<MailRequest>>,
    /// The workers' ends, taken once when they start.
    receivers: Mutex<Vec<mpsc::Receiver<MailRequest>>>,
    hasher: std::collections::hash_map::RandomState,
    accepted: AtomicU64,
    dropped: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl MailRequests {
    /// A queue of `capacity` requests in all, split among `workers`.
    pub fn new(capacity: usize, workers: usize) -> Self {
        let workers = workers.max(1);
        let per_part = capacity.div_ceil(workers).max(1);
        let (parts, receivers) = (0..workers).map(|_| mpsc::channel(per_part)).unzip();
        Self {
            parts,
            receivers: Mutex::new(receivers),
            hasher: std::collections::hash_map::RandomState::new(),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        }
    }

    /// Queues `request` without waiting; `false` when its part is full (the request is dropped
    /// and counted) or the workers are gone.
    pub fn submit(&self, request: MailRequest) -> bool {
        let part = (self.hasher.hash_one(request.email.key()) as usize) % self.parts.len();
        match self.parts[part].try_send(request) {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                self.warn_dropped(dropped);
                false
            }
        }
    }

    fn warn_dropped(&self, dropped: u64) {
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < DROP_WARNING_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        tracing::warn!(
            dropped_total = dropped,
            capacity = self.levels().capacity,
            "the forgot-password / resend-verification queue is full: requests are answered \
             alike and dropped (MAIL_REQUEST_QUEUE)"
        );
    }

    pub fn levels(&self) -> MailRequestLevels {
        let (mut waiting, mut capacity) = (0, 0);
        for part in &self.parts {
            waiting += part.max_capacity() - part.capacity();
            capacity += part.max_capacity();
        }
        MailRequestLevels {
            waiting,
            capacity,
            accepted: self.accepted.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    fn take_receivers(&self) -> Vec<mpsc::Receiver<MailRequest>> {
        std::mem::take(
            &mut *self
                .receivers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl AuthService {
    /// Starts the workers of [`MailRequests`] (once; a second call starts none) until `stop`.
    pub fn start_mail_request_workers(self: &Arc<Self>, stop: &CancellationToken) {
        for receiver in self.mail_requests.take_receivers() {
            tokio::spawn(self.clone().mail_request_worker(receiver, stop.clone()));
        }
    }

    async fn mail_request_worker(
        self: Arc<Self>,
        mut receiver: mpsc::Receiver<MailRequest>,
        stop: CancellationToken,
    ) {
        loop {
            let request = tokio::select! {
                () = stop.cancelled() => return,
                request = receiver.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
            };
            let (done, what) = match request.kind {
                MailRequestKind::ResetPassword => (
                    self.forgot_in_background(&request.email, &request.ctx)
                        .await,
                    "password reset",
                ),
                MailRequestKind::Verification => (
                    self.resend_in_background(&request.email, &request.ctx)
                        .await,
                    "verification",
                ),
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, request_id = %request.ctx.request_id,
                    "could not queue a {what} mail");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(address: &str) -> MailRequest {
        MailRequest {
            kind: MailRequestKind::ResetPassword,
            email: Email::parse(address).unwrap(),
            ctx: RequestContext {
                request_id: "r".into(),
                route: "/api/auth/forgot-password".into(),
                method: "POST".into(),
                client: crate::domain::ClientInfo::new([127, 0, 0, 1].into(), None, None),
            },
        }
    }

    #[test]
    fn a_full_part_drops_and_counts_and_one_address_keeps_its_part() {
        let queue = MailRequests::new(16, 4);
        assert_eq!(queue.levels().capacity, 16);
        // One address always lands in the same part of 4: the fifth request is dropped.
        let outcomes: Vec<bool> = (0..6)
            .map(|_| queue.submit(request("same@example.com")))
            .collect();
        assert_eq!(outcomes, [true, true, true, true, false, false]);
        let levels = queue.levels();
        assert_eq!((levels.waiting, levels.accepted, levels.dropped), (4, 4, 2));
        // Another spelling of the mailbox is the same address.
        assert!(!queue.submit(request("Same@Example.com")));
    }
}
