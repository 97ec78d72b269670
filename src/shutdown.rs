//! Stop signals. pm2 sends SIGINT, systemd and Docker SIGTERM; both mean "drain and exit 0".

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM, caught from the moment [`StopSignals::listen`] returns. `serve` listens
/// before it builds the app, so a stop signal that comes right after `READY=1` (or during start)
/// drains the service: a listener created lazily, when the shutdown future is first polled, left
/// a window in which the default action killed the process instead.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    pub fn listen() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves with the signal's name when SIGINT or SIGTERM arrives.
    pub async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
