//! The security-event pipeline under stress, on the real `flux-auth` binary (docs/SECURITY.md group
//! H): `kill -9` in the middle of a burst (async and sync durability), SIGTERM under load, queue
//! overflow with a slow database, a spool over its size cap, a spool whose disk fills up (a small
//! tmpfs, so these tests run as root, as CI does), and the spool's permissions and the log mirror's
//! escaping of hostile input.
//!
//! Users live in JSON files and events in a Postgres database of the test's own, reached through a
//! `Forwarder` that the test cuts or slows down: the old production setup, where every auth request
//! keeps working while the events database is away.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flux_auth::security_log::SecurityEvent;
use flux_auth::security_log::spool::{is_spool_file, read_file};
use futures::future::join_all;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::forwarder::{Forwarder, postgres_addr, via};
use crate::helpers::*;
use crate::small_disk::SmallDisk;

/// The only timing assertion here: SIGTERM to exit. The service aims at 1.5 s (pm2 kills after
/// 1.6 s); 3 s leaves slack for a loaded machine while still catching a drain that hangs.
const STOP_BOUND: Duration = Duration::from_secs(3);
/// Upper bound for anything a test polls, so a broken pipeline fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(90);
/// How far resident memory may grow over its idle level while the queue overflows. Generous: the
/// service idles at a few tens of MiB and grows by under 10 MiB in this test; the point is
/// that the overflow sits on disk and not in memory.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

// ---- the service ------------------------------------------------------------------------------

/// What a service run needs; a restart uses the same folder and environment.
#[derive(Clone)]
struct Setup {
    /// Working directory; `data/` under it is `DATA_DIR`, so the spool is `data/security-events`.
    work: PathBuf,
    env: Vec<(String, String)>,
}

