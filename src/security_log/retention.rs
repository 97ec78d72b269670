//! Retention: security events older than their severity's retention are deleted, in small
//! batches in Postgres (no long locks on a busy table) and by rewriting old JSON-lines files.

use chrono::{DateTime, Utc};

use super::event::Severity;
use super::spool::{self, Spool};
use crate::config::Settings;
use crate::db::Database;

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub info_days: u32,
    pub warning_days: u32,
    pub high_days: u32,
    pub critical_days: u32,
}

impl Retention {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            info_days: s.security_log_retention_days_info,
            warning_days: s.security_log_retention_days_warning,
            high_days: s.security_log_retention_days_high,
            critical_days: s.security_log_retention_days_critical,
        }
    }

    pub fn days(&self, severity: Severity) -> u32 {
        match severity {
            Severity::Info | Severity::Low => self.info_days,
            Severity::Warning => self.warning_days,
            Severity::High => self.high_days,
            Severity::Critical => self.critical_days,
        }
    }

    fn cutoff(&self, severity: Severity, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::days(i64::from(self.days(severity)))
    }
}

const SEVERITIES: [Severity; 5] = [
    Severity::Info,
    Severity::Low,
    Severity::Warning,
    Severity::High,
    Severity::Critical,
];

/// Deletes expired events from Postgres, `batch` rows per statement; returns how many.
pub async fn delete_from_postgres(
    db: &Database,
    retention: Retention,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    let table = db.schemas().security_events();
    for severity in SEVERITIES {
        loop {
            let done = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE id IN ( \
                   SELECT id FROM {table} WHERE severity = $1 AND created_at < $2 LIMIT $3)"
            )))
            .bind(severity.as_str())
            .bind(retention.cutoff(severity, now))
            .bind(batch)
            .execute(&mut *db.acquire().await?)
            .await?;
            total += done.rows_affected();
            if (done.rows_affected() as i64) < batch {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    Ok(total)
}

/// Where the files are the log: rewrites each sealed file that holds expired events, keeping the
/// rest, and deletes files left empty. Returns how many events were removed.
pub fn prune_files(
    spool: &Spool,
    retention: Retention,
    now: DateTime<Utc>,
) -> std::io::Result<u64> {
    let shortest = SEVERITIES
        .iter()
        .map(|s| retention.cutoff(*s, now))
        .max()
        .unwrap_or(now);
    let mut removed = 0;
    for path in spool.sealed_files()? {
        let modified: DateTime<Utc> = std::fs::metadata(&path)?.modified()?.into();
        if modified >= shortest {
            continue; // every event in it is younger than any retention
        }
        let read = spool::read_file(&path)?;
        let before = read.events.len();
        let kept: Vec<_> = read
            .events
            .into_iter()
            .filter(|e| e.created_at >= retention.cutoff(e.severity, now))
            .collect();
        removed += (before - kept.len()) as u64;
        if kept.is_empty() {
            spool.remove(&path)?;
        } else if kept.len() < before {
            let mut buf = Vec::new();
            for event in &kept {
                serde_json::to_writer(&mut buf, event)?;
                buf.push(b'\n');
            }
            crate::durable_file::replace(&path, &buf)?;
        }
    }
    Ok(removed)
}
