//! The user and session stores: one contract on both backends through the library's `Store` trait,
//! the file store's `users.json` and its durability under `kill -9`, the `import-users` and `users
//! set-type` commands, and Postgres specifics (outages through a `Forwarder`, rotation races, a
//! pool cut from its server).

mod cli;
mod contract;
mod file_durability;
pub(crate) mod fixtures;
mod postgres_outage;
mod postgres_pool;
mod postgres_rotation;
mod users_json;
