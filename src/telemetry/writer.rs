//! Log lines reach stdout from a thread of their own; a request only copies its line into a
//! shared buffer.
//!
//! Why: if a request's line were written to stdout on the runtime worker that served it, then when
//! stdout's reader (pm2, journald, a container runtime) falls behind, its pipe fills and `write`
//! blocks, and so would every worker that logs, which is every one serving requests: the service
//! would stop answering until the reader caught up. Here a full buffer drops the line instead, and
//! counts it.
//!
//! Why not `tracing-appender`'s non-blocking writer: it hands each line over as its own allocation
//! through a channel, and its thread wakes for every line it finds waiting, then writes. Measured
//! under `/me` load (BENCHMARKS.md, "Log lines"), that cost the server ~40% more CPU per request
//! than writing each line on the worker. Here the thread is woken once per batch, lets lines
//! gather for [`LINGER`], and writes them in one `write`: a flood costs a few hundred wake-ups and
//! writes a second, not one per line.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the thread lets lines gather after the first one wakes it: the longest a line waits
/// in a quiet moment, and the batch a flood is written in (at 70,000 lines a second, ~140 lines).
/// A batch that reaches half the limit ends the wait at once, so lingering never drops lines.
const LINGER: Duration = Duration::from_millis(2);

/// A batch buffer bigger than this after a burst is given back rather than kept.
const KEEP_BYTES: usize = 256 * 1024;

/// How long dropping the [`LogOutput`] waits for the waiting lines to be written when stdout is
/// stuck.
const EXIT_WAIT: Duration = Duration::from_secs(1);

/// Makes the per-event writers the fmt layer writes each line through (one `write_all` of the
/// whole line per event).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// The running writer thread. Dropping it writes out what is waiting (for at most [`EXIT_WAIT`]
/// if stdout is stuck) and stops the thread.
pub struct LogOutput {
    shared: Arc<Shared>,
}

/// Lines dropped because stdout's reader fell behind (zero where logs are not written this way:
/// tests, embedded use).
#[derive(Clone, Debug, Default)]
pub struct LogDrops(Option<Arc<Shared>>);

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// The thread waits here for lines (and for stop); the exiting process for `finished`.
    wake: Condvar,
    limit_lines: usize,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: usize,
    stopping: bool,
    finished: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock (in this module's few lines) must not stop logging.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts the thread writing to `out`; lines beyond `limit_lines` waiting are dropped.
pub fn start<W: Write + Send + 'static>(
    out: W,
    limit_lines: usize,
) -> std::io::Result<(LogWriter, LogOutput)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        wake: Condvar::new(),
        limit_lines,
        dropped: AtomicU64::new(0),
    });
    let thread = shared.clone();
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_batches(&thread, out))?;
    Ok((
        LogWriter {
            shared: shared.clone(),
        },
        LogOutput { shared },
    ))
}

/// The thread: waits for lines, lets more gather, writes them all at once, until stopped and
/// nothing is left.
fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    let half = shared.limit_lines / 2;
    loop {
        {
            let mut pending = shared.lock();
            while pending.bytes.is_empty() && !pending.stopping {
                pending = shared.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            if pending.bytes.is_empty() {
                break;
            }
            let (mut pending, _) = shared
                .wake
                .wait_timeout_while(pending, LINGER, |p| !p.stopping && p.lines < half)
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut pending.bytes, &mut batch);
            pending.lines = 0;
        }
        // Nothing to report a failed write to but the log itself: the lines are lost, and
        // counted as dropped so `/metrics` shows it.
        if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
            let lines = batch.iter().filter(|&&b| b == b'\n').count();
            shared.dropped.fetch_add(lines as u64, Ordering::Relaxed);
        }
        batch.clear();
        if batch.capacity() > KEEP_BYTES {
            batch = Vec::new();
        }
    }
    shared.lock().finished = true;
    shared.wake.notify_all();
}

impl Drop for LogOutput {
    fn drop(&mut self) {
        let mut pending = self.shared.lock();
        pending.stopping = true;
        self.shared.wake.notify_all();
        // Bounded: a stuck stdout must not keep the process from exiting.
        let _ = self
            .shared
            .wake
            .wait_timeout_while(pending, EXIT_WAIT, |p| !p.finished);
    }
}

impl LogOutput {
    /// The count of dropped lines, for `/metrics`.
    pub fn drops(&self) -> LogDrops {
        LogDrops(Some(self.shared.clone()))
    }
}

impl LogDrops {
    pub fn count(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }
}

/// One event's writer: the fmt layer formats the whole line first and writes it with one
/// `write_all`, so each `write` here is one whole line, kept or dropped whole.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.shared.lock();
        if pending.lines >= self.shared.limit_lines {
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            // Reported as written: an error would make the fmt layer print to stderr per line.
            return Ok(line.len());
        }
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        pending.lines += 1;
        let half_full = pending.lines == self.shared.limit_lines / 2;
        drop(pending);
        // Only the first line of a batch wakes the thread (the rest find it lingering or
        // writing), and the line that fills half the buffer ends its lingering.
        if was_empty || half_full {
            self.shared.wake.notify_all();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that collects what the thread writes, and can be held stuck.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        stuck: Arc<Mutex<()>>,
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.written.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _wait_while_stuck = self.stuck.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log(writer: &LogWriter, line: &str) {
        writer.make_writer().write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_are_written_in_order_and_all_written_at_exit() {
        let sink = Sink::default();
        let (writer, output) = start(sink.clone(), 1000).unwrap();
        for i in 0..500 {
            log(&writer, &format!("line {i}\n"));
        }
        drop(output);
        let written = sink.text();
        let expected: String = (0..500).map(|i| format!("line {i}\n")).collect();
        assert_eq!(written, expected);
    }

    #[test]
    fn a_stuck_output_drops_whole_lines_beyond_the_limit_and_counts_them() {
        let sink = Sink::default();
        let stuck = sink.stuck.lock().unwrap();
        let (writer, output) = start(sink.clone(), 10).unwrap();
        let drops = output.drops();
        // The first line wakes the thread, which gets stuck writing it (or the first few).
        log(&writer, "first\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while writer.shared.lock().lines != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread never took the line"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..100 {
            log(&writer, &format!("line {i}\n"));
        }
        assert_eq!(drops.count(), 90, "10 wait, the rest are dropped");
        drop(stuck);
        drop(output);
        let written = sink.text();
        let expected: String = std::iter::once("first\n".to_owned())
            .chain((0..10).map(|i| format!("line {i}\n")))
            .collect();
        assert_eq!(written, expected);
    }

    #[test]
    fn exit_does_not_wait_for_a_stuck_output_beyond_its_bound() {
        let sink = Sink::default();
        let _stuck_for_good = sink.stuck.lock().unwrap();
        let (writer, output) = start(sink.clone(), 10).unwrap();
        log(&writer, "never written\n");
        // Dropped on another thread, so that a drop that never returned fails the test instead
        // of hanging it.
        let (done, exited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(output);
            done.send(()).unwrap();
        });
        exited
            .recv_timeout(EXIT_WAIT * 30)
            .expect("exit waited on a stuck stdout");
    }
}
