//! The background writer: takes batches off the queue and writes each in one statement to
//! Postgres, or to the spool when the database is away (or absent: then the spool is the log).
//! While the database is down it probes with backoff (sooner when told the database answered
//! elsewhere, see `SecurityLogger::database_recovered`); when it is back it replays the spool in
//! order and deletes each file only after all its events are committed. On shutdown it drains the
//! queue to the database or the spool before returning.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::event::{EventType, SecurityEvent};
use super::logger::{Envelope, PipelineStats};
use super::postgres_sink::PgSink;
use super::spool::{self, Spool};

/// How long one database write may take before the batch goes to the spool instead.
const DB_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The same during shutdown, where the whole drain must fit in pm2's kill timeout.
const DRAIN_DB_TIMEOUT: Duration = Duration::from_millis(400);
/// The most events one spool append takes. An fsync costs about the same for 1 KB as for 1 MB
/// (BENCHMARKS.md, "Security log"), so while events go to the spool a batch takes
/// everything queued up to this, and throughput grows with load instead of stopping at
/// `batch_size` per fsync. Bounded: a batch holds at most this many events in memory.
pub const SPOOL_BATCH_MAX: usize = 4096;
const PROBE_MIN: Duration = Duration::from_millis(250);
const PROBE_MAX: Duration = Duration::from_secs(10);

pub struct Writer {
    pub rx: mpsc::Receiver<Envelope>,
    pub sink: Option<PgSink>,
    pub spool: Arc<Spool>,
    pub stats: Arc<PipelineStats>,
    pub batch_size: usize,
    pub linger: Duration,
    pub spool_max_bytes: u64,
    pub metrics: crate::metrics::Metrics,
    /// Notified when a probe elsewhere saw the database answer: probe now, not after the back-off.
    pub wake: Arc<Notify>,
}

/// When the writer next probes its database (and checks its spool), and how long it waits after
/// a probe that failed.
struct Schedule {
    next: Instant,
    wait: Duration,
    last: Option<Instant>,
    /// The last probe was brought forward by a wake-up.
    last_woken: bool,
    /// How soon after a probe brought forward by a wake-up the next wake-up may bring another:
    /// `PROBE_MIN`, doubling (to `PROBE_MAX`) with each such probe that failed, until a probe
    /// succeeds. Such a failure means the database answers others but not the writer (a
    /// read-only standby, where a ping works and an insert does not; the log's own database down
    /// while the user store's is up), and anyone may call `/health`: a flood of health checks
    /// must not become a flood of probes and replays.
    wake_wait: Duration,
    /// The probe now due was brought forward by a wake-up.
    woken: bool,
}

