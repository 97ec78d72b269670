//! `Core` (the state and the background tasks, built once from the settings) and `App`: binds the
//! listener (port 0 allowed, for tests), serves until a shutdown signal, then drains in order:
//! stop accepting, finish in-flight requests (bounded by `SHUTDOWN_TIMEOUT_MS`), record
//! `service_stopped`, flush the security log.

mod collectors;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use collectors::{
    AlertCollector, HashCollector, MailRequestCollector, OutboxCollector, PoolCollector,
    RedisCollector, UserCacheCollector,
};

use crate::auth::breached::BreachedPasswords;
use crate::auth::fluxstudio_tokens::FluxStudioTokens;
use crate::auth::oidc::GoogleSignIn;
use crate::auth::oidc::one_time::OneTimeStore;
use crate::auth::passwords::PasswordHasher;
use crate::auth::refresh::RefreshTokens;
use crate::auth::revocation::{InProcessRevocations, RevocationList, SharedRevocations};
use crate::auth::service::{AuthService, MAIL_REQUEST_WORKERS, MailRequests, SessionPolicy};
use crate::auth::tokens::AccessTokens;
use crate::auth::two_factor::{Challenges, SecretCipher, TwoFactor};
use crate::clock::Clock;
use crate::config::{ConfigError, Settings, resolve_jwt_secret};
use crate::limits::Limits;
use crate::mail::Outbox;
use crate::mail::sender::{Pacing, Sender};
use crate::metrics::{Metrics, POOL_SECURITY_LOG, POOL_USERS, ProcessCollector};
use crate::redis_link::RedisLink;
use crate::security_log::{self, EventType, LogCollector, Pipeline, SecurityEvent};
use crate::server::{self, ConnectionLimits};
use crate::store;
use crate::telemetry::LogDrops;

use crate::state::{AppState, SharedState};

/// Every problem with the settings: those the settings find themselves, then those of the
/// components that read them (the OpenID sign-in's URLs and client ids, the mail sender, the
/// window for FluxStudio's access tokens, which is judged at `now`).
pub fn setting_problems(settings: &Settings, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    let mut problems = settings.problems();
    problems.extend(crate::auth::oidc::setting_problems(settings));
    problems.extend(crate::auth::fluxstudio_tokens::setting_problems(
        settings, now,
    ));
    // FRONTEND_URL, which mail's links also start at, the OpenID settings check.
    problems.extend(crate::mail::transport::setting_problems(settings));
    problems.extend(crate::alerts::setting_problems(settings));
    problems.extend(crate::telemetry::error_tracking::setting_problems(settings));
    problems
}

/// Connections `METRICS_ADDR`'s listener takes at once.
const METRICS_CONNECTIONS: usize = 64;

pub struct App {
    listener: TcpListener,
    /// `METRICS_ADDR`'s own listener, when set.
    metrics_listener: Option<TcpListener>,
    port: u16,
    state: AppState,
    pipeline: Pipeline,
    background: CancellationToken,
}

/// Everything the service runs on, built once from the settings: the state handlers share, the
/// security-log pipeline and the background tasks. `App` adds a listener; CLI commands that need
/// the state (cleanup) use it without one.
pub struct Core {
    pub state: AppState,
    pub pipeline: Pipeline,
    /// Stops background tasks (the Redis probe, cleanup) at shutdown.
    pub background: CancellationToken,
}

