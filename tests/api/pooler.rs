//! `StrictPooler`: a relay in front of Postgres that checks a connection's startup parameters as
//! PgBouncer does by default. It answers a TLS request with "no", accepts only the parameters
//! PgBouncer keeps track of, and refuses a connection that sends any other (`options`,
//! `extra_float_digits`, ...) with PgBouncer's error; a connection it accepts is relayed to
//! Postgres as it came, one client connection to one server connection.
#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What PgBouncer accepts in a startup packet without `ignore_startup_parameters`: the user and
/// database, and the parameters it tracks per client.
const TRACKED: [&str; 8] = [
    "user",
    "database",
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "standard_conforming_strings",
    "intervalstyle",
];

/// The codes a client sends in place of a protocol version to ask for TLS or GSS encryption.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

pub struct StrictPooler {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl StrictPooler {
    /// Listens on 127.0.0.1:0 in front of the Postgres server at `target`.
    pub async fn start(target: SocketAddr) -> StrictPooler {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind pooler");
        let addr = listener.local_addr().expect("pooler address");
        let stop = CancellationToken::new();
        let root = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = root.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                let stop = root.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = serve(client, target) => {}
                    }
                });
            }
        });
        StrictPooler { addr, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StrictPooler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(mut client: TcpStream, target: SocketAddr) -> std::io::Result<()> {
    let startup = loop {
        let len = client.read_u32().await? as usize;
        if !(8..=10_000).contains(&len) {
            return Ok(());
        }
        let mut body = vec![0u8; len - 4];
        client.read_exact(&mut body).await?;
        let code = u32::from_be_bytes(body[..4].try_into().unwrap());
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            client.write_all(b"N").await?;
            continue;
        }
        break body;
    };
    // After the protocol version: name, value, name, value, ..., an empty name.
    let mut fields = startup[4..].split(|b| *b == 0);
    while let Some(name) = fields.next() {
        if name.is_empty() {
            break;
        }
        let name = String::from_utf8_lossy(name).to_lowercase();
        fields.next();
        if !TRACKED.contains(&name.as_str()) {
            client
                .write_all(&error_response(&format!(
                    "unsupported startup parameter: {name}"
                )))
                .await?;
            return Ok(());
        }
    }
    let mut server = TcpStream::connect(target).await?;
    server
        .write_all(&(startup.len() as u32 + 4).to_be_bytes())
        .await?;
    server.write_all(&startup).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// A FATAL ErrorResponse as PgBouncer sends it (SQLSTATE 08P01).
fn error_response(message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (kind, value) in [(b'S', "FATAL"), (b'C', "08P01"), (b'M', message)] {
        fields.push(kind);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&fields);
    out
}
