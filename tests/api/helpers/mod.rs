//! What the integration tests share: `TestApp` (the app in this process, one method per
//! endpoint), the `flux-auth` binary as a child process, a database and a Redis prefix of each
//! test's own, free ports and secrets, waiting on conditions, and reading what the app stored
//! and recorded.
#![allow(dead_code)]

mod events;
mod metrics;
mod operator;
mod ports;
mod postgres;
mod process;
mod redis;
mod responses;
mod secrets;
mod smtp;
mod stored;
mod test_app;
mod tokens;
mod wait;
mod webhook;

pub use events::*;
pub use metrics::*;
pub use operator::*;
pub use ports::*;
pub use postgres::*;
pub use process::*;
pub use redis::*;
pub use responses::*;
pub use secrets::*;
pub use smtp::*;
pub use stored::*;
pub use test_app::*;
pub use tokens::*;
pub use wait::*;
pub use webhook::*;

pub const PASSWORD: &str = "violet tractor hums at dawn";
pub const UA: &str =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}
