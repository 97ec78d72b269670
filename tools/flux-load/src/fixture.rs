//! The accounts a run signs up and the jobs each scenario gives its workers.

use std::net::SocketAddr;

use anyhow::Context;
use hyper::StatusCode;

use crate::cli::Scenario;
use crate::http::{Call, once};
use crate::measure::{Job, PASSWORD};

/// Tokens of one account, from its signup.
#[derive(Clone)]
pub struct Account {
    pub user_id: String,
    pub email: String,
    pub access: String,
    pub refresh: String,
}

/// The address worker `i` claims to be, when the server trusts loopback as a proxy: a
/// documentation range (RFC 5737), never contacted.
pub fn client_address(i: usize) -> String {
    format!("198.51.100.{}", i % 250 + 1)
}

pub async fn signup(
    addr: SocketAddr,
    email: &str,
    client: Option<&str>,
) -> anyhow::Result<Account> {
    let body = serde_json::json!({ "email": email, "password": PASSWORD, "name": "Load Tester" });
    let call = Call::post("/api/auth/signup", &body).with_client(client);
    let (status, body) = once(addr, &call).await?;
    anyhow::ensure!(
        status == StatusCode::CREATED,
        "signup of {email} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .with_context(|| format!("signup answer has no {name}"))
    };
    let user_id = value
        .get("user")
        .and_then(|u| u.get("id"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .context("signup answer has no user.id")?;
    Ok(Account {
        user_id,
        email: email.to_owned(),
        access: field("accessToken")?,
        refresh: field("refreshToken")?,
    })
}

/// Signs up `count` accounts, four at a time (each costs one argon2 hash).
pub async fn accounts(
    addr: SocketAddr,
    tag: &str,
    count: usize,
    client_per_account: bool,
) -> anyhow::Result<Vec<Account>> {
    let mut out = Vec::with_capacity(count);
    let indices: Vec<usize> = (0..count).collect();
    for chunk in indices.chunks(4) {
        let batch = futures::future::join_all(chunk.iter().map(|&i| async move {
            let client = client_per_account.then(|| client_address(i));
            signup(addr, &format!("{tag}-{i}@bench.example"), client.as_deref()).await
        }))
        .await;
        for account in batch {
            out.push(account?);
        }
    }
    Ok(out)
}

/// Everything one run of one store needs to build its jobs.
pub struct Fixture {
    pub addr: SocketAddr,
    /// One account per worker at the highest concurrency: /me tokens and refresh chains.
    pub sessions: Vec<Account>,
    /// Accounts that only log in (logins evict old sessions; these keep /me's sessions alive).
    pub logins: Vec<Account>,
    /// Each worker as its own client address (the rate-limit run).
    pub per_worker_clients: bool,
    pub run_tag: String,
}

impl Fixture {
    fn client(&self, i: usize) -> Option<String> {
        self.per_worker_clients.then(|| client_address(i))
    }

    /// A forgot-password request for the `n`-th account with a login, or for a new address
    /// without an account.
    fn forgot(&self, account: Option<usize>) -> Call {
        let email = match account {
            Some(n) => self.logins[n % self.logins.len()].email.clone(),
            None => format!("nobody-{}@bench.example", uuid::Uuid::new_v4().simple()),
        };
        Call::post(
            "/api/auth/forgot-password",
            &serde_json::json!({ "email": email }),
        )
    }

    pub fn jobs(&mut self, scenario: Scenario, concurrency: usize) -> Vec<Job> {
        (0..concurrency)
            .map(|i| {
                let client = self.client(i);
                let fixed = |call: Call, expect| Job::Fixed {
                    call: call.with_client(client.as_deref()),
                    expect,
                };
                match scenario {
                    Scenario::Health => fixed(Call::get("/health"), StatusCode::OK),
                    Scenario::Me => fixed(
                        Call::get("/api/auth/me").bearer(&self.sessions[i % self.sessions.len()].access),
                        StatusCode::OK,
                    ),
                    Scenario::Refresh => Job::Refresh {
                        token: self.sessions[i % self.sessions.len()].refresh.clone(),
                        client: client.clone(),
                    },
                    Scenario::Login => {
                        let account = &self.logins[i % self.logins.len()];
                        fixed(
                            Call::post(
                                "/api/auth/login",
                                &serde_json::json!({ "email": account.email, "password": PASSWORD }),
                            ),
                            StatusCode::OK,
                        )
                    }
                    Scenario::LoginUnknown => fixed(
                        Call::post(
                            "/api/auth/login",
                            &serde_json::json!({
                                "email": format!("nobody-{i}@bench.example"),
                                "password": PASSWORD,
                            }),
                        ),
                        StatusCode::UNAUTHORIZED,
                    ),
                    Scenario::ForgotKnown => fixed(self.forgot(Some(i)), StatusCode::OK),
                    Scenario::ForgotUnknown => fixed(self.forgot(None), StatusCode::OK),
                    // Even connections known, odd unknown; the known ones spread over the
                    // accounts as in forgot-known.
                    Scenario::ForgotMixed => fixed(
                        self.forgot((i % 2 == 0).then_some(i / 2)),
                        StatusCode::OK,
                    ),
                    Scenario::Signup => Job::Signup {
                        tag: format!("{}-c{concurrency}-w{i}", self.run_tag),
                        n: 0,
                    },
                }
            })
            .collect()
    }

    /// Refresh chains moved on during a run; keep them for the next one.
    pub fn keep_chains(&mut self, jobs: &[Job]) {
        for (i, job) in jobs.iter().enumerate() {
            if let (Job::Refresh { token, .. }, Some(account)) = (job, self.sessions.get_mut(i)) {
                account.refresh.clone_from(token);
            }
        }
    }
}
