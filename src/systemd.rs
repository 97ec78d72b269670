//! systemd readiness protocol (`sd_notify`): `READY=1` once the port is bound and serving,
//! `STOPPING=1` when shutdown begins. A no-op unless `NOTIFY_SOCKET` is set (Type=notify).

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to systemd; failures are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| {
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // Abstract namespace socket (Linux): a leading '@' stands for a NUL byte.
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                return socket.send_to_addr(state.as_bytes(), &addr).map(|_| ());
            }
            #[cfg(not(target_os = "linux"))]
            return Err(std::io::Error::other("abstract sockets need Linux"));
        }
        socket.send_to(state.as_bytes(), &path).map(|_| ())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, state, "could not notify systemd");
    }
}
