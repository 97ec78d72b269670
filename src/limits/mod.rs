//! Abuse protection state shared across instances through Redis. For now this holds the Redis
//! connection settings and answers health checks; rate limits and lockouts build on it.

use std::time::Duration;

use secrecy::ExposeSecret;

use crate::config::Settings;

pub struct Limits {
    redis: Option<redis::Client>,
}

impl Limits {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let redis = match &settings.redis_url {
            Some(url) => Some(
                redis::Client::open(url.expose_secret())
                    .map_err(|_| anyhow::anyhow!("REDIS_URL is not a valid redis:// URL"))?,
            ),
            None => None,
        };
        Ok(Self { redis })
    }

    /// `ok`, `error` or `not_configured`.
    pub async fn health(&self) -> &'static str {
        let Some(client) = &self.redis else {
            return "not_configured";
        };
        let ping = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(Duration::from_millis(500), ping).await {
            Ok(Ok(_)) => "ok",
            _ => "error",
        }
    }
}
