//! `flux-load smtp-sink`: an SMTP server on loopback that accepts every message and reports the
//! rate it received them at, for the outbox's delivery rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Counts {
    received: AtomicU64,
    /// Microseconds from the sink's start to the first and the last message.
    first_us: AtomicU64,
    last_us: AtomicU64,
}

pub async fn serve(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("smtp sink on 127.0.0.1:{port}");
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let report = counts.clone();
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = report.received.load(Ordering::Relaxed);
            if now != seen {
                let span = report.last_us.load(Ordering::Relaxed)
                    - report.first_us.load(Ordering::Relaxed);
                let rate = if span > 0 {
                    (now - 1) as f64 / (span as f64 / 1e6)
                } else {
                    0.0
                };
                println!(
                    "{now} messages ({} in the last second); {rate:.0} messages/s from the first to the last",
                    now - seen
                );
                seen = now;
            }
        }
    });
    loop {
        let (socket, _) = listener.accept().await?;
        tokio::spawn(session(socket, counts.clone(), started));
    }
}

async fn session(socket: TcpStream, counts: Arc<Counts>, started: Instant) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("AUTH") {
            b"235 ok\r\n"
        } else if upper == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
            }
            let at = started.elapsed().as_micros() as u64;
            if counts.received.fetch_add(1, Ordering::Relaxed) == 0 {
                counts.first_us.store(at, Ordering::Relaxed);
            }
            counts.last_us.store(at, Ordering::Relaxed);
            b"250 queued\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"250 ok\r\n"
        };
        write.write_all(reply).await?;
    }
}
