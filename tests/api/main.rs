//! One integration-test binary: the real app on a loopback port, real Postgres, real files.
// Tests fail by panicking; the crate's unwrap/expect/panic lints are for the service code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod account_input;
mod alerts;
mod anomaly;
mod apple;
mod bad_input;
mod clock;
mod connections;
mod cutover;
mod dashboard;
mod event_rollups;
mod events;
mod fake_oidc;
mod faults;
mod file_journal;
mod fluxstudio_clients;
mod forwarder;
mod google;
mod limits;
mod log_outage;
mod login;
mod mail;
mod mailboxes;
mod module_graph;
mod monitoring;
mod operability;
mod ops;
mod pipeline;
mod pooler;
mod refresh;
mod sentry;
mod sessions;
mod signup;
mod small_disk;
mod stores;
mod token_floods;
mod tokens;
mod two_factor;
mod two_factor_admin;
mod two_factor_providers;
mod user_cache;
mod wall_clock;
