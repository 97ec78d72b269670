//! Where flux-auth's tables live in Postgres: a schema of their own (`DATABASE_SCHEMA`, default
//! `flux_auth`), so that a database shared with the application it serves — whose own `users`
//! and `refresh_tokens` sit in `public` — is never touched or mistaken for ours; and where the
//! security log's `security_events` lives (`SECURITY_EVENTS_SCHEMA`, default `public`, where the
//! old service put it and where other tools read it).
//!
//! Every connection flux-auth opens sets `search_path` to its own schema and `pg_temp` (last, so
//! that not even a temporary table can stand in for one of ours); `pg_catalog` is always searched
//! first by Postgres. An unqualified `users` then names flux-auth's table or nothing: never
//! another schema's. `security_events` is always named with its schema.

use std::sync::Arc;

use crate::config::{
    DEFAULT_DATABASE_SCHEMA, DEFAULT_SECURITY_EVENTS_SCHEMA, database_schema_problem,
    security_events_schema_problem,
};

/// The two schemas, validated: both are plain identifiers, so they need no escaping (they are
/// quoted anyway wherever they are written into SQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schemas {
    own: Arc<str>,
    security_events: Arc<str>,
}

impl Default for Schemas {
    fn default() -> Self {
        Self {
            own: DEFAULT_DATABASE_SCHEMA.into(),
            security_events: DEFAULT_SECURITY_EVENTS_SCHEMA.into(),
        }
    }
}

impl Schemas {
    pub fn new(own: &str, security_events: &str) -> anyhow::Result<Self> {
        if let Some(problem) = database_schema_problem(own) {
            anyhow::bail!(problem);
        }
        if let Some(problem) = security_events_schema_problem(security_events) {
            anyhow::bail!(problem);
        }
        Ok(Self {
            own: own.into(),
            security_events: security_events.into(),
        })
    }

    pub fn from_settings(settings: &crate::config::Settings) -> anyhow::Result<Self> {
        Self::new(&settings.database_schema, &settings.security_events_schema)
    }

    /// flux-auth's schema (`DATABASE_SCHEMA`).
    pub fn own(&self) -> &str {
        &self.own
    }

    /// The schema of `security_events` (`SECURITY_EVENTS_SCHEMA`).
    pub fn security_events_schema(&self) -> &str {
        &self.security_events
    }

    /// `"public".security_events`: how every query names the table.
    pub fn security_events(&self) -> String {
        format!("\"{}\".security_events", self.security_events)
    }

    /// The `search_path` every connection gets, as a value for `SET`.
    pub fn search_path(&self) -> String {
        format!("\"{}\", pg_temp", self.own)
    }

    /// The statement that sets it.
    pub fn set_search_path(&self) -> String {
        format!("SET search_path = {}", self.search_path())
    }

    /// sqlx's bookkeeping table, in flux-auth's schema.
    pub fn migrations_table(&self) -> String {
        format!("\"{}\"._sqlx_migrations", self.own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_accepted() {
        for good in ["flux_auth", "_x", "a1", &"a".repeat(63)] {
            assert!(Schemas::new(good, "public").is_ok(), "{good}");
        }
        for bad in [
            "",
            "Flux",
            "1a",
            "flux-auth",
            "a b",
            "x\"; DROP",
            "pg_auth",
            "public",
            "ü",
            &"a".repeat(64),
        ] {
            assert!(Schemas::new(bad, "public").is_err(), "{bad:?}");
        }
        assert!(Schemas::new("flux_auth", "audit").is_ok());
        assert!(Schemas::new("flux_auth", "Audit").is_err());
        assert!(Schemas::new("flux_auth", "pg_catalog").is_err());
    }

    #[test]
    fn names_are_quoted_and_pg_temp_comes_last() {
        let s = Schemas::default();
        assert_eq!(s.search_path(), "\"flux_auth\", pg_temp");
        assert_eq!(s.security_events(), "\"public\".security_events");
        assert_eq!(s.migrations_table(), "\"flux_auth\"._sqlx_migrations");
    }
}
