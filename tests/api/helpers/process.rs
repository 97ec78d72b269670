//! The `flux-auth` binary as a child process, as pm2, systemd or an operator runs it: a server on
//! a free loopback port with its output in files, its signals and exit, and one-shot CLI commands.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::{JWT_SECRET, free_port, random_secret};

/// The binary under test, built by Cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_flux-auth");

/// Upper bound for the binary to start, to exit after a signal, or to finish a command: a broken
/// binary fails the test instead of hanging it.
pub const PROCESS_PATIENCE: Duration = Duration::from_secs(30);

/// `flux-auth` with nothing inherited: no environment but what the test sets, `CONFIG_FILE` at
/// `/dev/null` so the repository's `config/default.toml` does not apply, JSON logs, and `work` as
/// the working directory (where `.env` is looked for). No stdin; killed if dropped.
pub fn flux_auth_command(work: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("CONFIG_FILE", "/dev/null")
        .env("LOG_FORMAT", "json")
        .current_dir(work)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A finished command: its exit status and its output as text.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `command` to completion (bounded by [`PROCESS_PATIENCE`]).
pub async fn run(mut command: Command) -> Ran {
    let output = tokio::time::timeout(PROCESS_PATIENCE, command.output())
        .await
        .expect("the command finished")
        .expect("the binary runs");
    Ran {
        status: output.status,
        stdout: text(&output.stdout),
        stderr: text(&output.stderr),
    }
}

/// Runs a CLI command of the binary in `work`, with nothing inherited but `envs`.
pub async fn run_cli(work: &Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = flux_auth_command(work);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.args(args).output().await.expect("run flux-auth")
}

/// Runs a CLI command of the binary from a blocking context, in the test's own environment less
/// the addresses of any database, Redis or data folder (only `envs` gives them), with no config
/// file and the tests' `JWT_SECRET`.
pub fn run_cli_blocking(envs: &[(&str, String)], args: &[&str]) -> Output {
    let mut command = std::process::Command::new(BIN);
    command
        .args(args)
        .env("CONFIG_FILE", "/dev/null")
        .env("JWT_SECRET", JWT_SECRET);
    for name in [
        "DATABASE_URL",
        "SECURITY_LOG_DATABASE_URL",
        "SECURITY_LOG_DIR",
        "DATA_DIR",
        "REDIS_URL",
    ] {
        command.env_remove(name);
    }
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// Bytes of a command's output as text (lossy UTF-8).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// How to start the binary as a server: on a free loopback port, with `work/data` as its data
/// folder and a random secret unless the test says otherwise, its stdout and stderr in
/// `work/<name>.stdout` and `work/<name>.stderr`.
pub struct Launch {
    work: PathBuf,
    own_dir: Option<tempfile::TempDir>,
    name: String,
    envs: Vec<(String, String)>,
    launcher: Vec<String>,
    stdout: Option<Stdio>,
    patience: Duration,
}

impl Launch {
    /// A server working in `work` (which outlives it).
    pub fn new(work: &Path) -> Launch {
        Launch {
            work: work.to_owned(),
            own_dir: None,
            name: "flux-auth".into(),
            envs: Vec::new(),
            launcher: Vec::new(),
            stdout: None,
            patience: PROCESS_PATIENCE,
        }
    }

    /// A server working in a temporary folder of its own, removed with it.
    pub fn in_temp_dir() -> Launch {
        let dir = tempfile::tempdir().unwrap();
        let mut launch = Launch::new(dir.path());
        launch.own_dir = Some(dir);
        launch
    }

    /// Names the output files, so that several runs in one folder keep theirs apart.
    pub fn named(mut self, name: &str) -> Launch {
        self.name = name.to_owned();
        self
    }

    /// Sets a variable of the server's environment (the last value set wins).
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Launch {
        let value = value.as_ref().to_string_lossy().into_owned();
        self.envs.push((key.to_owned(), value));
        self
    }

    /// Sets several variables, in order, after those set so far.
    pub fn envs<K: AsRef<str>, V: AsRef<str>>(
        mut self,
        envs: impl IntoIterator<Item = (K, V)>,
    ) -> Launch {
        for (key, value) in envs {
            self.envs
                .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        }
        self
    }

    /// Runs the binary through `program` with `args` before it (`prlimit --nofile=…`,
    /// `sh -c '… exec "$0"'`): the binary's path is the last argument.
    pub fn launched_by(mut self, program: &str, args: &[&str]) -> Launch {
        self.launcher = std::iter::once(program)
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect();
        self
    }

    /// Sends stdout there instead of `<name>.stdout` (which then stays empty).
    pub fn stdout(mut self, stdout: impl Into<Stdio>) -> Launch {
        self.stdout = Some(stdout.into());
        self
    }

    /// How long starting and stopping may take, instead of [`PROCESS_PATIENCE`].
    pub fn patience(mut self, patience: Duration) -> Launch {
        self.patience = patience;
        self
    }

    /// Starts the process without waiting for it to serve.
    pub fn spawn(self) -> FluxAuth {
        let port = free_port();
        let stdout = self.work.join(format!("{}.stdout", self.name));
        let stderr = self.work.join(format!("{}.stderr", self.name));
        let stdout_file = std::fs::File::create(&stdout).unwrap();
        let mut command = match self.launcher.split_first() {
            None => Command::new(BIN),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(BIN);
                command
            }
        };
        command
            .env_clear()
            .env("CONFIG_FILE", "/dev/null")
            .env("LOG_FORMAT", "json")
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DATA_DIR", self.work.join("data"))
            .env("JWT_SECRET", random_secret())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .stdout(self.stdout.unwrap_or_else(|| stdout_file.into()))
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true);
        let child = command.spawn().expect("start flux-auth");
        FluxAuth {
            pid: child.id().expect("a running child"),
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            stdout,
            stderr,
            patience: self.patience,
            own_dir: self.own_dir,
        }
    }

    /// Starts the process and waits until `/health/live` answers 200.
    pub async fn start(self) -> FluxAuth {
        let mut process = self.spawn();
        process.wait_until_live().await;
        process
    }
}

