//! The writer with the spool as its log: batching within the linger, acknowledgements, and the
//! back-off of wake-ups.

use super::*;
use crate::security_log::EventType;
use tokio::sync::oneshot;

/// A writer with no database: the spool is the log, and each append counts one batch.
fn writer(linger: Duration) -> (mpsc::Sender<Envelope>, Writer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel(1024);
    let writer = Writer {
        rx,
        sink: None,
        spool: Arc::new(Spool::open(dir.path(), crate::clock::Clock::default()).unwrap()),
        stats: Arc::new(PipelineStats::default()),
        batch_size: 500,
        linger,
        spool_max_bytes: u64::MAX,
        metrics: crate::metrics::Metrics::default(),
        wake: Arc::default(),
    };
    (tx, writer, dir)
}

/// A wake-up after a failed scheduled probe probes at once; wake-ups' own probes keep
/// `PROBE_MIN` apart, and each that fails doubles that, until a probe succeeds.
#[test]
fn wake_ups_whose_probes_fail_are_backed_off_too() {
    let mut schedule = Schedule::new();
    schedule.probed(false, false);
    schedule.woken();
    assert!(schedule.due(), "at once after the schedule's own probe");
    schedule.probed(false, false);
    assert_eq!(schedule.wait, PROBE_MIN * 4, "the back-off still grows");
    for _ in 0..100 {
        schedule.woken();
    }
    assert_eq!(
        schedule.next,
        schedule.last.unwrap() + PROBE_MIN * 2,
        "many wake-ups bring it forward once, by the doubled wait"
    );
    for _ in 0..10 {
        schedule.woken();
        schedule.probed(false, false);
    }
    assert_eq!(schedule.wake_wait, PROBE_MAX);
    // A probe succeeds: wake-ups' probes are `PROBE_MIN` apart again.
    schedule.probed(true, true);
    schedule.probed(false, false);
    schedule.woken();
    schedule.probed(false, false);
    schedule.woken();
    assert_eq!(schedule.next, schedule.last.unwrap() + PROBE_MIN * 2);
}

fn envelope(ack: Option<oneshot::Sender<bool>>) -> Envelope {
    Envelope {
        event: SecurityEvent::new(EventType::TokenVerificationFailed),
        ack,
    }
}

/// Events that trickle in one at a time while the writer lingers share one batch: the
/// linger waits for more than the next event.
#[tokio::test]
async fn events_arriving_during_the_linger_share_one_batch() {
    let (tx, writer, _dir) = writer(Duration::from_secs(2));
    let stats = writer.stats.clone();
    let running = tokio::spawn(writer.run(CancellationToken::new()));
    for _ in 0..20 {
        tx.send(envelope(None)).await.unwrap();
        // Traffic spread over time, so the writer is waiting when each event arrives.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(tx); // after the linger the batch is written, then the writer stops
    running.await.unwrap();
    assert_eq!(stats.written.load(Ordering::Relaxed), 20);
    assert_eq!(stats.batches.load(Ordering::Relaxed), 1);
}

/// An event a sync-mode request waits on is written at once instead of after the linger
/// (here an hour).
#[tokio::test]
async fn an_event_somebody_waits_on_is_not_held_for_the_linger() {
    let (tx, writer, _dir) = writer(Duration::from_secs(3600));
    let stats = writer.stats.clone();
    let running = tokio::spawn(writer.run(CancellationToken::new()));
    let (ack, acked) = oneshot::channel();
    tx.send(envelope(Some(ack))).await.unwrap();
    let kept = tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .expect("the waited-on event was written without waiting out the linger")
        .unwrap();
    assert!(kept, "the ack says the event was kept");
    assert_eq!(stats.written.load(Ordering::Relaxed), 1);
    drop(tx);
    running.await.unwrap();
}

/// A batch the spool refuses (its folder is gone) is answered "not kept" and counted; once
/// the spool takes writes again, one `security_events_dropped` event reports the loss.
#[tokio::test]
async fn a_lost_event_is_acknowledged_as_not_kept_and_its_loss_reported_later() {
    let (tx, writer, dir) = writer(Duration::ZERO);
    let stats = writer.stats.clone();
    let spool = writer.spool.clone();
    std::fs::remove_dir(dir.path()).unwrap();
    let running = tokio::spawn(writer.run(CancellationToken::new()));
    let (ack, acked) = oneshot::channel();
    tx.send(envelope(Some(ack))).await.unwrap();
    assert!(!acked.await.unwrap(), "the ack says the event was lost");
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
    assert!(stats.last_drop().is_some());
    assert!(stats.spool_failing.load(Ordering::Relaxed));

    std::fs::create_dir(dir.path()).unwrap();
    let (ack, acked) = oneshot::channel();
    tx.send(envelope(Some(ack))).await.unwrap();
    assert!(acked.await.unwrap(), "kept once the folder is back");
    drop(tx);
    running.await.unwrap();
    assert!(!stats.spool_failing.load(Ordering::Relaxed));
    spool.seal();
    let events: Vec<SecurityEvent> = spool
        .all_files()
        .unwrap()
        .iter()
        .flat_map(|f| spool::read_file(f).unwrap().events)
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "security_events_dropped")
            .count(),
        1,
        "{types:?}"
    );
    let report = events
        .iter()
        .find(|e| e.event_type == EventType::SecurityEventsDropped)
        .unwrap();
    assert_eq!(report.metadata["count"], 1);
    assert_eq!(
        stats.dropped.load(Ordering::Relaxed),
        1,
        "the report is no loss"
    );
}
