//! The HTTP/1.1 server under the router: accepts connections and bounds what each may hold. A
//! connection must send a complete request head within `HEADER_READ_TIMEOUT_MS` of being accepted,
//! and again of each response (so that is also how long it may sit idle between requests); a head
//! over [`HEAD_HARD_LIMIT`] is refused by hyper; and at most `max_connections` are open at once.
//!
//! A connection is *serving* from the moment its request has arrived whole (head and body) until
//! its response has been sent, and *waiting* otherwise: idle, or still receiving a head or a body,
//! however slowly. At the cap a new connection displaces the one that has been waiting longest,
//! counted from its accept or the end of its last response (not from its accept alone, so a
//! keep-alive connection a proxy keeps using outlasts slow and unused ones, and not from the last
//! byte received, so trickling a head or a body buys nothing). Only when every open connection is
//! serving is the new one closed. Both are counted and logged, and an accept that fails (out of
//! file descriptors) is retried after a pause instead of ending the service.
//!
//! Stopping: `stop` ends the accept loop (the listening socket is closed), each connection finishes
//! the request it is serving and closes, and after `grace` those still open are cut.

mod open;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::ConnectionMetrics;
use open::Open;

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
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// To read a complete request head, from the accept or from the end of the previous response.
    pub head_timeout: Duration,
    /// Open connections at once.
    pub max_connections: usize,
    /// Open connections at once from one address (an IPv4 address or an IPv6 /64), or `None`
    /// for no such cap.
    pub max_per_address: Option<usize>,
    /// Peers the per-address cap does not count: trusted proxies, each carrying many clients.
    pub exempt: Arc<[ipnet::IpNet]>,
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
        connections: Mutex::default(),
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
    connections: Mutex<Connections>,
    /// Cuts every connection (the drain's grace is over); each connection's own token is a child.
    cut: CancellationToken,
    tasks: TaskTracker,
}

/// What the accept loop and the requests share: the open connections, and the sheds since the
/// last warning.
#[derive(Default)]
struct Connections {
    open: Open,
    shed: Sheds,
}

