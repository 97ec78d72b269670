//! A minimal HTTP/1.1 keep-alive client: one TCP connection per worker, requests sent one after
//! another on it. hyper's connection API directly, not a pooled client, so the client spends as
//! little of the shared CPU as possible and every worker is exactly one connection.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What to send: built once per worker, cloned per request (the body is a cheap `Bytes` clone).
#[derive(Clone)]
pub struct Call {
    pub method: Method,
    pub path: &'static str,
    pub bearer: Option<String>,
    pub json: Option<Bytes>,
    /// Sent as `X-Forwarded-For`, so a server that trusts loopback as its proxy sees each worker
    /// as a client of its own (rate limits are per client address).
    pub forwarded_for: Option<String>,
}

impl Call {
    pub fn get(path: &'static str) -> Self {
        Self {
            method: Method::GET,
            path,
            bearer: None,
            json: None,
            forwarded_for: None,
        }
    }

    pub fn post(path: &'static str, body: &serde_json::Value) -> Self {
        Self {
            method: Method::POST,
            path,
            bearer: None,
            json: Some(Bytes::from(body.to_string())),
            forwarded_for: None,
        }
    }

    pub fn bearer(mut self, token: &str) -> Self {
        self.bearer = Some(format!("Bearer {token}"));
        self
    }

    pub fn with_client(mut self, client: Option<&str>) -> Self {
        self.forwarded_for = client.map(str::to_owned);
        self
    }
}

/// The user agent every request sends: sessions are created and refreshed from one "device", so
/// refreshes never trip the fingerprint check.
pub const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) flux-load/1 Chrome/120.0";

pub struct Conn {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection task ends by itself when the sender is dropped or the server closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { addr, sender })
    }

    /// Sends one request and reads the whole body.
    pub async fn send(&mut self, call: &Call) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut request = Request::builder()
            .method(call.method.clone())
            .uri(call.path)
            .header(header::HOST, self.addr.to_string())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT_LANGUAGE, "en-GB");
        if let Some(bearer) = &call.bearer {
            request = request.header(header::AUTHORIZATION, bearer);
        }
        if let Some(client) = &call.forwarded_for {
            request = request.header("x-forwarded-for", client);
        }
        if call.json.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(call.json.clone().unwrap_or_default()))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// A fresh connection to the same address (after the server closed this one).
    pub async fn reopen(&mut self) -> anyhow::Result<()> {
        *self = Self::open(self.addr).await?;
        Ok(())
    }
}

/// One request on a fresh connection, for setup and readiness polls.
pub async fn once(addr: SocketAddr, call: &Call) -> anyhow::Result<(StatusCode, Bytes)> {
    Conn::open(addr).await?.send(call).await
}
