//! The results: one row per point, the machine, the ceilings, and the service's performance
//! targets checked as ratios within this run. Printed as a table and written as Markdown and JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::argon2_ceiling::Argon2Baseline;
use crate::measure::{Latency, ProcStats};

#[derive(Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    fn here() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub store: String,
    pub scenario: String,
    pub concurrency: usize,
    #[serde(flatten)]
    pub latency: Latency,
    #[serde(flatten)]
    pub proc: ProcStats,
    /// For login and signup: the argon2 baseline timed right before this point, its ceiling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argon2: Option<Argon2Baseline>,
}

#[derive(Debug, Serialize)]
pub struct StoreSummary {
    pub store: String,
    pub start_to_ready_ms: f64,
    pub idle_rss_mb: f64,
    pub idle_rss_after_mb: f64,
    /// The outbox's delivery rate after the forgot-password points, when they ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mail_drain: Option<crate::mail_drain::MailDrain>,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub load_average_start: String,
    pub load_average_end: String,
    pub duration_secs: u64,
    pub redis: bool,
    pub argon2: Option<Argon2Baseline>,
    pub stores: Vec<StoreSummary>,
    pub rows: Vec<Row>,
    pub targets: Vec<Target>,
    /// The /me targets against the bare handler plus the round trip a /me makes when its user is
    /// not in the service's memory (on Postgres, a user-cache miss).
    pub floors: Vec<String>,
}

const HEADER: &str = "store                 scenario                 conc      req/s    p50 ms    p99 ms  p99.9 ms   errors  peak RSS MB  server CPU%  machine busy%";

pub fn print_row(row: &Row) {
    let l = &row.latency;
    println!(
        "{:<21} {:<24} {:>4} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>12.1} {:>12.0} {:>14.0}",
        row.store,
        row.scenario,
        row.concurrency,
        l.rps,
        l.p50_ms,
        l.p99_ms,
        l.p999_ms,
        l.errors,
        row.proc.peak_rss_mb,
        row.proc.server_cpu_pct,
        row.proc.machine_busy_pct
    );
    for sample in &l.error_samples {
        println!("    error: {sample}");
    }
}

impl Report {
    pub fn new(command: String, load: String) -> Self {
        Self {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            command,
            machine: Machine::here(),
            load_average_start: load,
            load_average_end: String::new(),
            duration_secs: 0,
            redis: false,
            argon2: None,
            stores: Vec::new(),
            rows: Vec::new(),
            targets: Vec::new(),
            floors: Vec::new(),
        }
    }

    pub fn print_header(&self) {
        println!("\n{HEADER}");
    }