/// The binary serving on its port; killed if the test drops it.
pub struct FluxAuth {
    pub child: Child,
    pub pid: u32,
    pub port: u16,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    stdout: PathBuf,
    stderr: PathBuf,
    patience: Duration,
    own_dir: Option<tempfile::TempDir>,
}

impl FluxAuth {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The folder it works in, when it has one of its own ([`Launch::in_temp_dir`]).
    pub fn dir(&self) -> &Path {
        self.own_dir.as_ref().expect("a folder of its own").path()
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Both outputs, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "--- stdout\n{}--- stderr\n{}",
            self.stdout_text(),
            self.stderr_text()
        )
    }

    /// Polls `/health/live` until it answers 200; fails at once if the process exits.
    pub async fn wait_until_live(&mut self) {
        let client = Client::new();
        let deadline = Instant::now() + self.patience;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("flux-auth exited with {status} at start\n{}", self.logs());
            }
            if let Ok(response) = client.get(self.url("/health/live")).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "flux-auth never became live\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (`TERM`, `INT`, …) without waiting for anything.
    pub async fn signal(&self, signal: &str) {
        let kill = Command::new("kill")
            .args([format!("-{signal}"), self.pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(kill.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit (bounded); `after` names what should have ended it.
    pub async fn exit(&mut self, after: &str) -> ExitStatus {
        tokio::time::timeout(self.patience, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit after {after}\n{}", self.logs()))
            .unwrap()
    }

    /// Sends `signal` and waits for the exit: returns it and the time from signal to exit.
    pub async fn stop(&mut self, signal: &str) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.signal(signal).await;
        let status = self.exit(&format!("SIG{signal}")).await;
        (status, started.elapsed())
    }

    /// SIGKILL, without waiting.
    pub fn kill_9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
    }
}
