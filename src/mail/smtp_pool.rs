//! SMTP connections kept open between messages, on TCP streams with Nagle's algorithm off.
//!
//! lettre's own pool opens its streams with Nagle's algorithm on, and lettre writes a message's
//! body and its closing `.` in two writes: the second, small, waits until the server has
//! acknowledged the first, and a server that has nothing to answer until the `.` arrives holds
//! that acknowledgement for its delayed-ACK time (40 ms on Linux). That cost some 40 ms per
//! message and connection, whatever the server's speed. Here the plain and STARTTLS streams are
//! opened by us with `TCP_NODELAY` and handed to lettre's connection, which speaks the protocol.
//! Implicit TLS (`SMTP_SECURE=true`) is set up inside lettre's own connect, so those streams keep
//! Nagle's algorithm.
//!
//! Every exchange (a connect with its TLS and login, a message's delivery) is bounded by the
//! timeout. A connection idle for a moment is checked with `NOOP` before it is used again, and
//! one idle for long is closed: servers drop idle clients.

use std::sync::Mutex;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Tls};
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use super::sender::DeliveryError;

/// A connection idle for less than this is used again without a `NOOP`.
const CHECK_AFTER: Duration = Duration::from_secs(1);
/// A connection idle for longer than this is closed instead of used again.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// Where and how to connect.
pub struct SmtpEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub credentials: Option<Credentials>,
    pub timeout: Duration,
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

/// Connections to one SMTP server, at most `max_idle` kept between messages.
pub struct SmtpPool {
    endpoint: SmtpEndpoint,
    hello: ClientId,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
}

impl SmtpPool {
    pub fn new(endpoint: SmtpEndpoint, max_idle: usize) -> Self {
        Self {
            endpoint,
            hello: ClientId::default(),
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// Delivers one message: `bytes` as formatted, to `envelope`'s recipients.
    pub async fn send(&self, envelope: &Envelope, bytes: &[u8]) -> Result<(), DeliveryError> {
        let mut conn = self.connection().await?;
        match timeout(self.endpoint.timeout, conn.send(envelope, bytes)).await {
            Ok(Ok(_)) => {
                self.park(conn);
                Ok(())
            }
            // lettre has closed a connection that failed; it is dropped.
            Ok(Err(e)) => Err(refused(&e)),
            Err(_) => Err(DeliveryError::transient(
                "the SMTP server did not answer in time",
            )),
        }
    }

    fn take_idle(&self) -> Option<Idle> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn park(&self, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// An idle connection that still answers, or a new one.
    async fn connection(&self) -> Result<AsyncSmtpConnection, DeliveryError> {
        while let Some(Idle { mut conn, since }) = self.take_idle() {
            let idle_for = since.elapsed();
            if idle_for < CHECK_AFTER {
                return Ok(conn);
            }
            if idle_for < IDLE_FOR
                && timeout(self.endpoint.timeout, conn.test_connected())
                    .await
                    .unwrap_or(false)
            {
                return Ok(conn);
            }
        }
        match timeout(self.endpoint.timeout, self.connect()).await {
            Ok(connected) => connected,
            Err(_) => Err(DeliveryError::transient(
                "the SMTP server did not answer in time",
            )),
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, DeliveryError> {
        let e = &self.endpoint;
        let mut conn = match &e.tls {
            Tls::Wrapper(params) => AsyncSmtpConnection::connect_tokio1(
                (e.host.as_str(), e.port),
                Some(e.timeout),
                &self.hello,
                Some(params.clone()),
                None,
            )
            .await
            .map_err(|e| refused(&e))?,
            _ => {
                let tcp = TcpStream::connect((e.host.as_str(), e.port))
                    .await
                    .map_err(|e| DeliveryError::transient(format!("could not connect: {e}")))?;
                tcp.set_nodelay(true)
                    .map_err(|e| DeliveryError::transient(format!("could not connect: {e}")))?;
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                    .await
                    .map_err(|e| refused(&e))?
            }
        };
        let starttls = match &e.tls {
            Tls::Required(params) => Some(params),
            Tls::Opportunistic(params) if conn.can_starttls() => Some(params),
            _ => None,
        };
        if let Some(params) = starttls {
            conn.starttls(params.clone(), &self.hello)
                .await
                .map_err(|e| refused(&e))?;
        }
        if let Some(credentials) = &e.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials)
                .await
                .map_err(|e| refused(&e))?;
        }
        Ok(conn)
    }
}

/// The transport's error as a delivery error: permanent for the server's 5xx answers.
fn refused(e: &lettre::transport::smtp::Error) -> DeliveryError {
    if e.is_permanent() {
        DeliveryError::permanent(smtp_error(e))
    } else {
        DeliveryError::transient(smtp_error(e))
    }
}

/// The transport's error, without anything a server could echo back at length.
fn smtp_error(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    text.truncate(300);
    text
}
