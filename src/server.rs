//! The HTTP/1.1 server under the router: accepts connections and bounds what each may hold. A
//! connection must send a complete request head within `HEADER_READ_TIMEOUT_MS` of being accepted,
//! and again of each response (so that is also how long it may sit idle between requests); a head
//! over [`HEAD_HARD_LIMIT`] is refused by hyper; and at most `max_connections` are open at once.
//! At that cap a new connection displaces the oldest one with no request in progress (idle, or
//! still sending its head, as a slow client does); when every open connection has a request in
//! progress the new one is closed. Both are counted and logged, and an accept that fails (out of
//! file descriptors) is retried after a pause instead of ending the service.
//!
//! Stopping: `stop` ends the accept loop (the listening socket is closed), each connection finishes
//! the request it is serving and closes, and after `grace` those still open are cut.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::ConnectionMetrics;

/// hyper's own cap on a request head (request line and headers), twice the service's limit
/// ([`crate::http::middleware::MAX_HEADER_BYTES`]). The middleware refuses heads over the service's
/// limit with a 431 in the Error shape; hyper refuses heads over this one itself, with a 431 that
/// has an empty body (hyper writes its parse-error responses itself and offers no hook to shape
/// them), and stops reading. So a connection's head buffer never exceeds this.
pub const HEAD_HARD_LIMIT: usize = 2 * crate::http::middleware::MAX_HEADER_BYTES;

/// File descriptors kept for the service's own use (database and Redis connections, spool and data
/// files, the log, the runtime) when the open-file limit caps the connections.
const RESERVED_FILES: u64 = 128;

/// How long the accept loop pauses after an accept failed for want of resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// At most one warning a second about shed connections or failed accepts, with the counts since
/// the last one: a flood must not become a flood of log lines.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// What the server allows its connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// To read a complete request head, from the accept or from the end of the previous response.
    pub head_timeout: Duration,
    /// Open connections at once.
    pub max_connections: usize,
}

