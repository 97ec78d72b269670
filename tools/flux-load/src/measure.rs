//! The measuring loops (closed loop at a fixed concurrency, and a paced probe), latency
//! percentiles, and what /proc says about the server while they run: peak RSS and CPU time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde::Serialize;

use crate::http::{Call, Conn};

/// What one worker does, request after request.
pub enum Job {
    /// The same request every time (health, me, login, the baseline).
    Fixed { call: Call, expect: StatusCode },
    /// Rotates its own refresh-token chain: each answer's token is the next request's.
    Refresh {
        token: String,
        client: Option<String>,
    },
    /// A new account per request.
    Signup { tag: String, n: u64 },
}

pub const PASSWORD: &str = "violet tractor hums at dawn";

impl Job {
    fn call(&mut self) -> (Call, StatusCode) {
        match self {
            Self::Fixed { call, expect } => (call.clone(), *expect),
            Self::Refresh { token, client } => (
                Call::post(
                    "/api/auth/refresh",
                    &serde_json::json!({ "refreshToken": token }),
                )
                .with_client(client.as_deref()),
                StatusCode::OK,
            ),
            Self::Signup { tag, n } => {
                *n += 1;
                let body = serde_json::json!({
                    "email": format!("{tag}-{n}@bench.example"),
                    "password": PASSWORD,
                    "name": "Load Tester",
                });
                (Call::post("/api/auth/signup", &body), StatusCode::CREATED)
            }
        }
    }

    fn answered(&mut self, body: &[u8]) {
        if let Self::Refresh { token, .. } = self
            && let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
            && let Some(next) = value.get("refreshToken").and_then(|t| t.as_str())
        {
            *token = next.to_owned();
        }
    }
}

/// Bounds every loop: the window, plus a cap on requests per worker in case the window is long
/// and the server impossibly fast.
#[derive(Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub duration: Duration,
    pub max_requests_per_worker: u64,
}

#[derive(Default)]
struct WorkerTally {
    latencies_us: Vec<u32>,
    errors: u64,
    error_samples: Vec<String>,
}

impl WorkerTally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.error_samples.len() < 3 {
            self.error_samples.push(what);
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Requests answered inside the window.
    pub n: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_samples: Vec<String>,
}

fn summarise(tallies: Vec<WorkerTally>, window: Duration) -> Latency {
    let mut all: Vec<u32> = Vec::new();
    let mut errors = 0;
    let mut error_samples = Vec::new();
    for t in tallies {
        all.extend(t.latencies_us);
        errors += t.errors;
        for s in t.error_samples {
            if error_samples.len() < 5 {
                error_samples.push(s);
            }
        }
    }
    all.sort_unstable();
    let pick = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        // Nearest rank.
        let rank = ((p * all.len() as f64).ceil() as usize).clamp(1, all.len());
        f64::from(all[rank - 1]) / 1000.0
    };
    Latency {
        n: all.len() as u64,
        rps: (all.len() as u64).saturating_sub(errors) as f64 / window.as_secs_f64(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        p999_ms: pick(0.999),
        max_ms: all.last().map_or(0.0, |us| f64::from(*us) / 1000.0),
        errors,
        error_samples,
    }
}

/// Every worker sends its next request as soon as the last one is answered. Returns the jobs
/// (refresh chains carry on in the next run) and the numbers for the window after the warm-up.
pub async fn closed_loop(addr: SocketAddr, jobs: Vec<Job>, window: Window) -> (Vec<Job>, Latency) {
    let start = Instant::now();
    let measure_from = start + window.warmup;
    let end = measure_from + window.duration;
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|job| tokio::spawn(worker(addr, job, measure_from, end, None, window)))
        .collect();
    collect(handles, window.duration).await
}

/// Like [`closed_loop`], but each worker sends on a fixed schedule (one request per `every`) and
/// latency counts from the scheduled send time, so a stalled server is not hidden by the probe
/// waiting for it (no coordinated omission).
pub async fn paced(
    addr: SocketAddr,
    jobs: Vec<Job>,
    every: Duration,
    window: Window,
) -> (Vec<Job>, Latency) {
    let start = Instant::now();
    let measure_from = start + window.warmup;
    let end = measure_from + window.duration;
    let count = jobs.len().max(1) as u32;
    let handles: Vec<_> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, job)| {
            // Spread the workers' schedules over one interval.
            let first = start + every / count * i as u32;
            tokio::spawn(worker(
                addr,
                job,
                measure_from,
                end,
                Some((first, every)),
                window,
            ))
        })
        .collect();
    collect(handles, window.duration).await
}

async fn collect(
    handles: Vec<tokio::task::JoinHandle<(Job, WorkerTally)>>,
    duration: Duration,
) -> (Vec<Job>, Latency) {
    let mut jobs = Vec::with_capacity(handles.len());
    let mut tallies = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok((job, tally)) => {
                jobs.push(job);
                tallies.push(tally);
            }
            Err(e) => {
                let mut tally = WorkerTally::default();
                tally.error(format!("worker failed: {e}"));
                tallies.push(tally);
            }
        }
    }
    (jobs, summarise(tallies, duration))
}