/// Connections shed since the last warning.
#[derive(Default)]
struct Sheds {
    /// At `MAX_CONNECTIONS`: waiting ones displaced, new ones refused.
    idle: u64,
    refused: u64,
    /// At `MAX_CONNECTIONS_PER_IP`, among one address's: displaced, refused.
    ip_idle: u64,
    ip_refused: u64,
    /// The address that last reached the per-address cap.
    address: Option<IpAddr>,
    log: Throttle,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the new connection in. When its address already has `max_per_address` open, it
    /// makes room by closing that address's connection waiting longest for a request, or is
    /// closed itself if all of them are serving one; otherwise, at `max_connections`, the same
    /// among all connections.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr, stop: &CancellationToken) {
        let ip = peer.ip().to_canonical();
        let address = match self.limits.max_per_address {
            Some(_) if !self.limits.exempt.iter().any(|net| net.contains(&ip)) => {
                Some(open::address_group(ip))
            }
            _ => None,
        };
        let mut guard = self.lock();
        let Connections { open, shed } = &mut *guard;
        let full = match (address, self.limits.max_per_address) {
            (Some(address), Some(max)) if open.count_from(address) >= max => {
                shed.address = Some(address);
                Some((open.waiting_longest_from(address), true))
            }
            _ if open.len() >= self.limits.max_connections => Some((open.waiting_longest(), false)),
            _ => None,
        };
        if let Some((waiting, per_address)) = full {
            let displaced = waiting.and_then(|id| open.remove(id));
            let admitted = displaced.is_some();
            if let Some(conn) = displaced {
                conn.close.cancel();
            }
            let (count, counter) = match (per_address, admitted) {
                (false, true) => (&mut shed.idle, &self.metrics.shed_idle),
                (false, false) => (&mut shed.refused, &self.metrics.shed_refused),
                (true, true) => (&mut shed.ip_idle, &self.metrics.shed_ip_idle),
                (true, false) => (&mut shed.ip_refused, &self.metrics.shed_ip_refused),
            };
            *count += 1;
            counter.inc();
            if shed.log.due() {
                // Start counting again, keeping the throttle's clock.
                let log = std::mem::take(&mut shed.log);
                let Sheds {
                    idle,
                    refused,
                    ip_idle,
                    ip_refused,
                    address,
                    ..
                } = std::mem::replace(
                    shed,
                    Sheds {
                        log,
                        ..Sheds::default()
                    },
                );
                tracing::warn!(
                    max_connections = self.limits.max_connections,
                    max_connections_per_ip = self.limits.max_per_address,
                    idle_closed = idle,
                    refused,
                    ip_idle_closed = ip_idle,
                    ip_refused,
                    address = address.map(|a| tracing::field::display(open::Group(a))),
                    "connection limit reached: the connections waiting longest for a request were closed to admit new ones (ip_: among the connections of an address at MAX_CONNECTIONS_PER_IP, the last such address given), and new ones refused while every connection was serving one (counts since the last such line)"
                );
            }
            if !admitted {
                return; // dropping the stream closes it
            }
        }
        let close = self.cut.child_token();
        let id = open.insert(close.clone(), address);
        self.metrics.open.set(open.len() as i64);
        drop(guard);
        let server = self.clone();
        let stop = stop.clone();
        self.tasks
            .spawn(async move { server.connection(stream, peer, (id, close), stop).await });
    }

    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        (id, close): (u64, CancellationToken),
        stop: CancellationToken,
    ) {
        let (router, server) = (self.router.clone(), self.clone());
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let claim = Arc::new(Claim {
                server: server.clone(),
                id,
                taken: AtomicBool::new(false),
            });
            // A request without a body has arrived whole with its head.
            if req.body().is_end_stream() {
                claim.take();
            }
            let mut req = req.map(|body| {
                Body::new(Arriving {
                    body,
                    claim: claim.clone(),
                })
            });
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let response = match router.oneshot(req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                // Answered, perhaps before its body was read (a refusal): serving until sent.
                claim.take();
                Ok::<_, Infallible>(held_until_sent(response, claim))
            }
        });
        // The connection (and any request it holds, whose claim locks `open` when dropped) is
        // dropped at the end of this block, before `open` is locked below.
        let outcome = {
            let conn = self.builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                outcome = conn.as_mut() => outcome,
                () = close.cancelled() => Ok(()),
                () = stop.cancelled() => {
                    // Finish the request in progress (if any), then close.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        outcome = conn.as_mut() => outcome,
                        () = close.cancelled() => Ok(()),
                    }
                }
            }
        };
        if let Err(e) = outcome
            && e.is_timeout()
        {
            self.metrics.timed_out.inc();
        }
        let mut connections = self.lock();
        connections.open.remove(id);
        self.metrics.open.set(connections.open.len() as i64);
    }
}

/// One request's hold on its connection, which may not be displaced while it is taken: taken once
/// the request has arrived whole (its body read to the end) or is answered, whichever comes
/// first, and released when the last handle is dropped, with the response sent. Until then the
/// connection is waiting for its request, however slowly that arrives, and may make way.
struct Claim {
    server: Arc<Server>,
    id: u64,
    taken: AtomicBool,
}

impl Claim {
    fn take(&self) {
        if !self.taken.swap(true, Ordering::AcqRel) {
            self.server.lock().open.serve(self.id);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if *self.taken.get_mut() {
            self.server.lock().open.served(self.id);
        }
    }
}

/// A request body that takes its request's [`Claim`] when its last byte arrives.
struct Arriving {
    body: Incoming,
    claim: Arc<Claim>,
}

impl hyper::body::Body for Arriving {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.body.is_end_stream(),
            _ => false,
        };
        if ended {
            self.claim.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Keeps the request's claim until the response body has been sent. A body of known size goes out
/// with the head at once, so only streamed bodies (the event stream, exports) are wrapped.
fn held_until_sent(response: Response, claim: Arc<Claim>) -> Response {
    if response.body().size_hint().exact().is_some() {
        return response;
    }
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _claim = &claim;
            frame
        }))
    })
}
