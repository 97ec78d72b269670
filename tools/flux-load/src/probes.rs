//! What the run asks of the servers it depends on: whether Redis and Postgres answer, and
//! whether the service's `/metrics` shows a value.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::http::{self, Call};

/// Whether the server checks revocations in its in-memory copy (it subscribes to Redis's channel
/// a moment after start); waits up to 5 s for it.
pub async fn revocations_mirrored(addr: SocketAddr) -> bool {
    metric_reaches(
        addr,
        "flux_auth_revocations_mirrored",
        1.0,
        Duration::from_secs(5),
    )
    .await
}

/// Whether the server's `/metrics` shows `name` at `value` within `patience`.
pub async fn metric_reaches(addr: SocketAddr, name: &str, value: f64, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    let prefix = format!("{name} ");
    while Instant::now() < deadline {
        if let Ok((_, body)) = http::once(addr, &Call::get("/metrics")).await
            && String::from_utf8_lossy(&body)
                .lines()
                .filter_map(|line| line.strip_prefix(prefix.as_str()))
                .any(|v| v.trim().parse::<f64>() == Ok(value))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A metric of a `/metrics` body (the first series of that name).
pub fn metric(body: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name} ");
    body.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// A metric of the server's `/metrics` now.
pub async fn metric_now(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http::once(addr, &Call::get("/metrics")).await.ok()?;
    metric(&String::from_utf8_lossy(&body), name)
}

pub async fn redis_answers(url: &str) -> bool {
    let Some(host_port) = url.strip_prefix("redis://").map(|rest| {
        rest.rsplit('@')
            .next()
            .unwrap_or(rest)
            .trim_end_matches('/')
    }) else {
        return false;
    };
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(host_port)
        )
        .await,
        Ok(Ok(_))
    )
}

pub async fn postgres_answers(url: &str) -> bool {
    use sqlx::Connection;
    match sqlx::PgConnection::connect(url).await {
        Ok(conn) => {
            let _ = conn.close().await;
            true
        }
        Err(_) => false,
    }
}