impl Core {
    /// Validates the settings, opens the store, the security log and Redis. `log` is what
    /// `/metrics` reports as the log lines dropped.
    pub async fn build(settings: Settings, log: LogDrops) -> anyhow::Result<Self> {
        let started = Instant::now();
        let clock = Clock::default();
        let problems = setting_problems(&settings, clock.now());
        if !problems.is_empty() {
            return Err(ConfigError::Problems(problems).into());
        }
        let secret = resolve_jwt_secret(&settings)?;
        if settings.rate_limits == crate::config::Switch::Off {
            tracing::warn!("RATE_LIMITS=off: rate limits and lockouts are disabled");
        }
        let metrics = Metrics::default();
        let store::OpenedStore {
            store,
            database: store_db,
            user_cache,
        } = store::open(&settings, &metrics).await?;
        let pipeline = security_log::start(&settings, &metrics, &clock)?;
        let hasher = PasswordHasher::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            settings.password_hash_concurrency,
            crate::auth::passwords::MEMORY_IDLE_RELEASE,
            metrics.hash_wait_seconds.clone(),
        )?;
        let redis = match &settings.redis_url {
            Some(url) => Some(Arc::new(RedisLink::new(
                url,
                Duration::from_millis(settings.redis_timeout_ms),
                metrics.redis_errors.clone(),
            )?)),
            None => None,
        };
        let background = CancellationToken::new();
        let revocations: Arc<dyn RevocationList> = match &redis {
            Some(link) => {
                let shared = Arc::new(SharedRevocations::new(
                    link.clone(),
                    &settings.redis_key_prefix,
                    clock.clone(),
                ));
                let (mirror, stop) = (shared.clone(), background.clone());
                tokio::spawn(async move { mirror.mirror(Duration::from_secs(1), stop).await });
                let (replay, stop) = (shared.clone(), background.clone());
                tokio::spawn(async move { replay.replay(stop).await });
                shared
            }
            None => Arc::new(InProcessRevocations::new(clock.clone())),
        };
        if let (Some(users), Some(db)) = (user_cache.clone(), store_db.clone()) {
            let stop = background.clone();
            let timeout = Duration::from_millis(settings.database_connect_timeout_ms);
            tokio::spawn(users.follow(db, timeout, stop));
        }
        let limits = Arc::new(Limits::new(&settings, redis.clone(), clock.clone()));
        if redis.is_some() {
            let (replay, stop) = (limits.clone(), background.clone());
            tokio::spawn(async move { replay.replay(stop).await });
        }
        let google =
            GoogleSignIn::from_settings(&settings, redis.clone(), clock.clone())?.map(Arc::new);
        let apple = GoogleSignIn::apple_from_settings(&settings, redis.clone(), clock.clone())?
            .map(Arc::new);
        if let Some(link) = redis.clone() {
            let stop = background.clone();
            tokio::spawn(async move { link.watch(Duration::from_secs(1), stop).await });
        }
        let mailer = crate::mail::transport::Mailer::from_settings(&settings)?.map(Arc::new);
        if mailer.is_none() {
            tracing::warn!(
                "no SMTP configured in production: mail waits in the outbox until SMTP_HOST \
                 (or SENDGRID_API_KEY) is set"
            );
        }
        let outbox = Arc::new(Outbox::new(
            store.clone(),
            clock.clone(),
            &settings,
            mailer.as_ref().map_or("none", |m| m.describe()),
        ));
        let auth = AuthService {
            mail: outbox.clone(),
            store,
            limits: limits.clone(),
            clock: clock.clone(),
            hasher,
            access: AccessTokens::new(
                &secret,
                settings.jwt_secret_previous.as_ref(),
                &settings.jwt_issuer,
                &settings.jwt_audience,
                settings.access_token_ttl_secs,
                clock.clone(),
            ),
            refresh: RefreshTokens::new(&secret)?,
            fluxstudio: FluxStudioTokens::from_settings(
                &settings,
                &secret,
                redis.clone(),
                clock.clone(),
            ),
            revocations,
            events: pipeline.logger.clone(),
            policy: SessionPolicy::from_settings(&settings),
            breached: BreachedPasswords::load()?,
            two_factor: TwoFactor {
                cipher: SecretCipher::from_settings(
                    settings.totp_encryption_key.as_ref(),
                    settings.totp_encryption_key_previous.as_ref(),
                )?,
                challenges: Challenges::new(
                    OneTimeStore::in_namespace(
                        redis.clone(),
                        &settings.redis_key_prefix,
                        "mfa",
                        clock.clone(),
                    ),
                    clock.clone(),
                ),
            },
            mail_requests: MailRequests::new(settings.mail_request_queue, MAIL_REQUEST_WORKERS),
        };
        let auth = Arc::new(auth);
        auth.hasher.prepare().await?;
        auth.start_mail_request_workers(&background);
        {
            let auth = auth.clone();
            let stop = background.clone();
            tokio::spawn(async move { auth.restore_revocations(stop).await });
        }
        let anomalies = Arc::new(crate::anomaly::Anomalies::new(
            &settings,
            redis.clone(),
            limits.clone(),
            crate::anomaly::Accounts {
                store: auth.store.clone(),
                mail: auth.mail.clone(),
            },
            pipeline.logger.clone(),
            metrics.clone(),
            clock.clone(),
        ));
        anomalies.clone().start(background.clone());
        let alerts = Arc::new(crate::alerts::Alerts::new(
            &settings,
            auth.store.clone(),
            pipeline.logger.clone(),
            clock.clone(),
        )?);
        alerts.clone().start(background.clone());
        if let Some(reachable) = store_db.as_ref().and_then(|db| db.reachable()) {
            let (events, stop) = (pipeline.logger.clone(), background.clone());
            tokio::spawn(wake_log_on_recovery(reachable, events, stop));
        }
        let mut collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(LogCollector::new(pipeline.logger.clone())),
            Box::new(log),
            Box::new(HashCollector(auth.clone())),
            Box::new(MailRequestCollector(auth.clone())),
        ];
        if let Some(db) = &store_db {
            collectors.push(Box::new(PoolCollector {
                pool: POOL_USERS,
                db: db.clone(),
            }));
        }
        if let Some(db) = &pipeline.database {
            collectors.push(Box::new(PoolCollector {
                pool: POOL_SECURITY_LOG,
                db: db.clone(),
            }));
        }
        if let Some(link) = redis {
            collectors.push(Box::new(RedisCollector {
                link,
                revocations: auth.revocations.clone(),
                limits: limits.clone(),
            }));
        }
        if let Some(cache) = user_cache {
            collectors.push(Box::new(UserCacheCollector(cache)));
        }
        collectors.push(Box::new(OutboxCollector(outbox)));
        collectors.push(Box::new(AlertCollector(alerts.clone())));
        collectors.push(Box::new(ProcessCollector { started }));
        let registry = metrics.registry(collectors);
        let state = AppState::new(SharedState {
            metrics,
            registry: Arc::new(registry),
            auth,
            limits,
            anomalies,
            alerts,
            clock,
            google,
            apple,
            settings: Arc::new(settings),
            store_db,
            security_db: pipeline.database.clone(),
            spool: pipeline.spool.clone(),
            started,
            probes: Arc::default(),
            stopping: CancellationToken::new(),
            mailer,
        });
        Ok(Self {
            state,
            pipeline,
            background,
        })
    }

    /// Stops background tasks and drains the security log.
    pub async fn shutdown(self) {
        self.background.cancel();
        if let Some(db) = &self.state.store_db {
            db.stop_probing();
        }
        self.pipeline.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.pipeline.writer)
            .await
            .is_err()
        {
            tracing::error!("security log writer did not finish draining");
        }
        if !self
            .pipeline
            .logger
            .drain_overflow(Duration::from_secs(2))
            .await
        {
            tracing::error!("security log overflow did not finish writing to the spool");
        }
    }
}