impl Setup {
    /// File store (in `work/data`), a random secret kept across restarts, no rate limits, cheap
    /// argon2 (bursts of logins stay quick), no session cap (so a login records exactly its own
    /// events) and no per-address summary of refused tokens (the loads here count one event per
    /// request). `events_db` is the security log's database, or `None` for a spool-only log.
    fn new(work: &Path, events_db: Option<&str>, extra: &[(&str, &str)]) -> Setup {
        let mut env: Vec<(String, String)> = [
            ("STORAGE", "file"),
            ("RATE_LIMITS", "off"),
            ("ARGON2_MEMORY_KIB", "7168"),
            ("ARGON2_ITERATIONS", "1"),
            ("MAX_SESSIONS_PER_USER", "1000"),
            ("DATABASE_CONNECT_TIMEOUT_MS", "1000"),
            ("TOKEN_FAILURE_LOG_THRESHOLD", "0"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        env.push(("JWT_SECRET".into(), random_secret()));
        if let Some(url) = events_db {
            env.push(("SECURITY_LOG_DATABASE_URL".into(), url.to_owned()));
        }
        for (k, v) in extra {
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        Setup {
            work: work.to_owned(),
            env,
        }
    }

    fn spool_dir(&self) -> PathBuf {
        self.work.join("data").join("security-events")
    }
}

/// The `flux-auth` binary on a free loopback port, started under `umask 000` so that the modes of
/// what it creates are its own doing. Killed if the test drops it.
struct Service {
    process: FluxAuth,
    client: Client,
}

impl std::ops::Deref for Service {
    type Target = FluxAuth;

    fn deref(&self) -> &FluxAuth {
        &self.process
    }
}

impl std::ops::DerefMut for Service {
    fn deref_mut(&mut self) -> &mut FluxAuth {
        &mut self.process
    }
}

impl Service {
    /// Starts the binary and waits until `/health/live` answers.
    async fn start(setup: &Setup, name: &str) -> Service {
        let process = Launch::new(&setup.work)
            .named(name)
            .launched_by("/bin/sh", &["-c", "umask 000 && exec \"$0\""])
            .envs(setup.env.iter().map(|(k, v)| (k, v)))
            .patience(PATIENCE)
            .start()
            .await;
        Service {
            process,
            client: Client::new(),
        }
    }

    /// The first JSON log line whose message contains `text`, waited for: the log writer thread
    /// may write it a moment after the metric that announces the same condition.
    async fn log_line(&self, text: &str) -> Value {
        let what = format!("a log line with {text:?}");
        eventually_ok(&what, PATIENCE, || async {
            let found = self
                .stdout_text()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["message"].as_str().is_some_and(|m| m.contains(text)));
            found.ok_or_else(|| self.logs())
        })
        .await
    }

    async fn health(&self) -> Value {
        let response = self.client.get(self.url("/health")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    }

    /// One sample of a metric without labels, from `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        metric_value(&text, name).unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    /// Waits until health says the events database answers and its migrations ran.
    async fn wait_for_database(&self) {
        eventually_ok("the events database to be ready", PATIENCE, || async {
            let health = self.health().await;
            when(health["checks"]["database"] == "ok", (), health)
        })
        .await;
    }

    /// Resident memory of the process, from /proc.
    fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid)
    }

    /// Sends SIGTERM and waits for the exit: returns it and the time from signal to exit.
    async fn terminate(&mut self) -> (ExitStatus, Duration) {
        self.stop("TERM").await
    }

    fn assert_no_panic(&self) {
        let logs = self.logs();
        assert!(!logs.contains("panicked"), "a panic:\n{logs}");
    }
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(name))
            .then(|| parts.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---- load -------------------------------------------------------------------------------------

/// Builds request `i` of a load against the service at `base`.
type MakeRequest = Arc<dyn Fn(&Client, &str, usize) -> RequestBuilder + Send + Sync>;

/// A response the client received: its request id (`{prefix}-{i}`) and status.
#[derive(Debug, Clone)]
struct Answer {
    id: String,
    index: usize,
    status: StatusCode,
}

/// Concurrent request loops against one service, each request with its own `X-Request-Id`.
struct Load {
    stop: CancellationToken,
    answers: Arc<Mutex<Vec<Answer>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, prefix: &str, workers: usize, total: usize, make: MakeRequest) -> Load {
        let stop = CancellationToken::new();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let client = Client::new();
        let workers = (0..workers)
            .map(|_| {
                let (stop, answers, next, client, make) = (
                    stop.clone(),
                    answers.clone(),
                    next.clone(),
                    client.clone(),
                    make.clone(),
                );
                let (base, prefix) = (base.to_owned(), prefix.to_owned());
                tokio::spawn(async move {
                    loop {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        if index >= total || stop.is_cancelled() {
                            return;
                        }
                        let id = format!("{prefix}-{index}");
                        let sent = make(&client, &base, index)
                            .header("x-request-id", &id)
                            .send();
                        let sent = tokio::select! {
                            sent = sent => sent,
                            () = stop.cancelled() => return,
                        };
                        match sent {
                            Ok(response) => {
                                let echoed = response
                                    .headers()
                                    .get("x-request-id")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned);
                                assert_eq!(echoed.as_deref(), Some(id.as_str()));
                                answers.lock().unwrap().push(Answer {
                                    id,
                                    index,
                                    status: response.status(),
                                });
                            }
                            // Refused or reset: the service is gone or going.
                            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            answers,
            workers,
        }
    }

    fn answered(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    /// Waits until `n` requests were answered; fails if the service exits first.
    async fn until_answered(&self, n: usize, service: &mut Service) {
        let deadline = Instant::now() + PATIENCE;
        while self.answered() < n {
            if let Some(status) = service.child.try_wait().unwrap() {
                panic!(
                    "flux-auth exited with {status} under load\n{}",
                    service.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "only {} answered",
                self.answered()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the loops and returns every answer received.
    async fn stop(self) -> Vec<Answer> {
        self.stop.cancel();
        self.finish().await
    }

    /// Waits for the loops to send their `total` requests and returns the answers.
    async fn finish(self) -> Vec<Answer> {
        for worker in join_all(self.workers).await {
            worker.expect("load worker");
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

/// `GET /api/auth/me` with a token that is not one: 401 and `token_verification_failed`.
fn bad_token_me() -> MakeRequest {
    Arc::new(|client, base, _| {
        client
            .get(format!("{base}/api/auth/me"))
            .header("user-agent", UA)
            .bearer_auth("not-a.real.token")
    })
}

/// Logins in turn: an unknown email (401), the right password (200), a wrong one (401).
fn mixed_logins(email: &str) -> MakeRequest {
    let email = email.to_owned();
    Arc::new(move |client, base, i| {
        let body = match i % 3 {
            0 => json!({ "email": format!("nobody-{i}@example.com"), "password": PASSWORD }),
            1 => json!({ "email": email, "password": PASSWORD }),
            _ => json!({ "email": email, "password": "not the password at all" }),
        };
        client
            .post(format!("{base}/api/auth/login"))
            .header("user-agent", UA)
            .json(&body)
    })
}

/// The events a `mixed_logins` request records, given its answer.
fn login_events(answer: &Answer) -> Vec<&'static str> {
    let mut types = match (answer.index % 3, answer.status) {
        (0, StatusCode::UNAUTHORIZED) => vec!["login_failed"],
        (1, StatusCode::OK) => vec!["login_success", "token_generated"],
        (2, StatusCode::UNAUTHORIZED) => vec!["failed_login_attempt"],
        other => panic!("unexpected answer {other:?} to {}", answer.id),
    };
    types.sort_unstable();
    types
}

// ---- the events table and the spool -----------------------------------------------------------

/// Event types by request id, for requests whose id starts with `prefix-`, straight from the table.
async fn table_events_by_request(db: &TestDb, prefix: &str) -> HashMap<String, Vec<String>> {
    let pool = db.pool().await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT metadata->>'requestId', event_type FROM security_events \
         WHERE starts_with(metadata->>'requestId', $1)",
    )
    .bind(format!("{prefix}-"))
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut by_request: HashMap<String, Vec<String>> = HashMap::new();
    for (request, event_type) in rows {
        by_request.entry(request).or_default().push(event_type);
    }
    for types in by_request.values_mut() {
        types.sort_unstable();
    }
    by_request
}

async fn table_ids(db: &TestDb) -> Vec<Uuid> {
    let pool = db.pool().await;
    let ids = sqlx::query_scalar("SELECT id FROM security_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    ids
}

/// Event types of `events` by request id, for requests whose id starts with `prefix-`.
fn spool_events_by_request(events: &[SecurityEvent], prefix: &str) -> HashMap<String, Vec<String>> {
    let mut by_request: HashMap<String, Vec<String>> = HashMap::new();
    for e in events {
        if let Some(request) = e.metadata.get("requestId").and_then(Value::as_str)
            && request.starts_with(&format!("{prefix}-"))
        {
            by_request
                .entry(request.to_owned())
                .or_default()
                .push(e.event_type.as_str().to_owned());
        }
    }
    for types in by_request.values_mut() {
        types.sort_unstable();
    }
    by_request
}

fn spool_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_spool_file(p))
        .collect();
    files.sort();
    files
}

/// Every complete event in the spool, and how many lines did not parse.
fn read_spool(dir: &Path) -> (Vec<SecurityEvent>, usize) {
    let mut events = Vec::new();
    let mut bad = 0;
    for file in spool_files(dir) {
        let read = read_file(&file).unwrap();
        events.extend(read.events);
        bad += read.bad_lines;
    }
    (events, bad)
}

// ---- H2/H4: kill -9 mid-burst -----------------------------------------------------------------

/// Cuts the events database, sends a burst of logins, `kill -9`s the service in the middle of it,
/// restores the database and restarts on the same folder, kills that again in the middle of its
/// replay, and restarts once more. Asserts that the spool replays every complete line exactly
/// once, skips and counts a torn line, and (in `sync` mode) that every event of every answered
/// request is in the table.
async fn kill_9_mid_burst(durability: &str) {
    if !postgres_available().await {
        return;
    }
    let db = TestDb::create().await;
    let forwarder = Forwarder::start(postgres_addr().await).await;
    let work = tempfile::tempdir().unwrap();
    let setup = Setup::new(
        work.path(),
        Some(&via(&db.url, forwarder.addr())),
        &[("SECURITY_LOG_DURABILITY", durability)],
    );
    let prefix = format!("kill9-{durability}");
    let mut first = Service::start(&setup, "first").await;
    first.wait_for_database().await;
    let email = unique_email();
    let signup = first
        .client
        .post(first.url("/api/auth/signup"))
        .header("user-agent", UA)
        .json(&json!({ "email": email, "password": PASSWORD, "name": "Kill Nine" }))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), StatusCode::CREATED, "{}", first.logs());

    forwarder.cut();
    let load = Load::start(&first.base, &prefix, 16, 100_000, mixed_logins(&email));
    load.until_answered(150, &mut first).await;
    first.kill_9();
    let status = first.child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "killed, not exited: {status}");
    let answers = load.stop().await;
    first.assert_no_panic();

    // What the crash left: complete lines, and perhaps a torn one. A kill cannot tear a line
    // written with one `write` reliably, so the test appends half a line itself, as a crash in
    // the middle of a write (or a power cut) leaves it.
    let spool_dir = setup.spool_dir();
    let files = spool_files(&spool_dir);
    let newest = files.last().expect("the outage's events were spooled");
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(newest)
        .unwrap();
    std::io::Write::write_all(&mut torn, br#"{"id":"0190a1b2-c3d4-7e5f-8a9b-"#).unwrap();
    drop(torn);
    let (spooled, bad_lines) = read_spool(&spool_dir);
    assert!(bad_lines >= 1, "the torn line is there to be skipped");
    let spooled_ids: HashSet<Uuid> = spooled.iter().map(|e| e.id).collect();
    let spooled_by_request = spool_events_by_request(&spooled, &prefix);
    eprintln!(
        "[{durability}] {} answered before kill -9; spool holds {} events in {} files, {bad_lines} bad line(s)",
        answers.len(),
        spooled.len(),
        files.len(),
    );

    // Restart on a slow link with small batches, and kill -9 again in the middle of the replay:
    // some of the file's events are committed, the file is still there (it is deleted only after
    // all of them are).
    forwarder.restore();
    forwarder.slow(Duration::from_millis(100));
    let spooled_list: Vec<Uuid> = spooled_ids.iter().copied().collect();
    let mut small_batches = setup.clone();
    small_batches
        .env
        .push(("SECURITY_LOG_BATCH_SIZE".into(), "20".into()));
    let mut replaying = Service::start(&small_batches, "replaying").await;
    let committed = |ids: Vec<Uuid>| {
        let ids: HashSet<Uuid> = ids.into_iter().collect();
        spooled_list.iter().filter(|id| ids.contains(id)).count()
    };
    eventually_ok("the replay to begin", PATIENCE, || async {
        let present = committed(table_ids(&db).await);
        when(present > 0, (), "none of the spool in the table yet")
    })
    .await;
    replaying.kill_9();
    replaying.child.wait().await.unwrap();
    replaying.assert_no_panic();
    let present = committed(table_ids(&db).await);
    eprintln!(
        "[{durability}] killed during replay with {present} of {} spooled events committed",
        spooled_list.len()
    );
    assert!(
        present < spooled_list.len() && !spool_files(&spool_dir).is_empty(),
        "the kill landed in the middle of the replay ({present} committed)"
    );

    forwarder.slow(Duration::ZERO);
    let mut second = Service::start(&setup, "second").await;
    eventually_ok("the spool to replay into the table", PATIENCE, || async {
        let in_table: HashSet<Uuid> = table_ids(&db).await.into_iter().collect();
        let missing = spooled_list
            .iter()
            .filter(|id| !in_table.contains(id))
            .count();
        let files = spool_files(&spool_dir).len();
        let health = second.health().await;
        when(
            missing == 0
                && files == 0
                && health["checks"]["securityLog"]["spooled"] == 0
                && health["status"] == "ok",
            (),
            format!("{missing} spooled events not in the table, {files} spool files, {health}"),
        )
    })
    .await;
    assert!(
        second.child.try_wait().unwrap().is_none(),
        "the restarted service runs"
    );
    second.assert_no_panic();
    assert_eq!(
        second
            .metric("flux_auth_security_log_spool_bad_lines_total")
            .await,
        bad_lines as f64,
        "the torn line is skipped and counted"
    );
    let health = second.health().await;
    assert_eq!(health["checks"]["securityLog"]["dropped"], 0, "{health}");

    // Each event once: ids are unique (the primary key), and no request has an event twice.
    let ids = table_ids(&db).await;
    let distinct: HashSet<&Uuid> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
    let table = table_events_by_request(&db, &prefix).await;
    for (request, types) in &table {
        let unique: HashSet<&String> = types.iter().collect();
        assert_eq!(unique.len(), types.len(), "{request} twice: {types:?}");
    }
    // Every complete spooled line made it, with the same events per request.
    for (request, types) in &spooled_by_request {
        let mut in_table = table.get(request).cloned().unwrap_or_default();
        in_table.sort_unstable();
        assert_eq!(&in_table, types, "{request}: spool vs table");
    }
    // The answered requests: in sync mode every one's events are there; in async mode those
    // still in memory at the kill may be lost, and are counted.
    let mut lost = Vec::new();
    for answer in &answers {
        let expected = login_events(answer);
        let mut got = table.get(&answer.id).cloned().unwrap_or_default();
        got.sort_unstable();
        if got != expected {
            // Lost ones are missing, never altered: what is there is a part of what was recorded
            // (a request's two events can straddle a batch boundary).
            assert!(
                got.iter().all(|t| expected.contains(&t.as_str())),
                "{}: {got:?} instead of {expected:?}",
                answer.id
            );
            lost.push(answer.id.clone());
        }
    }
    eprintln!(
        "[{durability}] answered requests whose events did not survive kill -9: {} of {}",
        lost.len(),
        answers.len()
    );
    if durability == "sync" {
        assert!(
            lost.is_empty(),
            "sync mode lost acknowledged events: {lost:?}"
        );
    }
}

#[tokio::test]
async fn kill_9_mid_burst_replays_the_spool_once_and_skips_a_torn_line() {
    kill_9_mid_burst("async").await;
}

#[tokio::test]
async fn kill_9_mid_burst_in_sync_mode_loses_no_event_of_an_answered_request() {
    kill_9_mid_burst("sync").await;
}

// ---- kill -9 during signups in sync mode -------------------------------------------------------

/// Signups, each with an email of its own.
fn signups() -> MakeRequest {
    Arc::new(|client, base, i| {
        client
            .post(format!("{base}/api/auth/signup"))
            .header("user-agent", UA)
            .json(&json!({ "email": format!("burst-{i}@example.com"), "password": PASSWORD, "name": "Burst" }))
    })
}

/// The ids of the accounts the store holds: users.json's, or the users table's.
async fn account_ids(setup: &Setup, users_db: Option<&TestDb>) -> Vec<String> {
    match users_db {
        Some(db) => {
            let pool = db.pool().await;
            let ids = sqlx::query_scalar("SELECT id FROM users")
                .fetch_all(&pool)
                .await
                .unwrap();
            pool.close().await;
            ids
        }
        None => {
            let path = setup.work.join("data").join("users.json");
            let file: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            file["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].as_str().unwrap().to_owned())
                .collect()
        }
    }
}

/// Sync durability, the events database slowed to 200 ms per network chunk, a burst of signups and
/// `kill -9` in the middle of it: every account that exists afterwards has its `signup_success`
/// (in the table or the spool). On the file store, and on Postgres with the users in a database
/// of their own reached directly.
#[tokio::test]
async fn kill_9_during_signups_in_sync_mode_leaves_no_account_without_its_event() {
    if !postgres_available().await {
        return;
    }
    for backend in BACKENDS {
        let events_db = TestDb::create().await;
        let users_db = match backend {
            Backend::Postgres => Some(TestDb::create().await),
            Backend::File => None,
        };
        let forwarder = Forwarder::start(postgres_addr().await).await;
        let work = tempfile::tempdir().unwrap();
        let mut extra = vec![("SECURITY_LOG_DURABILITY", "sync")];
        if let Some(db) = &users_db {
            extra.extend([("STORAGE", "postgres"), ("DATABASE_URL", db.url.as_str())]);
        }
        let setup = Setup::new(
            work.path(),
            Some(&via(&events_db.url, forwarder.addr())),
            &extra,
        );
        let mut service = Service::start(&setup, "service").await;
        service.wait_for_database().await;

        // Slow enough that at any moment most signups wait for their event.
        forwarder.slow(Duration::from_millis(200));
        let load = Load::start(&service.base, "signup", 8, 100_000, signups());
        load.until_answered(5, &mut service).await;
        // Kill while several accounts exist whose requests have not been answered yet: they are
        // between the account's write and the end of their request.
        eventually_ok("accounts ahead of the answers", PATIENCE, || async {
            let ahead = account_ids(&setup, users_db.as_ref()).await.len();
            let answered = load.answered();
            when(
                ahead >= answered + 4,
                (),
                format!("{ahead} accounts, {answered} answered"),
            )
        })
        .await;
        service.kill_9();
        service.child.wait().await.unwrap();
        let answers = load.stop().await;
        service.assert_no_panic();
        forwarder.slow(Duration::ZERO);

        let accounts = account_ids(&setup, users_db.as_ref()).await;
        let (spooled, _) = read_spool(&setup.spool_dir());
        let recorded: HashSet<String> = events_from_postgres(&events_db)
            .await
            .into_iter()
            .chain(spooled)
            .filter(|e| e.event_type.as_str() == "signup_success")
            .filter_map(|e| e.user_id)
            .collect();
        let missing: Vec<&String> = accounts
            .iter()
            .filter(|id| !recorded.contains(*id))
            .collect();
        eprintln!(
            "[{backend:?}] {} signups answered before kill -9; {} accounts, {} without signup_success",
            answers.len(),
            accounts.len(),
            missing.len()
        );
        assert!(accounts.len() >= 5, "{backend:?}");
        assert!(
            missing.is_empty(),
            "{backend:?}: accounts without their creation event: {missing:?}"
        );
    }
}

// ---- H8: SIGTERM under load -------------------------------------------------------------------

#[tokio::test]
async fn sigterm_under_load_exits_0_in_time_and_loses_nothing() {
    if !postgres_available().await {
        return;
    }
    let db = TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let setup = Setup::new(work.path(), Some(&db.url), &[]);
    let mut service = Service::start(&setup, "service").await;
    service.wait_for_database().await;
    let pid = service.pid;

    let load = Load::start(&service.base, "term", 16, 1_000_000, bad_token_me());
    load.until_answered(300, &mut service).await;
    let (status, took) = service.terminate().await;
    let answers = load.stop().await;
    let drain_ms = service
        .stdout_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "flux-auth stopped")
        .map(|l| l["drain_ms"].clone());
    eprintln!(
        "SIGTERM under load: {status} {took:?} after the signal (drain_ms {drain_ms:?}), {} requests answered",
        answers.len()
    );
    assert_eq!(status.code(), Some(0), "{}", service.logs());
    assert!(
        took < STOP_BOUND,
        "SIGTERM took {took:?}\n{}",
        service.logs()
    );
    service.assert_no_panic();

    // The sink is the table, or the spool for whatever the drain could not write in time.
    let table = table_events_by_request(&db, "term").await;
    let (spooled, bad) = read_spool(&setup.spool_dir());
    assert_eq!(bad, 0);
    let spooled_by_request = spool_events_by_request(&spooled, "term");
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.id);
        let mut got = table.get(&answer.id).cloned().unwrap_or_default();
        got.extend(
            spooled_by_request
                .get(&answer.id)
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(
            got,
            ["token_verification_failed"],
            "{}: the event of an answered request",
            answer.id
        );
    }
    let pool = db.pool().await;
    let stopped: Vec<Value> = sqlx::query_scalar(
        "SELECT metadata FROM security_events WHERE event_type = 'service_stopped'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let stopped_in_spool = spooled
        .iter()
        .filter(|e| e.event_type.as_str() == "service_stopped")
        .count();
    assert_eq!(
        stopped.len() + stopped_in_spool,
        1,
        "service_stopped once: {stopped:?}"
    );
    if let Some(meta) = stopped.first() {
        assert_eq!(meta["pid"], pid);
    }
    eprintln!(
        "SIGTERM drain: {} events of answered requests in the table, {} in the spool",
        table.len(),
        spooled_by_request.len()
    );
}

// ---- H7: queue overflow with a slow database --------------------------------------------------

/// A queue of 16 events in front of a database slowed to 20 ms per network chunk, and 4,000 events
/// (250 times the queue): the overflow goes to the spool, nothing is dropped, everything reaches
/// the table once, and resident memory stays within `RSS_GROWTH_BOUND_KIB` of its idle level.
#[tokio::test]
async fn queue_overflow_with_a_slow_database_spills_to_the_spool_and_drops_nothing() {
    if !postgres_available().await {
        return;
    }
    let db = TestDb::create().await;
    let forwarder = Forwarder::start(postgres_addr().await).await;
    let work = tempfile::tempdir().unwrap();
    let setup = Setup::new(
        work.path(),
        Some(&via(&db.url, forwarder.addr())),
        &[("SECURITY_LOG_QUEUE_CAPACITY", "16")],
    );
    let mut service = Service::start(&setup, "service").await;
    service.wait_for_database().await;
    let idle_rss = service.rss_kib().expect("VmRSS");

    forwarder.slow(Duration::from_millis(20));
    let sampling = CancellationToken::new();
    let sampler = {
        let (stop, pid) = (sampling.clone(), service.pid);
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.is_cancelled() {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    const TOTAL: usize = 4000;
    let load = Load::start(&service.base, "flood", 32, TOTAL, bad_token_me());
    load.until_answered(TOTAL, &mut service).await;
    let answers = load.finish().await;
    assert_eq!(answers.len(), TOTAL, "every request answered");
    assert!(
        answers.iter().all(|a| a.status == StatusCode::UNAUTHORIZED),
        "every request answered as usual"
    );
    let spooled = service
        .metric("flux_auth_security_log_events_spooled_total")
        .await;
    assert!(spooled > 0.0, "the overflow went to the spool");

    // Still slow: the replay works its way through the same slow link.
    let prefix = "flood";
    eventually_ok("every event in the table", PATIENCE, || async {
        let table = table_events_by_request(&db, prefix).await;
        let health = service.health().await;
        when(
            table.len() == TOTAL
                && health["checks"]["securityLog"]["spooled"] == 0
                && health["checks"]["securityLog"]["queued"] == 0,
            (),
            format!("{} of {TOTAL} requests in the table, {health}", table.len()),
        )
    })
    .await;
    sampling.cancel();
    let peak_rss = sampler.await.unwrap();
    let table = table_events_by_request(&db, prefix).await;
    for answer in &answers {
        assert_eq!(
            table.get(&answer.id).map(Vec::as_slice),
            Some(&["token_verification_failed".to_owned()][..]),
            "{} exactly once",
            answer.id
        );
    }
    let health = service.health().await;
    assert_eq!(health["checks"]["securityLog"]["dropped"], 0, "{health}");
    assert_eq!(
        service
            .metric("flux_auth_security_log_events_dropped_total")
            .await,
        0.0
    );
    eprintln!(
        "overflow: {TOTAL} events through a queue of 16, {spooled} spooled; VmRSS idle {idle_rss} KiB, peak {peak_rss} KiB"
    );
    assert!(
        peak_rss < idle_rss + RSS_GROWTH_BOUND_KIB,
        "peak VmRSS {peak_rss} KiB, idle {idle_rss} KiB: grew by more than {RSS_GROWTH_BOUND_KIB} KiB"
    );
    service.assert_no_panic();
}

// ---- H5/H9: a spool over its cap --------------------------------------------------------------

#[tokio::test]
async fn a_spool_over_its_cap_raises_the_alarm_and_still_writes_every_event() {
    if !postgres_available().await {
        return;
    }
    let db = TestDb::create().await;
    let forwarder = Forwarder::start(postgres_addr().await).await;
    let work = tempfile::tempdir().unwrap();
    let setup = Setup::new(
        work.path(),
        Some(&via(&db.url, forwarder.addr())),
        &[("SECURITY_LOG_SPOOL_MAX_BYTES", "4096")],
    );
    let mut service = Service::start(&setup, "service").await;
    service.wait_for_database().await;
    let over_cap = "flux_auth_security_log_spool_over_cap";
    assert_eq!(service.metric(over_cap).await, 0.0);

    forwarder.cut();
    let early = Load::start(&service.base, "cap", 4, 40, bad_token_me());
    early.until_answered(40, &mut service).await;
    early.finish().await;
    let health = eventually_ok("the over-cap alarm", PATIENCE, || async {
        let health = service.health().await;
        let over = service.metric(over_cap).await;
        when(over == 1.0, health, format!("{over_cap} {over}"))
    })
    .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(
        health["checks"]["securityLog"]["healthy"], false,
        "{health}"
    );
    let alarm = service.log_line("over its size cap").await;
    assert_eq!(alarm["level"], "ERROR", "{alarm}");

    // Over the cap the policy is to keep writing: auth answers as usual and nothing is dropped.
    let late = Load::start(&service.base, "cap-late", 4, 20, bad_token_me());
    late.until_answered(20, &mut service).await;
    let late = late.finish().await;
    assert!(late.iter().all(|a| a.status == StatusCode::UNAUTHORIZED));
    let spool_dir = setup.spool_dir();
    eventually_ok("the late events in the spool", PATIENCE, || async {
        let (events, _) = read_spool(&spool_dir);
        let late = spool_events_by_request(&events, "cap-late").len();
        when(
            late == 20,
            (),
            format!("{late} of 20 late events in the spool"),
        )
    })
    .await;
    assert_eq!(
        service
            .metric("flux_auth_security_log_events_dropped_total")
            .await,
        0.0
    );

    forwarder.restore();
    eventually_ok(
        "the spool to drain and the alarm to clear",
        PATIENCE,
        || async {
            let health = service.health().await;
            let over = service.metric(over_cap).await;
            when(
                health["status"] == "ok" && over == 0.0,
                (),
                format!("{over_cap} {over}, {health}"),
            )
        },
    )
    .await;
    let table = table_events_by_request(&db, "cap").await;
    assert_eq!(
        table.keys().filter(|k| !k.starts_with("cap-late-")).count(),
        40
    );
    assert_eq!(table_events_by_request(&db, "cap-late").await.len(), 20);
    assert!(spool_files(&spool_dir).is_empty());
    service.assert_no_panic();
}

// ---- H5/H6: the spool's disk fills up ---------------------------------------------------------

/// The spool is the log (no database) and its disk fills up. Auth answers as always; what the disk
/// refuses is counted as dropped and alarmed, never half-written or written twice: each event is
/// in the spool exactly once or counted, and no torn line is left behind. Once space is freed,
/// writing resumes by itself and health is ok again.
#[tokio::test]
async fn a_full_spool_disk_loses_only_what_it_refuses_counts_it_and_recovers() {
    let work = tempfile::tempdir().unwrap();
    let setup = Setup::new(work.path(), None, &[]);
    let Some(disk) = SmallDisk::mount(&setup.spool_dir(), 256 * 1024) else {
        return;
    };
    let mut service = Service::start(&setup, "service").await;
    let dropped = "flux_auth_security_log_events_dropped_total";
    eventually_ok("sys_startup in the spool", PATIENCE, || async {
        let (events, _) = read_spool(&setup.spool_dir());
        let started = count_of(&events, "service_started");
        when(started == 1, (), format!("{started} sys_startup events"))
    })
    .await;
    assert_eq!(service.metric(dropped).await, 0.0);

    let filler = disk.fill();
    let full = Load::start(&service.base, "full", 4, 40, bad_token_me());
    full.until_answered(40, &mut service).await;
    let answers = full.finish().await;
    assert_eq!(answers.len(), 40);
    assert!(answers.iter().all(|a| a.status == StatusCode::UNAUTHORIZED));
    let health = eventually_ok("the alarm", PATIENCE, || async {
        let health = service.health().await;
        let lost = service.metric(dropped).await;
        when(
            lost > 0.0 && health["status"] == "degraded",
            health.clone(),
            format!("{dropped} {lost}, {health}"),
        )
    })
    .await;
    assert_eq!(
        health["checks"]["securityLog"]["healthy"], false,
        "{health}"
    );
    let alarm = service.log_line("security events lost").await;
    assert_eq!(alarm["level"], "ERROR", "{alarm}");

    std::fs::remove_file(filler).unwrap();
    let after = Load::start(&service.base, "after", 4, 20, bad_token_me());
    after.until_answered(20, &mut service).await;
    after.finish().await;
    eventually_ok(
        "the events after the disk was freed in the spool, and health ok",
        PATIENCE,
        || async {
            let (events, _) = read_spool(&setup.spool_dir());
            let after = spool_events_by_request(&events, "after").len();
            let health = service.health().await;
            when(
                after == 20 && health["status"] == "ok",
                (),
                format!("{after} of 20 later events in the spool, {health}"),
            )
        },
    )
    .await;

    let (events, bad_lines) = read_spool(&setup.spool_dir());
    assert_eq!(bad_lines, 0, "a failed append left a torn line in the log");
    let files = spool_files(&setup.spool_dir());
    assert!(
        files
            .iter()
            .all(|f| std::fs::metadata(f).unwrap().len() > 0),
        "a failed append left an empty file behind: {files:?}"
    );
    let mut ids = HashSet::new();
    assert!(
        events.iter().all(|e| ids.insert(e.id)),
        "an event is in the log twice"
    );
    let kept = spool_events_by_request(&events, "full");
    assert!(kept.values().all(|types| types.len() == 1), "{kept:?}");
    let lost = service.metric(dropped).await;
    assert_eq!(
        kept.len() + lost as usize,
        40,
        "every event of the full disk is in the log once or counted as dropped ({} kept, {lost} dropped)",
        kept.len()
    );
    assert!(lost >= 1.0);
    service.assert_no_panic();
}

// ---- H9 and G: spool permissions, and hostile input in the log mirror -------------------------

/// A raw HTTP/1.1 request (so the test, not a client library, decides which bytes are sent);
/// returns the status code.
async fn raw_request(base: &str, request: &[u8]) -> u16 {
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

fn has_raw_controls(text: &str) -> bool {
    text.chars().any(|c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202e}' | '\u{200b}')
    })
}

#[tokio::test]
async fn the_spool_is_private_and_the_log_mirror_escapes_hostile_input() {
    let work = tempfile::tempdir().unwrap();
    let setup = Setup::new(work.path(), None, &[]);
    let mut service = Service::start(&setup, "service").await;

    // The user agent as bytes on the wire: C1 controls (NEL, CSI) as UTF-8, the line and
    // paragraph separators, a bidi override and a zero-width space all reach the service.
    let hostile_ua = "evil\u{85}NEL\u{9b}31m\u{2028}LS\u{2029}PS\u{202e}RLO\u{200b}ZW";
    let host = service.base.trim_start_matches("http://").to_owned();
    let mut request = format!(
        "GET /api/auth/me HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer not-a.real.token\r\n\
         X-Request-Id: hostile-ua\r\nConnection: close\r\nUser-Agent: "
    )
    .into_bytes();
    request.extend_from_slice(hostile_ua.as_bytes());
    request.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw_request(&service.base, &request).await, 401);
    // CR, LF and ESC cannot travel in a header value: HTTP/1.1 refuses them before any handler.
    let refused = format!(
        "GET /api/auth/me HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         User-Agent: evil\x1b[2Jforged\r\n\r\n"
    );
    assert_eq!(raw_request(&service.base, refused.as_bytes()).await, 400);
    // ... so they come in a JSON string instead: an email that tries to forge a log line.
    let forged_email =
        "evil\r\n{\"level\":\"ERROR\",\"message\":\"forged\"}\u{1b}[2J\u{7f}\u{0}@example.com";
    let login = service
        .client
        .post(service.url("/api/auth/login"))
        .header("user-agent", UA)
        .header("x-request-id", "hostile-email")
        .json(&json!({ "email": forged_email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::BAD_REQUEST);

    let (status, _) = service.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", service.logs());

    // Every line of stdout is one JSON object, and no raw control character reached it.
    let stdout = service.stdout_text();
    assert!(!has_raw_controls(&stdout), "raw controls in stdout");
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON line ({e}): {l:?}"))
        })
        .collect();
    let mirror = |request: &str| -> Value {
        lines
            .iter()
            .find(|l| {
                l["target"] == "security"
                    && l["metadata"]
                        .as_str()
                        .and_then(|m| serde_json::from_str::<Value>(m).ok())
                        .is_some_and(|m| m["requestId"] == request)
            })
            .unwrap_or_else(|| panic!("no mirror line for {request}\n{stdout}"))
            .clone()
    };
    let ua_line = mirror("hostile-ua");
    assert_eq!(ua_line["event_type"], "token_verification_failed");
    let ua = ua_line["user_agent"].as_str().unwrap();
    for escaped in [
        "\\u{85}",
        "\\u{9b}",
        "\\u{2028}",
        "\\u{2029}",
        "\\u{202e}",
        "\\u{200b}",
    ] {
        assert!(ua.contains(escaped), "{escaped} in {ua:?}");
    }
    assert!(!has_raw_controls(ua), "{ua:?}");
    let email_line = mirror("hostile-email");
    assert_eq!(email_line["event_type"], "login_failed");
    let metadata: Value = serde_json::from_str(email_line["metadata"].as_str().unwrap()).unwrap();
    let email = metadata["email"].as_str().unwrap();
    for escaped in ["\\u{d}\\u{a}", "\\u{1b}", "\\u{7f}", "\\u{0}"] {
        assert!(email.contains(escaped), "{escaped} in {email:?}");
    }
    assert!(!has_raw_controls(email), "{email:?}");
    assert!(
        !lines.iter().any(|l| l["message"] == "forged"),
        "a forged log line"
    );

    // The spool (the log itself without a database): folder 0700, files 0600 although the
    // service ran under umask 000, one event per line, and the same escaping.
    let spool_dir = setup.spool_dir();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&spool_dir), 0o700, "{}", spool_dir.display());
    let files = spool_files(&spool_dir);
    assert!(!files.is_empty());
    let mut spooled = Vec::new();
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            !has_raw_controls(&text),
            "raw controls in {}",
            file.display()
        );
        let read = read_file(file).unwrap();
        assert_eq!(read.bad_lines, 0);
        assert_eq!(
            read.events.len(),
            text.lines().count(),
            "one event per line"
        );
        spooled.extend(read.events);
    }
    let types: Vec<&str> = spooled.iter().map(|e| e.event_type.as_str()).collect();
    for expected in [
        "service_started",
        "token_verification_failed",
        "login_failed",
        "service_stopped",
    ] {
        assert!(types.contains(&expected), "{expected} in {types:?}");
    }
    service.assert_no_panic();
}
