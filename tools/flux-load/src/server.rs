//! Starting and stopping the service under test: the release `flux-auth` binary as a child
//! process on a free loopback port, with a data folder of its own and, for Postgres, a database
//! of its own that is dropped afterwards.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

use crate::http::{Call, once};

/// The secret the service signs with during a run (and the baseline server verifies with).
pub const JWT_SECRET: &str = "flux-load-bench-secret-8c1d5e0a9b7f4e2d6c3a1f0e9d8c7b6a";

/// A port the OS says is free now. Another process could take it before the server binds it;
/// on a machine that is not starting servers in a loop that does not happen.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    File,
    Postgres,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Postgres => "postgres",
        }
    }
}

/// A database created for one run, dropped by [`BenchDb::drop_now`].
pub struct BenchDb {
    admin_url: String,
    name: String,
    pub url: String,
}

impl BenchDb {
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("flux_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        let prefix = admin_url
            .rsplit_once('/')
            .map(|(prefix, _)| prefix)
            .context("the Postgres URL must end in /<database>")?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: format!("{prefix}/{name}"),
            name,
        })
    }

    pub async fn drop_now(self) {
        match PgConnection::connect(&self.admin_url).await {
            Ok(mut conn) => {
                if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                )))
                .execute(&mut conn)
                .await
                {
                    eprintln!("flux-load: could not drop database {}: {e}", self.name);
                }
                let _ = conn.close().await;
            }
            Err(e) => eprintln!("flux-load: could not drop database {}: {e}", self.name),
        }
    }
}

/// How to start the service.
pub struct ServerSpec<'a> {
    pub binary: &'a Path,
    pub store: StoreKind,
    pub database_url: Option<&'a str>,
    pub redis_url: Option<&'a str>,
    /// Extra environment (rate limits on, their values).
    pub env: Vec<(String, String)>,
    pub work_dir: &'a Path,
    pub logs: ServerLogs,
}

/// Where a server's stdout and stderr go.
pub enum ServerLogs {
    /// /dev/null.
    Discard,
    /// This file.
    File(std::path::PathBuf),
    /// A pipe this process reads and discards, as pm2 or a container runtime reads a service's.
    Pipe,
}

pub struct Server {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    /// From spawning the process to the first 200 of `/health/ready`.
    pub start_to_ready: Duration,
    data_dir: PathBuf,
}

impl Server {
    pub async fn start(spec: &ServerSpec<'_>) -> anyhow::Result<Self> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let data_dir = spec
            .work_dir
            .join(format!("flux-auth-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data_dir)?;
        let mut command = Command::new(spec.binary);
        // Only what is set here: no .env, no config/default.toml, nothing from the caller's shell.
        command
            .env_clear()
            .current_dir(&data_dir)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CONFIG_FILE", "/dev/null")
            .env("NODE_ENV", "production")
            .env("LOG_FORMAT", "json")
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("JWT_SECRET", JWT_SECRET)
            .env("DATA_DIR", data_dir.join("data"))
            .env("STORAGE", spec.store.name())
            .env("RATE_LIMITS", "off")
            // Every load client is 127.0.0.1, with up to 1024 connections.
            .env("MAX_CONNECTIONS_PER_IP", "0")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(url) = spec.database_url {
            command.env("DATABASE_URL", url);
        }
        if let Some(url) = spec.redis_url {
            command.env("REDIS_URL", url).env(
                "REDIS_KEY_PREFIX",
                format!("flux-load-{}:", uuid::Uuid::new_v4().simple()),
            );
        }
        for (k, v) in &spec.env {
            command.env(k, v);
        }
        // The service logs a line per request, as in production; a log file is optional since a
        // long run writes hundreds of megabytes.
        match &spec.logs {
            ServerLogs::File(path) => {
                let file = std::fs::File::create(path)?;
                command.stdout(file.try_clone()?).stderr(file);
            }
            ServerLogs::Discard => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
            ServerLogs::Pipe => {
                command.stdout(Stdio::piped()).stderr(Stdio::null());
            }
        }
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", spec.binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        if let Some(mut stdout) = child.stdout.take() {
            // Read for as long as the server writes; ends at its exit.
            tokio::spawn(async move { tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await });
        }
        let ready = Call::get("/health/ready");
        // Poll every millisecond for up to 60 s (a Postgres store migrates first).
        loop {
            if let Ok((status, _)) = once(addr, &ready).await
                && status.is_success()
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("flux-auth exited before it was ready: {status}");
            }
            if started.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("flux-auth was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(Self {
            start_to_ready: started.elapsed(),
            child,
            pid,
            addr,
            data_dir,
        })
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s. Removes its data folder.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
