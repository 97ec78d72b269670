//! `Forwarder`: a TCP relay between the app and Postgres, so a test can cut the database away
//! under a running service (and bring it back), or make it slow, without touching the shared
//! server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

pub struct Forwarder {
    addr: SocketAddr,
    /// Cancelled on drop: stops the accept loop and every relayed connection.
    root: CancellationToken,
    state: Arc<Mutex<Link>>,
    /// Microseconds every relayed chunk waits before it is passed on (0: none).
    delay: Arc<AtomicU64>,
    /// Bytes relayed from the app to the server, over every connection so far.
    sent: Arc<AtomicU64>,
    target: SocketAddr,
    /// The accept loop; `None` while refusing (no socket listens).
    accept: Mutex<Option<JoinHandle<()>>>,
}

/// Whether the link is cut, and the token the live connections of this generation hang on.
struct Link {
    cut: bool,
    generation: CancellationToken,
}

impl Forwarder {
    /// Listens on 127.0.0.1:0 and relays every accepted connection to `target`.
    pub async fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind forwarder");
        let addr = listener.local_addr().expect("forwarder address");
        let root = CancellationToken::new();
        let state = Arc::new(Mutex::new(Link {
            cut: false,
            generation: root.child_token(),
        }));
        let delay = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            root.clone(),
            state.clone(),
            delay.clone(),
            sent.clone(),
        ));
        Forwarder {
            addr,
            root,
            state,
            delay,
            sent,
            target,
            accept: Mutex::new(Some(accept)),
        }
    }

    /// The server stopped: every live connection is closed and the port no longer listens, so a
    /// new connection is refused (as when Postgres is down) rather than accepted and dropped.
    /// `restore` listens again on the same port.
    pub fn refuse(&self) {
        self.cut();
        if let Some(accept) = self.accept.lock().expect("forwarder accept").take() {
            accept.abort();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes the app has sent to the server through this forwarder so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Closes every live connection; new ones are accepted and dropped at once until `restore`.
    pub fn cut(&self) {
        let mut link = self.state.lock().expect("forwarder state");
        link.cut = true;
        link.generation.cancel();
        link.generation = self.root.child_token();
    }

    pub fn restore(&self) {
        self.state.lock().expect("forwarder state").cut = false;
        let mut accept = self.accept.lock().expect("forwarder accept");
        if accept.is_none() {
            // The same port again; connections closed by the refusal may linger in TIME_WAIT.
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            socket
                .bind(self.addr)
                .expect("bind the forwarder's port again");
            let listener = socket.listen(1024).expect("listen");
            *accept = Some(tokio::spawn(accept_loop(
                listener,
                self.target,
                self.root.clone(),
                self.state.clone(),
                self.delay.clone(),
                self.sent.clone(),
            )));
        }
    }

    /// A slow network: from now on every chunk, in either direction and on live connections too,
    /// waits `delay` before it is relayed. `Duration::ZERO` makes the link fast again.
    pub fn slow(&self, delay: Duration) {
        self.delay
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.root.cancel();
        if let Some(accept) = self.accept.lock().expect("forwarder accept").take() {
            accept.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    root: CancellationToken,
    state: Arc<Mutex<Link>>,
    delay: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
) {
    loop {
        let accepted = tokio::select! {
            () = root.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else { continue };
        let generation = {
            let link = state.lock().expect("forwarder state");
            if link.cut {
                drop(client);
                continue;
            }
            link.generation.clone()
        };
        let (delay, sent) = (delay.clone(), sent.clone());
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                () = generation.cancelled() => {}
                _ = futures::future::join(
                    relay(client_read, server_write, delay.clone(), Some(sent)),
                    relay(server_read, client_write, delay, None),
                ) => {}
            }
        });
    }
}

/// Copies one direction of a connection chunk by chunk, each after the current delay; at end of
/// stream it shuts the other side's write half, as `copy_bidirectional` does. Counts what it
/// relays into `counted`, if given.
async fn relay(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Arc<AtomicU64>,
    counted: Option<Arc<AtomicU64>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let wait = delay.load(Ordering::Relaxed);
        if wait > 0 {
            tokio::time::sleep(Duration::from_micros(wait)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Some(counted) = &counted {
            counted.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let _ = to.shutdown().await;
}

/// The socket address of the test Postgres server (`TEST_DATABASE_URL` or the local default).
pub async fn postgres_addr() -> SocketAddr {
    let url = postgres_admin_url();
    let (_, authority) = split_authority(&url);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    tokio::net::lookup_host(host_port.as_str())
        .await
        .expect("resolve postgres host")
        .next()
        .expect("postgres host has an address")
}

/// `url` with its host and port replaced by `addr` (user, database and options kept).
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, authority) = split_authority(url);
    let rest = &url[scheme.len() + authority.len()..];
    let user = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}{user}{addr}{rest}")
}

/// (`postgres://`, `user@host:port`) of a connection URL.
fn split_authority(url: &str) -> (&str, &str) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = url.split_at(start);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    (scheme, &rest[..end])
}

#[tokio::test]
async fn forwarder_relays_to_postgres_cuts_and_restores() {
    if !postgres_available().await {
        return;
    }
    let forwarder = Forwarder::start(postgres_addr().await).await;
    let url = via(&postgres_admin_url(), forwarder.addr());
    assert!(url.contains(&forwarder.addr().to_string()), "{url}");

    let mut conn = PgConnection::connect(&url).await.expect("connect through");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);

    forwarder.cut();
    assert!(
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .is_err(),
        "a live connection is closed by the cut"
    );
    let attempt = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&url)).await;
    assert!(
        matches!(attempt, Ok(Err(_))),
        "a new connection fails at once while cut"
    );

    forwarder.restore();
    let mut conn = PgConnection::connect(&url)
        .await
        .expect("connect after restore");
    let two: i32 = sqlx::query_scalar("SELECT 2")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(two, 2);
    let _ = conn.close().await;

    drop(forwarder);
    let attempt = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&url)).await;
    assert!(
        matches!(attempt, Ok(Err(_))),
        "dropping stops the forwarder"
    );
}