impl Schedule {
    fn new() -> Self {
        Self {
            next: Instant::now(),
            wait: PROBE_MIN,
            last: None,
            last_woken: false,
            wake_wait: PROBE_MIN,
            woken: false,
        }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// The database answered elsewhere: probe now rather than after the back-off, when the last
    /// probe was the schedule's (the database may have come back just after it failed), and no
    /// sooner than `wake_wait` after it when a wake-up brought it. The back-off itself is kept:
    /// if this probe fails too, the next scheduled wait is longer still.
    fn woken(&mut self) {
        let earliest = match self.last {
            Some(last) if self.last_woken => last + self.wake_wait,
            _ => Instant::now(),
        };
        if earliest < self.next {
            self.next = earliest;
            self.woken = true;
        }
    }

    /// Probe as soon as allowed (no sooner than `PROBE_MIN` after the last probe), and back off
    /// from the shortest wait again: events are being lost.
    fn hurry(&mut self) {
        self.wait = PROBE_MIN;
        let earliest = self.last.map_or_else(Instant::now, |t| t + PROBE_MIN);
        self.next = self.next.min(earliest);
    }

    fn probed(&mut self, ok: bool, healthy: bool) {
        let now = Instant::now();
        self.last = Some(now);
        self.wait = if ok {
            PROBE_MIN
        } else {
            (self.wait * 2).min(PROBE_MAX)
        };
        if ok {
            self.wake_wait = PROBE_MIN;
        } else if self.woken {
            self.wake_wait = (self.wake_wait * 2).min(PROBE_MAX);
        }
        self.last_woken = self.woken;
        self.woken = false;
        self.next = now + if healthy { Duration::ZERO } else { self.wait };
    }
}

impl Writer {
    pub async fn run(mut self, shutdown: CancellationToken) {
        if self.sink.is_some()
            && let Ok(files) = self.spool.sealed_files()
        {
            self.stats
                .spool_backlog
                .store(spool::count_lines(&files) as i64, Ordering::Relaxed);
        }
        let wake = self.wake.clone();
        let mut schedule = Schedule::new();
        let mut maintenance = tokio::time::interval(Duration::from_millis(200));
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                // The queue first: requests (in sync mode) wait on it, and anyone may call
                // `/health`, so wake-ups must not be able to starve it.
                first = self.rx.recv() => {
                    let Some(first) = first else { break };
                    if !self.healthy() {
                        // A wake-up that came with these events, and a probe that is due, come
                        // first: once the database is back the events go to it rather than to a
                        // spool that may be refusing them. Here too, so that a queue that never
                        // empties does not keep the writer from its probes.
                        if wake.notified().now_or_never().is_some() {
                            schedule.woken();
                        }
                        if schedule.due() {
                            self.probe(&mut schedule).await;
                        }
                    }
                    let batch = self.collect(first).await;
                    if !self.write(batch, DB_WRITE_TIMEOUT).await {
                        // Events are being lost: look for the database at the shortest interval.
                        schedule.hurry();
                    }
                }
                // The database answered elsewhere: probe without waiting out the back-off (a
                // probe may have failed a moment before it came back), but wake-ups' own probes
                // no closer than `PROBE_MIN`, and further apart each time one fails (see
                // `Schedule`). Wake-ups do not queue up, and once a probe succeeds they are
                // no-ops.
                () = wake.notified() => {
                    if !self.healthy() {
                        schedule.woken();
                        if schedule.due() {
                            self.probe(&mut schedule).await;
                        }
                    }
                }
                _ = maintenance.tick() => {
                    // The spool's state is checked on every tick, not with the back-off: health
                    // reports it, and it changes when disk space is freed, not when the database
                    // returns.
                    self.check_spool().await;
                    if schedule.due() {
                        self.probe(&mut schedule).await;
                    }
                }
            }
        }
        self.drain().await;
    }

    async fn probe(&mut self, schedule: &mut Schedule) {
        let ok = self.maintain().await;
        schedule.probed(ok, self.healthy());
        let backoff = if self.healthy() {
            0
        } else {
            schedule.wait.as_millis() as u64
        };
        self.stats
            .probe_backoff_ms
            .store(backoff, Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        self.stats.sink_healthy.load(Ordering::Relaxed)
    }

    /// True when the next batch will go to the spool (no database, or it is away).
    fn spooling(&self) -> bool {
        !(self.sink.as_ref().is_some_and(|s| s.db.is_ready()) && self.healthy())
    }

    async fn collect(&mut self, first: Envelope) -> Vec<Envelope> {
        // A database insert costs per row, so batch_size bounds its latency; an fsync does not.
        let limit = if self.spooling() {
            SPOOL_BATCH_MAX.max(self.batch_size)
        } else {
            self.batch_size
        };
        // Linger only for events nobody waits on: a sync-mode request (all of them carry an ack)
        // would pay the whole linger when it is alone, and under load the requests that arrive
        // during one write make up the next batch anyway (group commit without a timer). Nor
        // when a full batch is already queued. The linger is a sleep, not a receive: a receive
        // wakes the writer for every event a request sends (and `recv_many` returns with the
        // next one, which left batches of one or two events, each a statement and a commit).
        if first.ack.is_none() && !self.linger.is_zero() && self.rx.len() + 1 < self.batch_size {
            tokio::time::sleep(self.linger).await;
        }
        let mut batch = Vec::with_capacity(limit.min(1024));
        batch.push(first);
        while batch.len() < limit {
            match self.rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        batch
    }

    /// Writes one batch to the database if it is up, else to the spool; then answers each ack
    /// with whether the batch was kept, which it returns. A lost batch is counted and logged.
    /// Each event's log-line mirror is written here, off the request path.
    async fn write(&mut self, batch: Vec<Envelope>, db_timeout: Duration) -> bool {
        let (events, acks): (Vec<SecurityEvent>, Vec<_>) =
            batch.into_iter().map(|e| (e.event, e.ack)).unzip();
        for event in &events {
            super::logger::mirror(event);
        }
        let n = events.len();
        let kept = self.persist(events, db_timeout).await;
        if !kept {
            self.stats.note_dropped(n as u64);
            tracing::error!(events = n, dir = %self.spool.dir().display(),
                "security events lost: database unavailable and spool not writable");
        }
        for ack in acks.into_iter().flatten() {
            let _ = ack.send(kept);
        }
        if kept {
            self.report_drops(db_timeout).await;
        }
        kept
    }

    /// The database if it is up (and takes the batch in time), else the spool. Whether the
    /// events are kept.
    async fn persist(&mut self, events: Vec<SecurityEvent>, db_timeout: Duration) -> bool {
        if let Some(sink) = &self.sink
            && sink.db.is_ready()
            && self.healthy()
        {
            let refs: Vec<&SecurityEvent> = events.iter().collect();
            let started = std::time::Instant::now();
            let result = timeout(db_timeout, sink.insert(&refs)).await;
            self.metrics
                .log_batch_seconds
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(Ok(_)) => {
                    self.stats
                        .written
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats.mark_flushed();
                    return true;
                }
                Ok(Err(e)) => self.mark_unhealthy(&format!("{e}")),
                Err(_) => self.mark_unhealthy("write timed out"),
            }
        }
        self.spool_events(events).await
    }

    /// Once events can be written again, one `security_events_dropped` event says how many were
    /// lost since the last such report, and when (first and last). If it cannot be written
    /// either, the losses wait for the next report.
    async fn report_drops(&mut self, db_timeout: Duration) {
        let Some((count, first_ms, last_ms)) = self.stats.take_unreported_drops() else {
            return;
        };
        let at = |ms| {
            chrono::DateTime::from_timestamp_millis(ms)
                .map(crate::domain::format_timestamp)
                .unwrap_or_default()
        };
        let mut event = SecurityEvent::new(EventType::SecurityEventsDropped)
            .reason("sink_unavailable")
            .with("count", count)
            .with("firstAt", at(first_ms))
            .with("lastAt", at(last_ms));
        event.created_at = self.stats.clock.now();
        super::logger::mirror(&event);
        super::collector::count_event(&self.metrics, &event);
        if !self.persist(vec![event], db_timeout).await {
            self.stats.restore_unreported_drops(count, first_ms);
        }
    }

    fn mark_unhealthy(&self, why: &str) {
        if self.stats.sink_healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                "security log database unavailable; spooling events to disk"
            );
        }
    }

    /// Appends to the spool, retrying once into a fresh file. Whether the events are kept.
    async fn spool_events(&self, events: Vec<SecurityEvent>) -> bool {
        let spool = self.spool.clone();
        let n = events.len();
        let result = tokio::task::spawn_blocking(move || {
            spool.append(&events).or_else(|_| spool.append(&events))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        match result {
            Ok(_) => {
                self.stats.spooled.fetch_add(n as u64, Ordering::Relaxed);
                if self.sink.is_some() {
                    self.stats
                        .spool_backlog
                        .fetch_add(n as i64, Ordering::Relaxed);
                } else {
                    self.stats.written.fetch_add(n as u64, Ordering::Relaxed);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats.mark_flushed();
                }
                if self.stats.spool_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("security event spool writable again");
                }
                true
            }
            Err(e) => {
                if !self.stats.spool_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, dir = %self.spool.dir().display(),
                        "security event spool not writable");
                }
                false
            }
        }
    }

    /// Whether the spool takes a write now, checked while it is marked failing: the flag must say
    /// what is true now, also while the database takes every batch and nothing is spooled.
    async fn check_spool(&self) {
        if !self.stats.spool_failing.load(Ordering::Relaxed) {
            return;
        }
        let spool = self.spool.clone();
        let writable = tokio::task::spawn_blocking(move || spool.writable())
            .await
            .is_ok_and(|r| r.is_ok());
        if writable && self.stats.spool_failing.swap(false, Ordering::Relaxed) {
            tracing::info!("security event spool writable again");
        }
    }

    /// Probes the database when it is marked down and replays the spool when it is up, then
    /// reports earlier losses if there are any (and the spool takes writes again: every tick
    /// checks it). Returns whether the sink is healthy afterwards.
    async fn maintain(&mut self) -> bool {
        let healthy = self.check_sink().await;
        if healthy && !self.stats.spool_failing.load(Ordering::Relaxed) {
            self.report_drops(DB_WRITE_TIMEOUT).await;
        }
        healthy
    }

    async fn check_sink(&mut self) -> bool {
        let bytes = self.spool.bytes_on_disk();
        let over = bytes > self.spool_max_bytes;
        if over != self.stats.spool_over_cap.swap(over, Ordering::Relaxed) && over {
            tracing::error!(
                bytes,
                cap = self.spool_max_bytes,
                "security event spool is over its size cap; still writing (events are never dropped), free disk space or restore the database"
            );
        }
        let Some(sink) = self.sink.clone() else {
            return true;
        };
        if !sink.db.is_ready() {
            return false;
        }
        if !self.healthy() {
            self.stats.db_probes.fetch_add(1, Ordering::Relaxed);
            match timeout(DB_WRITE_TIMEOUT, sink.db.ping()).await {
                Ok(Ok(())) => {
                    self.stats.sink_healthy.store(true, Ordering::Relaxed);
                    tracing::info!("security log database reachable again; replaying the spool");
                }
                _ => return false,
            }
        }
        self.replay(&sink).await
    }

    /// Replays sealed spool files oldest first; stops at the first failure, leaving the file.
    async fn replay(&mut self, sink: &PgSink) -> bool {
        if self.stats.spool_backlog.load(Ordering::Relaxed) <= 0
            && self.spool.sealed_files().is_ok_and(|f| f.is_empty())
        {
            // Nothing sealed; events spilled into the open file are picked up on the next pass.
            self.spool.seal();
            return true;
        }
        self.spool.seal();
        let Ok(files) = self.spool.sealed_files() else {
            return true;
        };
        for path in files {
            let read = match tokio::task::spawn_blocking({
                let path = path.clone();
                move || spool::read_file(&path)
            })
            .await
            {
                Ok(Ok(read)) => read,
                _ => continue,
            };
            for chunk in read.events.chunks(self.batch_size.max(1)) {
                let refs: Vec<&SecurityEvent> = chunk.iter().collect();
                match timeout(DB_WRITE_TIMEOUT, sink.insert(&refs)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        self.mark_unhealthy(&e.to_string());
                        return false;
                    }
                    Err(_) => {
                        self.mark_unhealthy("replay timed out");
                        return false;
                    }
                }
            }
            let n = read.events.len() as u64;
            if self.spool.remove(&path).is_ok() {
                // Counted once, when the file is done (a replay retried after a failure reads
                // the same lines again).
                if read.bad_lines > 0 {
                    self.stats
                        .bad_spool_lines
                        .fetch_add(read.bad_lines as u64, Ordering::Relaxed);
                    tracing::warn!(file = %path.display(), skipped = read.bad_lines,
                        "skipped spool lines that did not parse (torn write after a crash?)");
                }
                self.stats.replayed.fetch_add(n, Ordering::Relaxed);
                self.stats.written.fetch_add(n, Ordering::Relaxed);
                // The backlog counts lines (at start it is `count_lines`), torn ones included.
                self.stats.spool_backlog.fetch_sub(
                    (read.events.len() + read.bad_lines) as i64,
                    Ordering::Relaxed,
                );
                self.stats.mark_flushed();
                tracing::info!(
                    events = n,
                    "replayed spooled security events into the database"
                );
            }
        }
        if self.stats.spool_backlog.load(Ordering::Relaxed) < 0 {
            self.stats.spool_backlog.store(0, Ordering::Relaxed);
        }
        true
    }

    /// Shutdown: whatever is queued goes to the database (briefly) or the spool.
    async fn drain(&mut self) {
        self.rx.close();
        let mut batch = Vec::new();
        while let Ok(envelope) = self.rx.try_recv() {
            batch.push(envelope);
            if batch.len() >= self.batch_size {
                self.write(std::mem::take(&mut batch), DRAIN_DB_TIMEOUT)
                    .await;
            }
        }
        if !batch.is_empty() {
            self.write(batch, DRAIN_DB_TIMEOUT).await;
        }
    }
}

#[cfg(test)]
mod tests;
