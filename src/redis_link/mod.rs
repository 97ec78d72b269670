//! The Redis connection shared by rate limits, revocations and sign-in's one-time state, with its
//! up/down state: requests use Redis only while it is up, so an outage costs one timeout, not one
//! per request. A probe notices when it is back, and tells
//! whoever waits for that ([`RedisLink::recoveries`]): what was written in-process meanwhile is
//! then copied to Redis.

mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

pub use store::RedisStore;

pub struct RedisLink {
    /// For connections of their own (the revocation feed's subscription).
    client: redis::Client,
    store: RedisStore,
    up: AtomicBool,
    /// How many times the probe found Redis back after an outage.
    recoveries: tokio::sync::watch::Sender<u64>,
    errors: prometheus_client::metrics::counter::Counter,
}

impl RedisLink {
    pub fn new(
        url: &SecretString,
        timeout: Duration,
        errors: prometheus_client::metrics::counter::Counter,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.expose_secret())
            .map_err(|_| anyhow::anyhow!("REDIS_URL is not a valid redis:// URL"))?;
        Ok(Self {
            store: RedisStore::new(client.clone(), timeout)?,
            client,
            up: AtomicBool::new(true),
            recoveries: tokio::sync::watch::Sender::new(0),
            errors,
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Changes each time the probe finds Redis back after an outage.
    pub fn recoveries(&self) -> tokio::sync::watch::Receiver<u64> {
        self.recoveries.subscribe()
    }

    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// A connection of its own subscribed to `channel`: its sink (to ping it) and its messages,
    /// which end when the connection does. Returns once Redis has confirmed the subscription.
    pub async fn subscribe(
        &self,
        channel: &str,
    ) -> anyhow::Result<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
        let timeout = self.store.timeout();
        let subscribed = async {
            let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
            sink.subscribe(channel).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        };
        match tokio::time::timeout(timeout, subscribed).await {
            Ok(result) => Ok(result?),
            Err(_) => anyhow::bail!("redis did not confirm a subscription within {timeout:?}"),
        }
    }

    /// Marks Redis down after a failed operation; logs once per outage.
    pub fn failed(&self, error: &anyhow::Error) {
        self.errors.inc();
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %error, "Redis unavailable: rate limits, lockouts and revocations continue in-process");
        }
    }

    /// Probes Redis every `every` until `stop`; marks it up again when it answers.
    pub async fn watch(&self, every: Duration, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.store.ping().await {
                Ok(()) => {
                    if !self.up.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            "Redis reachable again: shared limits and revocations resume"
                        );
                        self.recoveries.send_modify(|n| *n += 1);
                    }
                }
                Err(e) => self.failed(&e),
            }
        }
    }
}
