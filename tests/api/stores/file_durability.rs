//! The file store's durability on the real binary: `kill -9` in the middle of concurrent
//! signups loses no user whose signup was acknowledged, duplicates none, and every one of them
//! logs in after a restart.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::join_all;
use reqwest::{Client, StatusCode};
use serde_json::json;
use tokio::task::JoinHandle;

use super::fixtures::*;
use crate::helpers::*;

/// The binary serving on a free loopback port with the file store in `data_dir`; killed when
/// dropped.
async fn start_server(work: &Path, data_dir: &Path, secret: &str, name: &str) -> FluxAuth {
    Launch::new(work)
        .named(name)
        .env("JWT_SECRET", secret)
        .env("DATA_DIR", data_dir)
        .env("RATE_LIMITS", "off")
        .start()
        .await
}

#[tokio::test]
async fn kill_9_during_signups_loses_no_acknowledged_user() {
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let secret = random_secret();
    let mut server = start_server(work.path(), &data_dir, &secret, "first").await;

    let client = Client::new();
    let acked = Arc::new(AtomicUsize::new(0));
    let signups: Vec<JoinHandle<(String, Option<StatusCode>)>> = (0..60)
        .map(|i| {
            let (client, acked) = (client.clone(), acked.clone());
            let url = server.url("/api/auth/signup");
            let email = format!("crash-{i}@example.com");
            tokio::spawn(async move {
                let sent = client
                    .post(url)
                    .header("user-agent", UA)
                    .json(&json!({ "email": email, "password": PASSWORD, "name": "Crash Test" }))
                    .send()
                    .await;
                let status = sent.ok().map(|r| r.status());
                if status == Some(StatusCode::CREATED) {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                (email, status)
            })
        })
        .collect();
    eventually("ten acknowledged signups", Duration::from_secs(60), || {
        let acked = acked.clone();
        async move { (acked.load(Ordering::SeqCst) >= 10).then_some(()) }
    })
    .await;
    server.kill_9();
    let status = server.child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed, not exited: {status}");

    let mut acknowledged = Vec::new();
    for signup in join_all(signups).await {
        let (email, status) = signup.unwrap();
        match status {
            Some(StatusCode::CREATED) => acknowledged.push(email),
            None => {} // cut off by the kill
            Some(other) => panic!("signup of {email} answered {other}"),
        }
    }
    eprintln!(
        "{} of 60 signups acknowledged before kill -9",
        acknowledged.len()
    );

    let file = read_json(&data_dir.join("users.json"));
    let emails: Vec<&str> = file["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = emails.iter().copied().collect();
    assert_eq!(unique.len(), emails.len(), "no duplicate users: {emails:?}");
    for email in &acknowledged {
        assert!(unique.contains(email.as_str()), "acknowledged {email} lost");
    }

    let server = start_server(work.path(), &data_dir, &secret, "restarted").await;
    let logins = join_all(acknowledged.iter().map(|email| {
        client
            .post(server.url("/api/auth/login"))
            .header("user-agent", UA)
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
    }))
    .await;
    for (email, login) in acknowledged.iter().zip(logins) {
        assert_eq!(
            login.unwrap().status(),
            StatusCode::OK,
            "{email} after restart: {}",
            server.logs()
        );
    }
}
