//! `record`: the request-path cost of `SecurityLogger::record()`, with and without the
//! production log subscriber, and of the event's JSON log line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use flux_auth::config::Durability;
use flux_auth::metrics::Metrics;
use flux_auth::security_log::logger::{Envelope, mirror};
use flux_auth::security_log::spool::Spool;
use flux_auth::security_log::{PipelineStats, SecurityEvent, SecurityLogger};
use tokio::sync::mpsc;

use crate::{production_subscriber, runtime, sample_event, scratch_dir};

pub fn bench_record(c: &mut Criterion) {
    let rt = runtime();
    let dir = scratch_dir("record");
    let spool = Arc::new(Spool::open(&dir, flux_auth::clock::Clock::default()).unwrap());
    let capacity = 8192;
    let (tx, mut rx) = mpsc::channel::<Envelope>(capacity);
    let logger = SecurityLogger::new(
        tx,
        spool,
        Arc::new(PipelineStats::default()),
        Durability::Async,
        capacity,
        "postgresql",
        Metrics::default(),
    )
    .unwrap();
    let templates: Vec<SecurityEvent> = (0..1024).map(sample_event).collect();
    // Times `iters` calls in chunks that fit the queue; the queue is emptied between chunks,
    // outside the timing, as the writer would.
    let mut run = |iters: u64| {
        let mut total = Duration::ZERO;
        let mut left = iters as usize;
        while left > 0 {
            let n = left.min(capacity / 2);
            let events: Vec<SecurityEvent> = (0..n)
                .map(|i| templates[i % templates.len()].clone())
                .collect();
            total += rt.block_on(async {
                let started = Instant::now();
                for event in events {
                    logger.record(event).await;
                }
                started.elapsed()
            });
            while rx.try_recv().is_ok() {}
            left -= n;
        }
        total
    };
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("async, no log subscriber", |b| b.iter_custom(&mut run));
    let (subscriber, _log) = production_subscriber();
    tracing::subscriber::with_default(subscriber, || {
        group.bench_function("async, JSON log subscriber installed", |b| {
            b.iter_custom(&mut run)
        });
        // What the writer pays per event for the log-line mirror.
        group.bench_function("the event's JSON log line (writer side)", |b| {
            let event = sample_event(0);
            b.iter(|| mirror(&event))
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}