impl App {
    /// Builds the [`Core`] and binds the port (0 picks a free one).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_log(settings, LogDrops::default()).await
    }

    /// [`App::build`], with `/metrics` reporting the log lines `log` counts as dropped.
    pub async fn build_with_log(settings: Settings, log: LogDrops) -> anyhow::Result<Self> {
        let Core {
            mut state,
            pipeline,
            background,
        } = Core::build(settings, log).await?;
        let (host, port) = (state.settings.host, state.settings.port);
        let listener = TcpListener::bind((host, port))
            .await
            .map_err(|e| anyhow::anyhow!("could not listen on {host}:{port}: {e}"))?;
        let port = listener.local_addr()?.port();
        let metrics_listener =
            match state.settings.metrics_addr {
                Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                    anyhow::anyhow!("could not listen on METRICS_ADDR {addr}: {e}")
                })?),
                None => None,
            };
        // With PORT=0 the OS picks the port; health and logs report the one actually bound.
        state = AppState::new(SharedState {
            settings: Arc::new(Settings {
                port,
                ..(*state.settings).clone()
            }),
            ..(*state).clone()
        });
        tracing::info!(
            port,
            storage = state.auth.store.kind(),
            security_log = state.auth.events.sink(),
            startup_ms = state.started.elapsed().as_millis() as u64,
            "flux-auth listening"
        );
        Ok(Self {
            listener,
            metrics_listener,
            port,
            state,
            pipeline,
            background,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains. Returns when everything is flushed.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            metrics_listener,
            state,
            pipeline,
            background,
            ..
        } = self;
        let events = state.auth.events.clone();
        let grace = Duration::from_millis(state.settings.shutdown_timeout_ms);
        events
            .record(SecurityEvent::new(EventType::ServiceStarted).with("pid", std::process::id()))
            .await;
        if let Some(mailer) = state.mailer.clone() {
            let sender = Sender {
                store: state.auth.store.clone(),
                delivery: mailer,
                clock: state.clock.clone(),
                events: events.clone(),
                stats: state.auth.mail.stats.clone(),
                wake: state.auth.mail.wake.clone(),
                pacing: Pacing {
                    retry_base: Duration::from_millis(state.settings.mail_retry_base_ms),
                    retry_for: Duration::from_secs(state.settings.mail_retry_for_secs),
                    poll: Duration::from_millis(state.settings.mail_poll_ms.max(10)),
                },
            };
            tokio::spawn(sender.run(background.clone()));
        } else {
            tokio::spawn(crate::mail::sender::watch_summary(
                state.auth.store.clone(),
                state.auth.mail.stats.clone(),
                crate::mail::transport::EMAIL,
                Duration::from_millis(state.settings.mail_poll_ms.max(10)),
                background.clone(),
            ));
        }
        state.alerts.run(background.clone());
        tokio::spawn(crate::cleanup::schedule(
            state.clone(),
            Duration::from_secs(state.settings.cleanup_interval_secs),
            background.clone(),
        ));
        let core_state = state.clone();
        let stopping = state.stopping.clone();
        let per_ip = state.settings.max_connections_per_ip;
        let limits = ConnectionLimits {
            head_timeout: Duration::from_millis(state.settings.header_read_timeout_ms),
            max_connections: server::connection_cap(state.settings.max_connections),
            max_per_address: (per_ip > 0).then_some(per_ip),
            exempt: state.settings.trusted_proxies.clone().into(),
        };
        if limits.max_connections < state.settings.max_connections {
            tracing::warn!(
                max_connections = limits.max_connections,
                configured = state.settings.max_connections,
                "MAX_CONNECTIONS lowered to fit the open-file limit (raise it with LimitNOFILE= or ulimit -n)"
            );
        }
        if let Some(listener) = metrics_listener {
            let router = crate::http::metrics::router(state.clone());
            // A scraper needs a connection or two.
            let limits = ConnectionLimits {
                max_connections: limits.max_connections.min(METRICS_CONNECTIONS),
                max_per_address: None,
                ..limits.clone()
            };
            let (metrics, stop) = (state.metrics.connections("metrics"), stopping.clone());
            tokio::spawn(server::serve(
                listener, router, limits, metrics, stop, grace,
            ));
        }
        let router = crate::http::router(state.clone());
        tokio::spawn({
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                crate::systemd::notify("STOPPING=1");
                stopping.cancel();
            }
        });
        crate::systemd::notify("READY=1");
        tracing::info!(
            max_connections = limits.max_connections,
            max_connections_per_ip = limits.max_per_address,
            header_read_timeout_ms = state.settings.header_read_timeout_ms,
            "accepting connections"
        );
        let drained = server::serve(
            listener,
            router,
            limits,
            state.metrics.connections("api"),
            stopping,
            grace,
        )
        .await;
        let drain_started = Instant::now();
        if !drained {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "in-flight requests did not finish in time; closing them"
            );
        }
        events.flush_token_failure_summaries(true).await;
        events
            .record(SecurityEvent::new(EventType::ServiceStopped).with("pid", std::process::id()))
            .await;
        Core {
            state: core_state,
            pipeline,
            background,
        }
        .shutdown()
        .await;
        tracing::info!(
            drain_ms = drain_started.elapsed().as_millis() as u64,
            "flux-auth stopped"
        );
        Ok(())
    }
}

/// When the user store's probe finds its database back, the security log's writer is told to try
/// its own database at once rather than after its back-off (often the same server: events stop
/// going to the spool as soon as it returns).
async fn wake_log_on_recovery(
    mut reachable: tokio::sync::watch::Receiver<bool>,
    events: security_log::SecurityLogger,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = reachable.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        if *reachable.borrow_and_update() {
            events.database_recovered();
        }
    }
}
