//! `flux-auth mail test` and `flux-auth mail outbox`, and what check-config says about mail.

use crate::helpers::{JWT_SECRET, SmtpSink, run_cli, text, unique_email};

#[tokio::test]
async fn mail_test_sends_through_smtp_and_says_what_happened() {
    let sink = SmtpSink::start().await;
    let work = tempfile::tempdir().unwrap();
    let port = sink.port.to_string();
    let envs = [
        ("SMTP_HOST", "127.0.0.1"),
        ("SMTP_PORT", port.as_str()),
        ("JWT_SECRET", JWT_SECRET),
    ];
    let to = unique_email();
    let sent = run_cli(work.path(), &envs, &["mail", "test", &to]).await;
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(
        text(&sent.stdout).contains(&format!("sent to {to}")),
        "{}",
        text(&sent.stdout)
    );
    assert_eq!(
        sink.wait_for(&to, 1).await[0].subject(),
        "FluxStudio mail test"
    );

    // SMTP refusing: exit 1 with the cause and what to check.
    sink.refuse(true);
    let failed = run_cli(work.path(), &envs, &["mail", "test", &to]).await;
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        text(&failed.stderr).contains("not sent"),
        "{}",
        text(&failed.stderr)
    );
    let bad = run_cli(work.path(), &envs, &["mail", "test", "not-an-address"]).await;
    assert_eq!(bad.status.code(), Some(1));

    let help = run_cli(work.path(), &[], &["mail", "--help"]).await;
    assert!(
        text(&help.stdout).contains("outbox"),
        "{}",
        text(&help.stdout)
    );
}

#[tokio::test]
async fn mail_outbox_lists_pending_messages_without_their_bodies() {
    let sink = SmtpSink::start().await;
    sink.refuse(true);
    let configure = sink.clone();
    let app = crate::helpers::TestApp::builder(crate::helpers::Backend::File)
        .settings(move |s| configure.configure(s))
        .spawn()
        .await;
    let email = unique_email();
    app.signed_up(&email).await;
    let data = app.data_dir();
    let envs = [
        ("DATA_DIR", data.to_str().unwrap()),
        ("STORAGE", "file"),
        ("JWT_SECRET", JWT_SECRET),
    ];
    let listed = run_cli(app.dir.path(), &envs, &["mail", "outbox"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let out = text(&listed.stdout);
    assert!(
        out.contains(&email) && out.contains("verify_email"),
        "{out}"
    );
    assert!(out.contains("1 pending, 0 dead"), "{out}");
    assert!(!out.contains("token="), "{out}");
}

#[tokio::test]
async fn check_config_warns_of_production_without_smtp() {
    let work = tempfile::tempdir().unwrap();
    let envs = [("NODE_ENV", "production"), ("JWT_SECRET", JWT_SECRET)];
    let checked = run_cli(work.path(), &envs, &["check-config"]).await;
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert!(
        text(&checked.stdout).contains("no SMTP configured"),
        "{}",
        text(&checked.stdout)
    );
    let envs = [
        ("SMTP_FROM", "not an address\r\nBcc: x@example.com"),
        ("JWT_SECRET", JWT_SECRET),
    ];
    let checked = run_cli(work.path(), &envs, &["check-config"]).await;
    assert_eq!(checked.status.code(), Some(78), "{}", text(&checked.stdout));
    assert!(
        text(&checked.stderr).contains("SMTP_FROM"),
        "{}",
        text(&checked.stderr)
    );
}