    fn row(&self, store: &str, scenario: &str, concurrency: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.store == store && r.scenario == scenario && r.concurrency == concurrency)
    }

    fn concurrencies(&self) -> Vec<usize> {
        let mut c: Vec<usize> = self
            .rows
            .iter()
            .filter(|r| !r.scenario.starts_with("mixed"))
            .map(|r| r.concurrency)
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    /// The service's performance targets, each as measured in this run.
    pub fn evaluate(&mut self) {
        let mut targets = Vec::new();
        let top = self.concurrencies().last().copied().unwrap_or(64);
        for (store, share) in [("postgres", 0.60), ("file", 0.75)] {
            for c in self.concurrencies() {
                if let (Some(me), Some(base)) =
                    (self.row(store, "me", c), self.row(store, "baseline-jwt", c))
                    && base.latency.rps > 0.0
                {
                    let ratio = me.latency.rps / base.latency.rps;
                    targets.push(Target {
                        what: format!("/me {store}, c={c}: share of the bare axum+JWT ceiling"),
                        target: format!(">= {:.0}%", share * 100.0),
                        measured: format!(
                            "{:.0}% ({:.0} of {:.0} req/s)",
                            ratio * 100.0,
                            me.latency.rps,
                            base.latency.rps
                        ),
                        met: ratio >= share,
                    });
                }
            }
        }
        if let Some(r) = self.row("postgres", "refresh", top) {
            targets.push(Target {
                what: format!("/refresh postgres, c={top}"),
                target: ">= 3000 req/s, p99 < 50 ms".into(),
                measured: format!("{:.0} req/s, p99 {:.1} ms", r.latency.rps, r.latency.p99_ms),
                met: r.latency.rps >= 3000.0 && r.latency.p99_ms < 50.0 && r.latency.errors == 0,
            });
        }
        if let Some(argon) = &self.argon2 {
            for store in ["postgres", "file"] {
                for scenario in ["login", "signup"] {
                    if let Some(r) = self.row(store, scenario, top) {
                        // The ceiling timed right before the point, else the one at the start.
                        let argon = r.argon2.as_ref().unwrap_or(argon);
                        let share = r.latency.rps / argon.ceiling_per_sec;
                        targets.push(Target {
                            what: format!(
                                "/{scenario} {store}, c={top}: share of the argon2 ceiling"
                            ),
                            target: ">= 85%".into(),
                            // The server's CPU per request next to one hash's time says
                            // how much of a login is the hash.
                            measured: format!(
                                "{:.0}% ({:.1} of {:.1}/s; {} hashing threads at once: {:.1}/s; \
                                 server CPU {:.1} ms per {scenario}, one hash alone {:.1} ms)",
                                share * 100.0,
                                r.latency.rps,
                                argon.ceiling_per_sec,
                                argon.cores,
                                argon.measured_parallel_per_sec,
                                r.proc.server_cpu_pct * 10.0 / r.latency.rps.max(f64::MIN_POSITIVE),
                                argon.hash_ms
                            ),
                            met: share >= 0.85 && r.latency.errors == 0,
                        });
                    }
                }
            }
        }
        for store in ["postgres", "file"] {
            if let Some(r) = self.row(store, "mixed: me probe 400/s", 4) {
                targets.push(Target {
                    what: format!("/me p99 during a login flood at c={top}, {store}"),
                    target: "< 20 ms".into(),
                    measured: format!(
                        "{:.1} ms (p50 {:.1} ms)",
                        r.latency.p99_ms, r.latency.p50_ms
                    ),
                    met: r.latency.p99_ms < 20.0 && r.latency.errors == 0,
                });
            }
            let flood = || {
                self.rows.iter().filter(|r| {
                    r.store == store && (r.scenario == "login" || r.scenario.starts_with("mixed"))
                })
            };
            let flood_peak = flood().map(|r| r.proc.peak_rss_mb).fold(0.0, f64::max);
            // What the server already held when the first login point began: on the file store,
            // mostly the tokens the refresh points rotated (kept for reuse detection).
            let before_flood = flood().next().map_or(0.0, |r| r.proc.start_rss_mb);
            if let Some(s) = self.stores.iter().find(|s| s.store == store) {
                targets.push(Target {
                    what: format!("idle RSS, {store} (after start; after the run)"),
                    target: "< 30 MB".into(),
                    measured: format!("{:.1} MB; {:.1} MB", s.idle_rss_mb, s.idle_rss_after_mb),
                    met: s.idle_rss_mb < 30.0 && s.idle_rss_after_mb < 30.0,
                });
                if flood_peak > 0.0 {
                    targets.push(Target {
                        what: format!("peak RSS during the login flood, {store}"),
                        target: "< 120 MB".into(),
                        measured: format!(
                            "{flood_peak:.1} MB ({before_flood:.1} MB already when the first login point began)"
                        ),
                        met: flood_peak < 120.0,
                    });
                }
                if store == "file" {
                    targets.push(Target {
                        what: "start to ready, file store".into(),
                        target: "< 300 ms".into(),
                        measured: format!("{:.0} ms", s.start_to_ready_ms),
                        met: s.start_to_ready_ms < 300.0,
                    });
                }
            }
        }
        self.targets = targets;
        let mut floors = Vec::new();
        // The file store's /me does no I/O. The Postgres store's reads its user from memory while
        // it follows Postgres's change announcements; this shows what a read from the database
        // (a cache miss, or every request without the cache) costs.
        for (store, floor_rows) in [("postgres", ["baseline-jwt+pg"])] {
            for c in self.concurrencies() {
                let (Some(me), Some(bare)) =
                    (self.row(store, "me", c), self.row(store, "baseline-jwt", c))
                else {
                    continue;
                };
                let Some(floor) = floor_rows.iter().find_map(|f| self.row(store, f, c)) else {
                    continue;
                };
                if bare.latency.rps <= 0.0 || floor.latency.rps <= 0.0 {
                    continue;
                }
                floors.push(format!(
                    "/me {store}, c={c}: the bare handler plus one Postgres SELECT of the user ({}: what a /me whose user is not in the service's memory pays) does {:.0} req/s = {:.0}% of the bare {:.0} req/s; flux-auth's /me does {:.0} req/s = {:.0}% of that",
                    floor.scenario,
                    floor.latency.rps,
                    floor.latency.rps / bare.latency.rps * 100.0,
                    bare.latency.rps,
                    me.latency.rps,
                    me.latency.rps / floor.latency.rps * 100.0
                ));
            }
        }
        self.floors = floors;
    }

    pub fn targets_text(&mut self) -> String {
        self.evaluate();
        let mut out = String::from("performance targets:\n");
        for t in &self.targets {
            let _ = writeln!(
                out,
                "  [{}] {}: {} (target {})",
                if t.met { "met" } else { "MISSED" },
                t.what,
                t.measured,
                t.target
            );
        }
        for f in &self.floors {
            let _ = writeln!(out, "  {f}");
        }
        out
    }

    pub fn markdown(&mut self) -> String {
        self.evaluate();
        let mut md = String::new();
        let _ = writeln!(md, "Date: {}  ", self.date);
        let _ = writeln!(md, "Command: `{}`  ", self.command);
        let _ = writeln!(
            md,
            "Machine: {} cores (`nproc`), {} (`lscpu`), Linux {}  ",
            self.machine.nproc, self.machine.cpu_model, self.machine.kernel
        );
        let _ = writeln!(
            md,
            "Load average (1/5/15 min) at start: {}; at end: {}  ",
            self.load_average_start, self.load_average_end
        );
        let _ = writeln!(
            md,
            "Each point: {} s measured after a warm-up; one keep-alive connection per unit of concurrency; client on one thread. Redis {}.\n",
            self.duration_secs,
            if self.redis {
                "configured (revocations)"
            } else {
                "not configured"
            }
        );
        if let Some(a) = &self.argon2 {
            let _ = writeln!(
                md,
                "argon2id m={} KiB, t={}, p={}: **{:.1} ms** per hash on one thread; ceiling {} cores ÷ {:.1} ms = **{:.1}/s**; measured with {} hashing threads at once: {:.1}/s.\n",
                a.memory_kib,
                a.iterations,
                a.parallelism,
                a.hash_ms,
                a.cores,
                a.hash_ms,
                a.ceiling_per_sec,
                a.cores,
                a.measured_parallel_per_sec
            );
        }
        md.push_str("| store | start to ready | idle RSS after start | idle RSS after the run |\n|---|---|---|---|\n");
        for s in &self.stores {
            let _ = writeln!(
                md,
                "| {} | {:.0} ms | {:.1} MB | {:.1} MB |",
                s.store, s.start_to_ready_ms, s.idle_rss_mb, s.idle_rss_after_mb
            );
        }
        for s in &self.stores {
            if let Some(d) = &s.mail_drain {
                let _ = writeln!(md, "\nOutbox delivery, {}: {}.", s.store, d.summary());
            }
        }
        md.push_str("\n| store | scenario | conc | req/s | p50 ms | p99 ms | p99.9 ms | errors | n | peak RSS MB | server CPU % | machine busy % |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let l = &r.latency;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} | {:.1} | {:.0} | {:.0} |",
                r.store,
                r.scenario,
                r.concurrency,
                l.rps,
                l.p50_ms,
                l.p99_ms,
                l.p999_ms,
                l.errors,
                l.n,
                r.proc.peak_rss_mb,
                r.proc.server_cpu_pct,
                r.proc.machine_busy_pct
            );
        }
        md.push_str("\n| performance target | goal | measured | |\n|---|---|---|---|\n");
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                t.what,
                t.target,
                t.measured,
                if t.met { "met" } else { "**missed**" }
            );
        }
        if !self.floors.is_empty() {
            md.push('\n');
            for f in &self.floors {
                let _ = writeln!(md, "- {f}");
            }
        }
        md
    }
}