async fn worker(
    addr: SocketAddr,
    mut job: Job,
    measure_from: Instant,
    end: Instant,
    schedule: Option<(Instant, Duration)>,
    window: Window,
) -> (Job, WorkerTally) {
    let mut tally = WorkerTally::default();
    let mut conn = match Conn::open(addr).await {
        Ok(conn) => conn,
        Err(e) => {
            tally.error(format!("connect: {e}"));
            return (job, tally);
        }
    };
    let mut next_at = schedule.map(|(first, _)| first);
    for _ in 0..window.max_requests_per_worker {
        if let (Some(at), Some((_, every))) = (next_at, schedule) {
            tokio::time::sleep_until(at.into()).await;
            next_at = Some(at + every);
        }
        let started = Instant::now();
        if started >= end {
            break;
        }
        // The probe's latency counts from when the request was due, not when it went out.
        let due = match (next_at, schedule) {
            (Some(next), Some((_, every))) => next - every,
            _ => started,
        };
        let (call, expect) = job.call();
        let outcome = conn.send(&call).await;
        let done = Instant::now();
        // Counted when it completes inside the window, whenever it started: throughput is what
        // completes per second. Requiring it to start inside the window too would lose each
        // worker about one latency per point (the request in flight at each edge): nothing for
        // /me, but 10% of a 5 s login point at c=64, whose requests take ~0.55 s.
        let counted = done >= measure_from && done <= end;
        match outcome {
            Ok((status, body)) => {
                if status == expect {
                    job.answered(&body);
                } else if counted {
                    let text = String::from_utf8_lossy(&body);
                    tally.error(format!(
                        "{status}: {}",
                        text.chars().take(160).collect::<String>()
                    ));
                }
            }
            Err(e) => {
                if counted {
                    tally.error(format!("transport: {e}"));
                }
                if let Err(e) = conn.reopen().await {
                    tally.error(format!("reconnect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        }
        if counted {
            let us = done
                .duration_since(due)
                .as_micros()
                .min(u128::from(u32::MAX)) as u32;
            tally.latencies_us.push(us);
        }
    }
    (job, tally)
}

/// What the kernel says about the server process over one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcStats {
    /// Resident memory when the phase began: what the server already held (its data from the
    /// phases before, say) before this one added anything.
    pub start_rss_mb: f64,
    pub peak_rss_mb: f64,
    /// CPU time of the server process over wall time, in percent of one core.
    pub server_cpu_pct: f64,
    /// Busy time of the whole machine (every process: server, client, Postgres, Redis, others),
    /// in percent of all cores.
    pub machine_busy_pct: f64,
}

pub fn rss_mb(pid: u32) -> Option<f64> {
    status_kib(pid, "VmRSS:").map(|kib| kib as f64 / 1024.0)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// utime + stime of the process, in clock ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime of a `stat` line (a process's or a thread's).
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name can contain spaces; the fields after its closing parenthesis cannot.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// utime + stime of the server's password-hashing threads (named `argon2-N`; they live as long
/// as the process), in clock ticks.
pub fn hashing_ticks(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path();
        let named_argon2 = std::fs::read_to_string(path.join("comm"))
            .is_ok_and(|comm| comm.starts_with("argon2-"));
        if named_argon2 {
            total += stat_ticks(&std::fs::read_to_string(path.join("stat")).ok()?)?;
        }
    }
    Some(total)
}

/// (busy, total) ticks of all cores.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle and iowait.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Linux's USER_HZ on every architecture flux-auth runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// Runs `work` while sampling the server: its peak RSS (the kernel's high-water mark, reset at
/// the start, and 20 ms samples of VmRSS as a fallback) and its CPU time.
pub async fn observe<T>(
    pid: Option<u32>,
    work: impl std::future::Future<Output = T>,
) -> (T, ProcStats) {
    let Some(pid) = pid else {
        let m0 = machine_ticks();
        let out = work.await;
        let busy = busy_pct(m0, machine_ticks());
        return (
            out,
            ProcStats {
                machine_busy_pct: busy,
                ..ProcStats::default()
            },
        );
    };
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let start_rss_mb = rss_mb(pid).unwrap_or(0.0);
    let started = Instant::now();
    let t0 = process_ticks(pid);
    let m0 = machine_ticks();
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            loop {
                if let Some(mb) = rss_mb(pid) {
                    peak = peak.max(mb);
                }
                tokio::select! {
                    () = stop.cancelled() => return peak,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
    };
    let out = work.await;
    stop.cancel();
    let sampled = sampler.await.unwrap_or(0.0);
    let hwm = if hwm_reset {
        status_kib(pid, "VmHWM:").map_or(0.0, |kib| kib as f64 / 1024.0)
    } else {
        0.0
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (t0, process_ticks(pid)) {
        (Some(a), Some(b)) if elapsed > 0.0 => (b - a) as f64 / TICKS_PER_SEC / elapsed * 100.0,
        _ => 0.0,
    };
    (
        out,
        ProcStats {
            start_rss_mb,
            peak_rss_mb: hwm.max(sampled),
            server_cpu_pct: cpu,
            machine_busy_pct: busy_pct(m0, machine_ticks()),
        },
    )
}

fn busy_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0,
        _ => 0.0,
    }
}
