//! The outbox's delivery rate: after the forgot-password points, the messages they queued are
//! delivered to whatever SMTP server the service was pointed at (`flux-load smtp-sink`), with no
//! other load; the service's own counters say how many went and how fast.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::http::{self, Call};
use crate::measure::rss_mb;
use crate::probes::metric;

/// How the backlog drained.
#[derive(Debug, Clone, Serialize)]
pub struct MailDrain {
    /// Messages waiting when the load stopped (the outbox's level and the lookups still queued).
    pub backlog: f64,
    /// Messages delivered from then until the last one.
    pub delivered: f64,
    pub seconds: f64,
    pub per_sec: f64,
    /// Whether the outbox was empty before the patience ran out.
    pub emptied: bool,
    pub rss_before_mb: f64,
    pub rss_after_mb: f64,
}

impl MailDrain {
    /// "N waiting when the load stopped; N delivered in S s = R messages/s; RSS A MB -> B MB",
    /// for the console and the report alike.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} waiting when the load stopped; {:.0} delivered in {:.1} s = {:.0} messages/s{}; RSS {:.1} MB -> {:.1} MB",
            self.backlog,
            self.delivered,
            self.seconds,
            self.per_sec,
            if self.emptied {
                ""
            } else {
                " (not emptied in time)"
            },
            self.rss_before_mb,
            self.rss_after_mb
        )
    }
}

struct Sample {
    at: Instant,
    sent: f64,
    pending: f64,
    waiting: f64,
}

async fn sample(addr: SocketAddr) -> Option<Sample> {
    let (_, body) = http::once(addr, &Call::get("/metrics")).await.ok()?;
    let body = String::from_utf8_lossy(&body);
    Some(Sample {
        at: Instant::now(),
        sent: metric(&body, "flux_auth_mail_sent_total")?,
        pending: metric(&body, "flux_auth_mail_pending")?,
        // Absent from a service that has no such queue.
        waiting: metric(&body, "flux_auth_mail_requests_waiting").unwrap_or(0.0),
    })
}

/// Watches the outbox until it is empty (or `patience` is over).
pub async fn measure(addr: SocketAddr, pid: u32, patience: Duration) -> Option<MailDrain> {
    let rss_before_mb = rss_mb(pid).unwrap_or(0.0);
    let first = sample(addr).await?;
    let backlog = first.pending + first.waiting;
    let mut last_change = (first.at, first.sent);
    let mut emptied = false;
    while first.at.elapsed() < patience {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(now) = sample(addr).await else {
            continue;
        };
        if now.sent > last_change.1 {
            last_change = (now.at, now.sent);
        }
        // The level is what the sender last counted; it counts again whenever it goes idle.
        if now.pending == 0.0
            && now.waiting == 0.0
            && now.at.duration_since(last_change.0) > Duration::from_secs(1)
        {
            emptied = true;
            break;
        }
    }
    let seconds = last_change.0.duration_since(first.at).as_secs_f64();
    let delivered = last_change.1 - first.sent;
    Some(MailDrain {
        backlog,
        delivered,
        seconds,
        per_sec: if seconds > 0.0 {
            delivered / seconds
        } else {
            0.0
        },
        emptied,
        rss_before_mb,
        rss_after_mb: rss_mb(pid).unwrap_or(0.0),
    })
}
