//! The file store's sessions on disk: `sessions.json` (a snapshot) and `sessions.journal` (the
//! changes since), through the real app over HTTP. Restarts after many refreshes, a journal whose
//! last line a crash cut short, compaction past its bound, a `sessions.json` written by
//! earlier versions (no journal), and the two-factor time steps kept in the journal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::join_all;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// A file-store app with no grace window: a rotated token is dead at once.
async fn strict_file_app() -> TestApp {
    TestApp::builder(Backend::File)
        .settings(|s| s.refresh_reuse_grace_secs = 0)
        .spawn()
        .await
}

fn text(body: &Value, key: &str) -> String {
    body[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {body}"))
        .to_owned()
}

/// One refresh-token family as a client sees it: every refresh token it was given, oldest
/// first, and its latest access token.
struct Chain {
    tokens: Vec<String>,
    access: String,
}

impl Chain {
    fn of(auth: &Value) -> Chain {
        Chain {
            tokens: vec![text(auth, "refreshToken")],
            access: text(auth, "accessToken"),
        }
    }

    fn latest(&self) -> &str {
        self.tokens.last().unwrap()
    }
}

async fn refresh_chain(app: &TestApp, chain: &mut Chain) {
    let response = app.refresh(chain.latest()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    chain.tokens.push(text(&body, "refreshToken"));
    chain.access = text(&body, "accessToken");
}

/// One refresh of every chain, concurrently (so that they share journal writes).
async fn refresh_all(app: &TestApp, chains: &mut [Chain]) {
    join_all(chains.iter_mut().map(|c| refresh_chain(app, c))).await;
}

/// The caller's live sessions as `GET /api/auth/sessions` lists them.
async fn sessions_list(app: &TestApp, access: &str) -> Value {
    let response = app.get_auth("/api/auth/sessions", access).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["sessions"].clone()
}

async fn assert_refresh_fails(app: &TestApp, token: &str, code: &str) {
    assert_error(app.refresh(token).await, StatusCode::UNAUTHORIZED, code).await;
}

fn journal(dir: &Path) -> PathBuf {
    dir.join("sessions.journal")
}

/// Every line of the journal is whole JSON.
fn assert_whole_lines(dir: &Path) {
    let text = std::fs::read_to_string(journal(dir)).unwrap();
    assert!(text.ends_with('\n'), "{text}");
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["seq"].is_u64() && value["sum"].is_string(), "{line}");
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn refresh_families_survive_a_restart_after_many_refreshes() {
    let app = strict_file_app().await;
    let mut chains = Vec::new();
    for _ in 0..3 {
        let email = unique_email();
        chains.push(Chain::of(&app.signed_up(&email).await));
        chains.push(Chain::of(&app.logged_in(&email).await));
    }
    for _ in 0..20 {
        refresh_all(&app, &mut chains).await;
    }
    // Chain 1 logs out; the rest stay live.
    assert_eq!(app.logout(&chains[1].access).await.status(), StatusCode::OK);
    let before: Vec<Value> =
        join_all([0, 2, 4].map(|i| sessions_list(&app, &chains[i].access))).await;
    assert_eq!(before[0].as_array().unwrap().len(), 1, "{}", before[0]);
    assert_eq!(before[1].as_array().unwrap().len(), 2, "{}", before[1]);
    let dir = app.data_dir();
    assert_eq!(mode_of(&journal(&dir)), 0o600);
    assert!(
        !dir.join("sessions.json").exists(),
        "below the bound, nothing is compacted"
    );

    let app = app.restart_with(|_| {}).await;
    let after: Vec<Value> =
        join_all([0, 2, 4].map(|i| sessions_list(&app, &chains[i].access))).await;
    assert_eq!(after, before, "the same sessions after the restart");
    for i in [0, 2, 3, 4, 5] {
        refresh_chain(&app, &mut chains[i]).await;
    }
    assert_refresh_fails(&app, chains[1].latest(), "AUTH_REFRESH_INVALID").await;
    // A token rotated 20 refreshes before the restart is still known as rotated: reuse.
    assert_refresh_fails(&app, &chains[2].tokens[0], "AUTH_REFRESH_REUSED").await;
    assert_refresh_fails(&app, chains[2].latest(), "AUTH_REFRESH_INVALID").await;

    // And the revocation the reuse caused is as durable as the rest.
    let app = app.restart_with(|_| {}).await;
    assert_refresh_fails(&app, chains[2].latest(), "AUTH_REFRESH_INVALID").await;
    assert_refresh_fails(&app, &chains[4].tokens[3], "AUTH_REFRESH_REUSED").await;
    refresh_chain(&app, &mut chains[0]).await;
    refresh_chain(&app, &mut chains[5]).await;
    assert_whole_lines(&app.data_dir());
}

#[tokio::test]
async fn a_journal_line_cut_short_by_a_crash_is_skipped_and_the_service_starts() {
    let mut app = strict_file_app().await;
    let email = unique_email();
    let mut chain = Chain::of(&app.signed_up(&email).await);
    for _ in 0..3 {
        refresh_chain(&app, &mut chain).await;
    }
    app.stop().await;
    // A crash in the middle of appending the next line: its first half is on disk.
    let path = journal(&app.data_dir());
    let whole = std::fs::read(&path).unwrap();
    let last = whole[..whole.len() - 1]
        .rsplit(|b| *b == b'\n')
        .next()
        .unwrap()
        .to_vec();
    let mut torn = whole.clone();
    torn.extend_from_slice(&last[..last.len() / 2]);
    std::fs::write(&path, &torn).unwrap();

    let app = app.restart_with(|_| {}).await;
    // Everything before the torn line is there; the service appends after cutting it off.
    assert_refresh_fails(&app, &chain.tokens[1], "AUTH_REFRESH_REUSED").await;
    let mut other = Chain::of(&app.logged_in(&email).await);
    refresh_chain(&app, &mut other).await;
    assert_whole_lines(&app.data_dir());

    let app = app.restart_with(|_| {}).await;
    assert_refresh_fails(&app, chain.latest(), "AUTH_REFRESH_INVALID").await;
    refresh_chain(&app, &mut other).await;
}

#[tokio::test]
async fn the_journal_is_compacted_past_its_bound_and_the_state_survives_a_restart() {
    let app = strict_file_app().await;
    let mut chains = Vec::new();
    for _ in 0..4 {
        let email = unique_email();
        chains.push(Chain::of(&app.signed_up(&email).await));
        chains.push(Chain::of(&app.logged_in(&email).await));
    }
    let dir = app.data_dir();
    let snapshot = dir.join("sessions.json");
    let old_journal = dir.join("sessions.journal.old");
    // Each refresh appends about 1 KB; past 1 MiB the journal is folded into sessions.json in
    // the background. Keep refreshing until that snapshot is written and the old journal gone.
    let mut rounds = 0;
    while !snapshot.exists() || old_journal.exists() {
        refresh_all(&app, &mut chains).await;
        rounds += 1;
        assert!(rounds < 2_000, "no compaction after {rounds} rounds");
    }
    let written: Value = serde_json::from_slice(&std::fs::read(&snapshot).unwrap()).unwrap();
    assert!(
        written["seq"].as_u64().unwrap() > 0,
        "a snapshot of batch N"
    );
    // The snapshot holds most of the tokens issued so far (every one, rotated ones included).
    let issued = 8 + 8 * rounds;
    let folded = written["tokens"].as_array().unwrap().len();
    assert!(
        folded > issued / 2 && folded <= issued,
        "{folded} of {issued}"
    );
    assert_eq!(mode_of(&snapshot), 0o600);
    assert!(
        std::fs::metadata(journal(&dir)).unwrap().len() < 1 << 20,
        "a new journal was started"
    );
    // A few more changes on top of the snapshot.
    refresh_all(&app, &mut chains).await;
    assert_eq!(app.logout(&chains[7].access).await.status(), StatusCode::OK);
    let before = sessions_list(&app, &chains[0].access).await;

    let app = app.restart_with(|_| {}).await;
    assert_eq!(sessions_list(&app, &chains[0].access).await, before);
    for chain in &mut chains[..7] {
        refresh_chain(&app, chain).await;
    }
    assert_refresh_fails(&app, chains[7].latest(), "AUTH_REFRESH_INVALID").await;
    // Rotated before the compaction: in the snapshot, still detected.
    assert_refresh_fails(&app, &chains[3].tokens[1], "AUTH_REFRESH_REUSED").await;
    assert_refresh_fails(&app, chains[3].latest(), "AUTH_REFRESH_INVALID").await;
}

#[tokio::test]
async fn a_sessions_json_of_earlier_versions_loads() {
    let mut app = strict_file_app().await;
    let auth = app.signed_up(&unique_email()).await;
    let mut chain = Chain::of(&auth);
    refresh_chain(&app, &mut chain).await;
    refresh_chain(&app, &mut chain).await;
    app.stop().await;
    // What earlier versions kept: the whole state in sessions.json, `{"sessions":[…],"tokens":
    // […]}` with camelCase records, and no journal.
    let dir = app.data_dir();
    let state = flux_auth::store::json_file::read_sessions(&dir).unwrap();
    let keys: Vec<&String> = state.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["sessions", "tokens"]);
    let session = &state["sessions"][0];
    for key in [
        "id",
        "userId",
        "fingerprint",
        "lastUsedAt",
        "expiresAt",
        "revokedAt",
    ] {
        assert!(session.get(key).is_some(), "{key} in {session}");
    }
    let token = &state["tokens"][0];
    for key in [
        "id",
        "sessionId",
        "tokenHash",
        "createdAt",
        "rotatedAt",
        "replacedBy",
    ] {
        assert!(token.get(key).is_some(), "{key} in {token}");
    }
    assert_eq!(state["tokens"].as_array().unwrap().len(), 3);
    std::fs::write(
        dir.join("sessions.json"),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(journal(&dir)).unwrap();

    let app = app.restart_with(|_| {}).await;
    assert_eq!(
        sessions_list(&app, &chain.access)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    refresh_chain(&app, &mut chain).await;
    assert_refresh_fails(&app, &chain.tokens[0], "AUTH_REFRESH_REUSED").await;

    // The journal now follows on from that file (batch 0).
    let app = app.restart_with(|_| {}).await;
    assert_refresh_fails(&app, chain.latest(), "AUTH_REFRESH_INVALID").await;
    assert_whole_lines(&app.data_dir());
}

/// The real binary on a free loopback port with the file store in `data_dir`; killed when
/// dropped.
async fn start_binary(work: &Path, data_dir: &Path, secret: &str, name: &str) -> FluxAuth {
    Launch::new(work)
        .named(name)
        .env("JWT_SECRET", secret)
        .env("DATA_DIR", data_dir)
        .env("STORAGE", "file")
        .env("RATE_LIMITS", "off")
        .env("REFRESH_REUSE_GRACE_SECS", "60")
        .start()
        .await
}

async fn post(client: &Client, url: String, body: Value) -> Option<(StatusCode, Value)> {
    let response = client
        .post(url)
        .header("user-agent", UA)
        .json(&body)
        .send()
        .await
        .ok()?;
    let status = response.status();
    Some((status, response.json().await.ok()?))
}

#[tokio::test]
async fn kill_9_during_refreshes_loses_no_acknowledged_rotation() {
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let secret = random_secret();
    let mut server = start_binary(work.path(), &data_dir, &secret, "first").await;
    let address = server.base.clone();
    let client = Client::new();
    let mut tokens = Vec::new();
    for i in 0..8 {
        let (status, body) = post(
            &client,
            format!("{address}/api/auth/signup"),
            json!({ "email": format!("crash-{i}@example.com"), "password": PASSWORD, "name": "Crash" }),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        tokens.push(text(&body, "refreshToken"));
    }
    // Eight clients refresh in a loop; each keeps the last token an answer gave it.
    let acked = Arc::new(AtomicUsize::new(0));
    let loops: Vec<_> = tokens
        .into_iter()
        .map(|first| {
            let (client, acked, url) = (
                client.clone(),
                acked.clone(),
                format!("{address}/api/auth/refresh"),
            );
            tokio::spawn(async move {
                let mut latest = first;
                while let Some((status, body)) =
                    post(&client, url.clone(), json!({ "refreshToken": latest })).await
                {
                    assert_eq!(status, StatusCode::OK, "{body}");
                    latest = text(&body, "refreshToken");
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                latest
            })
        })
        .collect();
    // Kill mid-flood, once a few hundred rotations were acknowledged.
    while acked.load(Ordering::SeqCst) < 400 {
        tokio::task::yield_now().await;
        assert!(server.child.try_wait().unwrap().is_none());
    }
    server.kill_9();
    let status = server.child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed, not exited: {status}");
    let latest: Vec<String> = join_all(loops)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();

    // Each client's last acknowledged token still refreshes: it is live, or (when its next
    // rotation reached the disk but not the client) inside the grace window with the same
    // successor. Anything else would mean an acknowledged rotation was lost or the journal
    // does not load.
    let server = start_binary(work.path(), &data_dir, &secret, "restarted").await;
    let address = &server.base;
    for token in &latest {
        let (status, body) = post(
            &client,
            format!("{address}/api/auth/refresh"),
            json!({ "refreshToken": token }),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// A TOTP code used to sign in stays used after a restart: the accepted step is a record of the
/// journal (not of `users.json`, which is rewritten whole), and a restart reads it back. Turning
/// two-factor off and on again starts the new secret afresh.
#[tokio::test]
async fn a_used_totp_code_stays_used_across_a_restart_and_a_new_secret_starts_afresh() {
    use crate::two_factor::{code_now, enable, next_step, temp_token, verify};
    let app = crate::two_factor::app(Backend::File).await.unwrap();
    let email = unique_email();
    let token = text(&app.signed_up(&email).await, "accessToken");
    let (secret, _) = enable(&app, &token).await;
    let code = code_now(&app, &secret);
    let first = temp_token(&app, &email).await;
    let signed_in = verify(&app, &first, &code).await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let signed_in: Value = signed_in.json().await.unwrap();
    let journal = std::fs::read_to_string(app.data_dir().join("sessions.journal")).unwrap();
    assert!(journal.contains("\"totpStep\""), "{journal}");

    let app = app.restart_with(|_| {}).await;
    // The new app's clock starts from the machine's: move it to where the old one was.
    next_step(&app);
    assert_eq!(code_now(&app, &secret), code);
    let again = temp_token(&app, &email).await;
    assert_error(
        verify(&app, &again, &code).await,
        StatusCode::BAD_REQUEST,
        "TWO_FACTOR_INVALID_CODE",
    )
    .await;

    // Off with the next step's code (one step ahead is accepted), then on again with a new
    // secret confirmed at the current step: the new secret's next-step code signs in. Were the
    // old secret's step kept, that step would count as used.
    let access = text(&signed_in, "accessToken");
    let now = app.clock().now().timestamp() as u64;
    let off = app
        .post_json_auth(
            "/api/2fa/disable",
            &access,
            &json!({ "code": code_at(&secret, now + 30) }),
        )
        .await;
    assert_eq!(off.status(), StatusCode::OK);
    let setup: Value = app
        .post_json_auth("/api/2fa/setup", &access, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let secret = crate::two_factor::secret_bytes(setup["secret"].as_str().unwrap());
    let on = app
        .post_json_auth(
            "/api/2fa/verify-setup",
            &access,
            &json!({ "code": code_at(&secret, now) }),
        )
        .await;
    assert_eq!(on.status(), StatusCode::OK);
    let third = temp_token(&app, &email).await;
    assert_eq!(
        verify(&app, &third, &code_at(&secret, now + 30))
            .await
            .status(),
        StatusCode::OK
    );
}

/// The code an authenticator shows for `secret` at `unix` seconds.
fn code_at(secret: &[u8], unix: u64) -> String {
    totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .build()
        .expect("a valid TOTP secret")
        .generate(unix)
        .to_string()
}
