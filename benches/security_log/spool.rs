//! `spool`: appending and fsyncing 500-event batches, serialising a batch, and the real writer
//! with the spool as its sink.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use flux_auth::metrics::Metrics;
use flux_auth::security_log::logger::Envelope;
use flux_auth::security_log::spool::Spool;
use flux_auth::security_log::writer::{SPOOL_BATCH_MAX, Writer};
use flux_auth::security_log::{PipelineStats, SecurityEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{BATCH, batch, batch_of, runtime, sample_event, scratch_dir};

pub fn bench_spool(c: &mut Criterion) {
    let dir = scratch_dir("spool");
    let spool = Spool::open(&dir, flux_auth::clock::Clock::default()).unwrap();
    let events = batch(0);
    let mut group = c.benchmark_group("spool");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("serialise 500 to JSON lines (no I/O)", |b| {
        b.iter(|| {
            let mut buf = Vec::with_capacity(BATCH * 1024);
            for event in &events {
                serde_json::to_writer(&mut buf, event).unwrap();
                buf.push(b'\n');
            }
            buf
        })
    });
    let line_bytes: usize = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap().len() + 1)
        .sum();
    println!(
        "spool: a batch of {BATCH} is {line_bytes} bytes ({} per event)",
        line_bytes / BATCH
    );
    group.bench_function("append 500 + fdatasync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let started = Instant::now();
                spool.append(&events).unwrap();
                total += started.elapsed();
                // Keep the disk footprint small: start over every 200 batches (untimed).
                if i % 200 == 199 {
                    spool.seal();
                    for file in spool.all_files().unwrap() {
                        spool.remove(&file).unwrap();
                    }
                }
            }
            total
        })
    });
    let big = batch_of(SPOOL_BATCH_MAX);
    group.throughput(Throughput::Elements(SPOOL_BATCH_MAX as u64));
    group.bench_function(
        format!("append {SPOOL_BATCH_MAX} + fdatasync (the writer's spool batch cap)"),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let started = Instant::now();
                    spool.append(&big).unwrap();
                    total += started.elapsed();
                    if i % 25 == 24 {
                        spool.seal();
                        for file in spool.all_files().unwrap() {
                            spool.remove(&file).unwrap();
                        }
                    }
                }
                total
            })
        },
    );
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
    sustained_spool();
}

/// The real writer with the spool as its sink (no database): 200,000 events sent into its queue
/// as fast as the queue takes them, timed until the last one is durable (appended and fsynced).
fn sustained_spool() {
    const N: u64 = 200_000;
    let rt = runtime();
    for round in 1..=3 {
        let dir = scratch_dir("spool-sustained");
        let stats = Arc::new(PipelineStats::default());
        let (tx, rx) = mpsc::channel::<Envelope>(8192);
        let writer = Writer {
            rx,
            sink: None,
            spool: Arc::new(Spool::open(&dir, flux_auth::clock::Clock::default()).unwrap()),
            stats: stats.clone(),
            batch_size: BATCH,
            linger: Duration::from_millis(5),
            spool_max_bytes: u64::MAX,
            metrics: Metrics::default(),
            wake: Arc::default(),
        };
        let templates: Vec<SecurityEvent> = (0..1024).map(sample_event).collect();
        let elapsed = rt.block_on(async {
            let stop = CancellationToken::new();
            let handle = tokio::spawn(writer.run(stop.clone()));
            let started = Instant::now();
            for i in 0..N as usize {
                let event = templates[i % templates.len()].clone();
                tx.send(Envelope { event, ack: None }).await.unwrap();
            }
            while stats.written.load(Ordering::Relaxed) < N {
                tokio::task::yield_now().await;
            }
            let elapsed = started.elapsed();
            stop.cancel();
            handle.await.unwrap();
            elapsed
        });
        println!(
            "spool: sustained through the writer (round {round}): {N} events durable in {elapsed:?} = {:.0} events/s, {} fsynced appends",
            N as f64 / elapsed.as_secs_f64(),
            stats.batches.load(Ordering::Relaxed),
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
