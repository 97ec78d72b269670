//! A small SMTP server on loopback that keeps what it receives: the real protocol (greeting,
//! EHLO, AUTH PLAIN, MAIL, RCPT, DATA with dot-stuffing, RSET, QUIT), so the service's lettre transport is
//! exercised as against a real relay. It can be made to refuse (421, as a server going down
//! does) and to come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::eventually;

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body, CRLF line ends, dot-stuffing undone.
    pub data: String,
}

impl Received {
    /// The `Subject:` header.
    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_owned()
    }

    /// Headers and body with quoted-printable's soft line breaks joined and `=3D` back to `=`.
    pub fn text(&self) -> String {
        self.data.replace("=\r\n", "").replace("=3D", "=")
    }

    /// The token of the first link in the message (`?token=...`).
    pub fn token(&self) -> Option<String> {
        let text = self.text();
        let at = text.find("token=")? + "token=".len();
        Some(
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit())
                .collect(),
        )
    }
}

#[derive(Default)]
struct Shared {
    received: std::sync::Mutex<Vec<Received>>,
    refusing: AtomicBool,
}

#[derive(Clone)]
pub struct SmtpSink {
    pub port: u16,
    shared: Arc<Shared>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, accepting.clone()));
            }
        });
        Self { port, shared }
    }

    /// Settings that send the app's mail here (loopback: plain SMTP is allowed).
    pub fn configure(&self, settings: &mut flux_auth::config::Settings) {
        settings.smtp_host = Some("127.0.0.1".into());
        settings.smtp_port = self.port;
        settings.mail_poll_ms = 50;
        settings.mail_retry_base_ms = 100;
    }

    /// While on, every command is answered 421 and the connection closed.
    pub fn refuse(&self, on: bool) {
        self.shared.refusing.store(on, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Messages received for `to`.
    pub fn to(&self, to: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(to)))
            .collect()
    }

    /// Waits until `count` messages for `to` have arrived; returns them.
    pub async fn wait_for(&self, to: &str, count: usize) -> Vec<Received> {
        eventually(
            &format!("{count} message(s) for {to}"),
            Duration::from_secs(20),
            || async {
                let got = self.to(to);
                (got.len() >= count).then_some(got)
            },
        )
        .await
    }
}

async fn serve(socket: tokio::net::TcpStream, shared: Arc<Shared>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    let refusing = || shared.refusing.load(Ordering::SeqCst);
    if refusing() {
        let _ = write.write_all(b"421 sink down\r\n").await;
        return;
    }
    if write.write_all(b"220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        if refusing() {
            let _ = write.write_all(b"421 sink down\r\n").await;
            return;
        }
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("AUTH PLAIN") {
            // Any credentials are accepted: the sink checks delivery, not passwords.
            if upper.trim() == "AUTH PLAIN" {
                if write.write_all(b"334 \r\n").await.is_err() {
                    return;
                }
                line.clear();
                if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
            }
            b"235 authenticated\r\n"
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            b"250 ok\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&command["MAIL FROM:".len()..]);
            to.clear();
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(address(&command["RCPT TO:".len()..]));
            b"250 ok\r\n"
        } else if upper == "DATA" {
            if write.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            let mut data = String::new();
            loop {
                line.clear();
                match lines.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            shared.received.lock().unwrap().push(Received {
                from: from.clone(),
                to: std::mem::take(&mut to),
                data,
            });
            b"250 queued\r\n"
        } else if upper == "RSET" {
            to.clear();
            b"250 ok\r\n"
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"502 not implemented\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// `<a@b>` (with any parameters after it) → `a@b`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    let inner = arg
        .strip_prefix('<')
        .and_then(|a| a.split('>').next())
        .unwrap_or(arg);
    inner.to_owned()
}