/// The connection cap in force: `configured`, lowered when the process's open-file limit would be
/// reached first (the limit less [`RESERVED_FILES`], and at least half of it), so that the service
/// sheds connections instead of failing to open its own files.
pub fn connection_cap(configured: usize) -> usize {
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match files {
        Some(files) => {
            let room = files.saturating_sub(RESERVED_FILES).max(files / 2);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

/// Serves `router` on `listener` until `stop` is cancelled, then lets the open connections finish
/// for up to `grace`. Returns `false` when some had to be cut.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
    grace: Duration,
) -> bool {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_header_size(HEAD_HARD_LIMIT);
    let server = Arc::new(Server {
        router,
        builder,
        limits,
        metrics,
        open: Mutex::default(),
        cut: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });
    let (mut accept_failures, mut accept_log) = (0u64, Throttle::default());
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => server.admit(stream, peer, &stop),
            // The peer gave up before the accept: nothing to do.
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                server.metrics.accept_errors.inc();
                accept_failures += 1;
                if accept_log.due() {
                    let failures = std::mem::take(&mut accept_failures);
                    tracing::error!(error = %e, failures,
                        "could not accept a connection (out of file descriptors?); pausing accepts for 50 ms (failures since the last such line)");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    server.tasks.close();
    if tokio::time::timeout(grace, server.tasks.wait())
        .await
        .is_ok()
    {
        return true;
    }
    server.cut.cancel();
    // Cutting drops each connection with its request at once; this wait is for the tasks to see it.
    let _ = tokio::time::timeout(Duration::from_secs(1), server.tasks.wait()).await;
    false
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

struct Server {
    router: Router,
    builder: http1::Builder,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    open: Mutex<Open>,
    /// Cuts every connection (the drain's grace is over); each connection's own token is a child.
    cut: CancellationToken,
    tasks: TaskTracker,
}

/// The open connections by age (accept order), so that a full server finds the oldest idle one.
#[derive(Default)]
struct Open {
    next_id: u64,
    by_age: BTreeMap<u64, Arc<Slot>>,
    /// Connections shed since the last warning.
    shed_idle: u64,
    shed_refused: u64,
    shed_log: Throttle,
}

/// One open connection, as the accept loop sees it.
struct Slot {
    /// Requests in progress, counting a streamed response until its body ends.
    busy: AtomicUsize,
    /// Closes this connection at once (displaced, or the drain's grace is over).
    close: CancellationToken,
}

/// Says when a warning may be logged again (at most once per [`LOG_EVERY`]).
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    fn due(&mut self) -> bool {
        if self.last.is_some_and(|last| last.elapsed() < LOG_EVERY) {
            return false;
        }
        self.last = Some(Instant::now());
        true
    }
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the new connection in, at the cap making room by closing the oldest idle one; when
    /// every connection is busy, closes the new one instead.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr, stop: &CancellationToken) {
        let mut open = self.lock();
        if open.by_age.len() >= self.limits.max_connections {
            let idle = open
                .by_age
                .iter()
                .find(|(_, slot)| slot.busy.load(Ordering::Relaxed) == 0)
                .map(|(id, _)| *id);
            let displaced = idle.and_then(|id| open.by_age.remove(&id));
            let admitted = displaced.is_some();
            if let Some(slot) = displaced {
                slot.close.cancel();
                open.shed_idle += 1;
                self.metrics.shed_idle.inc();
            } else {
                open.shed_refused += 1;
                self.metrics.shed_refused.inc();
            }
            if open.shed_log.due() {
                let (idle_closed, refused) = (
                    std::mem::take(&mut open.shed_idle),
                    std::mem::take(&mut open.shed_refused),
                );
                tracing::warn!(
                    max_connections = self.limits.max_connections,
                    idle_closed,
                    refused,
                    "connection limit reached: the oldest idle connections were closed to admit new ones, and new ones refused while every connection was busy (counts since the last such line)"
                );
            }
            if !admitted {
                return; // dropping the stream closes it
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let slot = Arc::new(Slot {
            busy: AtomicUsize::new(0),
            close: self.cut.child_token(),
        });
        open.by_age.insert(id, slot.clone());
        self.metrics.open.set(open.by_age.len() as i64);
        drop(open);
        let server = self.clone();
        let stop = stop.clone();
        self.tasks
            .spawn(async move { server.connection(stream, peer, (id, slot), stop).await });
    }

    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        (id, slot): (u64, Arc<Slot>),
        stop: CancellationToken,
    ) {
        let (router, for_requests) = (self.router.clone(), slot.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let busy = Busy::new(&for_requests);
            let router = router.clone();
            async move {
                let response = match router.oneshot(req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(held_until_sent(response, busy))
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let outcome = tokio::select! {
            outcome = conn.as_mut() => outcome,
            () = slot.close.cancelled() => Ok(()),
            () = stop.cancelled() => {
                // Finish the request in progress (if any), then close.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    outcome = conn.as_mut() => outcome,
                    () = slot.close.cancelled() => Ok(()),
                }
            }
        };
        if let Err(e) = outcome
            && e.is_timeout()
        {
            self.metrics.timed_out.inc();
        }
        let mut open = self.lock();
        open.by_age.remove(&id);
        self.metrics.open.set(open.by_age.len() as i64);
    }
}

/// Marks its connection busy while it lives.
struct Busy(Arc<Slot>);

impl Busy {
    fn new(slot: &Arc<Slot>) -> Self {
        slot.busy.fetch_add(1, Ordering::Relaxed);
        Self(slot.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps the connection marked busy until the response body has been sent. A body of known size
/// goes out with the head at once, so only streamed bodies (the event stream, exports) are wrapped.
fn held_until_sent(response: Response, busy: Busy) -> Response {
    if response.body().size_hint().exact().is_some() {
        return response;
    }
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _busy = &busy;
            frame
        }))
    })
}
