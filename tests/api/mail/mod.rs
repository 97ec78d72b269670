//! Accounts by email, against a real SMTP listener on loopback: verification, password reset
//! and change, and the outbox that delivers their mail (outages, restarts, several instances).

mod account_inputs;
mod change_password;
mod cli;
mod linking;
mod notices;
mod outbox;
mod request_queue;
mod reset;
mod verification;

use flux_auth::config::Settings;
use flux_auth::store::outbox::OutboxMessage;
use serde_json::json;

use crate::helpers::{Backend, PASSWORD, SmtpSink, TestApp};

/// An app on `backend` whose mail goes to a new sink.
pub async fn app_with_sink(backend: Backend) -> Option<(TestApp, SmtpSink)> {
    app_with_sink_and(backend, |_| {}).await
}

/// An app on `backend` whose mail goes to a new sink, with `tweak` applied to its settings too.
pub async fn app_with_sink_and(
    backend: Backend,
    tweak: impl FnOnce(&mut Settings) + 'static,
) -> Option<(TestApp, SmtpSink)> {
    let sink = SmtpSink::start().await;
    let configure = sink.clone();
    let app = TestApp::builder(backend)
        .settings(move |s| configure.configure(s))
        .settings(tweak)
        .try_spawn()
        .await?;
    Some((app, sink))
}

impl TestApp {
    pub async fn forgot(&self, email: &str) -> reqwest::Response {
        self.post_json("/api/auth/forgot-password", &json!({ "email": email }))
            .await
    }

    pub async fn reset(&self, token: &str, password: &str) -> reqwest::Response {
        self.post_json(
            "/api/auth/reset-password",
            &json!({ "token": token, "password": password }),
        )
        .await
    }

    pub async fn verify(&self, token: &str) -> reqwest::Response {
        self.post_json("/api/auth/verify-email", &json!({ "token": token }))
            .await
    }

    pub async fn change_password(
        &self,
        access: &str,
        current: &str,
        new: &str,
    ) -> reqwest::Response {
        self.post_json_auth(
            "/api/auth/change-password",
            access,
            &json!({ "currentPassword": current, "newPassword": new }),
        )
        .await
    }

    /// The outbox's pending and dead messages (no bodies).
    pub async fn outbox(&self) -> Vec<OutboxMessage> {
        self.state.auth.store.outbox_messages(1000).await.unwrap()
    }
}

/// A new password that passes the policy.
pub const NEW_PASSWORD: &str = "copper lantern sails at noon";

/// The signup password, for tests that read it in a log or a store.
pub const OLD_PASSWORD: &str = PASSWORD;
