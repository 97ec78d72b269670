//! Per-address summaries of refused bearer tokens. A flood of bad tokens from one address would
//! otherwise record one event per request: past a threshold of refusals from an address within a
//! window, further ones are only counted, and when the window ends one event stands for them (how
//! many, the first and last time, their reasons). Bounded: at most `MAX_ADDRESSES` windows at once;
//! addresses past that share one window, so a flood from many addresses is summarised too.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::event::{EventType, SecurityEvent};
use crate::domain::format_timestamp;

/// Addresses followed at once (a window is ~200 bytes: about 2 MB at most).
const MAX_ADDRESSES: usize = 10_000;
/// Distinct reasons kept per window; others are counted under `other`.
const MAX_REASONS: usize = 16;
/// The window shared by addresses past `MAX_ADDRESSES`.
const MANY: &str = "*";

pub struct TokenFailureSummaries {
    /// Refusals recorded one by one per address and window; 0 records every one.
    threshold: u32,
    window: chrono::Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    windows: HashMap<String, Window>,
    /// Summaries of windows that ended when their address came back, before a sweep saw them.
    due: Vec<SecurityEvent>,
}

struct Window {
    started: DateTime<Utc>,
    recorded: u32,
    counted: u64,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    reasons: BTreeMap<String, u64>,
}

impl Window {
    fn new(started: DateTime<Utc>) -> Self {
        Self {
            started,
            recorded: 0,
            counted: 0,
            first: None,
            last: None,
            reasons: BTreeMap::new(),
        }
    }
}

impl TokenFailureSummaries {
    pub fn new(threshold: u32, window_secs: u64) -> Self {
        Self {
            threshold,
            window: chrono::Duration::seconds(window_secs.max(1) as i64),
            state: Mutex::default(),
        }
    }

    /// Summaries off: every refusal is recorded on its own.
    pub fn off() -> Self {
        Self::new(0, 1)
    }

    /// Whether a refusal from `address` at `now` is recorded on its own (`true`), or was counted
    /// into the address's summary (`false`).
    pub fn admit(&self, address: &str, reason: &str, now: DateTime<Utc>) -> bool {
        if self.threshold == 0 {
            return true;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State { windows, due } = &mut *state;
        let key = if windows.contains_key(address) || windows.len() < MAX_ADDRESSES {
            address
        } else {
            MANY
        };
        let window = windows
            .entry(key.to_owned())
            .or_insert_with(|| Window::new(now));
        if now >= window.started + self.window {
            let ended = std::mem::replace(window, Window::new(now));
            due.extend(self.summary(key, ended));
        }
        if window.recorded < self.threshold {
            window.recorded += 1;
            return true;
        }
        window.counted += 1;
        window.first.get_or_insert(now);
        window.last = Some(now);
        let reason = if window.reasons.len() < MAX_REASONS || window.reasons.contains_key(reason) {
            reason
        } else {
            "other"
        };
        *window.reasons.entry(reason.to_owned()).or_default() += 1;
        false
    }

    /// The summaries of every window that has ended by `now` (and forgets those windows); with
    /// `all`, of every window (at shutdown).
    pub fn take_due(&self, now: DateTime<Utc>, all: bool) -> Vec<SecurityEvent> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::mem::take(&mut state.due);
        let ended: Vec<String> = state
            .windows
            .iter()
            .filter(|(_, w)| all || now >= w.started + self.window)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(window) = state.windows.remove(&key) {
                out.extend(self.summary(&key, window));
            }
        }
        out
    }

    /// The event that stands for a window's counted refusals; none when it counted none. It
    /// carries the address, counts, times and reasons: no token, user agent or request detail.
    fn summary(&self, address: &str, window: Window) -> Option<SecurityEvent> {
        let (first, last) = (window.first?, window.last?);
        let reasons: Map<String, Value> = window
            .reasons
            .into_iter()
            .map(|(reason, n)| (reason, Value::from(n)))
            .collect();
        let mut event = SecurityEvent::new(EventType::TokenVerificationFailed)
            .reason("summary")
            .with("summary", true)
            .with("count", window.counted)
            .with("firstAt", format_timestamp(first))
            .with("lastAt", format_timestamp(last))
            .with("windowStartedAt", format_timestamp(window.started))
            .with("windowSecs", self.window.num_seconds())
            .with("recordedSeparately", window.recorded)
            .with("reasons", Value::Object(reasons));
        if address == MANY {
            event = event.with("addresses", "many");
        } else {
            event.ip_address = Some(address.to_owned());
        }
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn past_the_threshold_refusals_are_counted_and_summarised_once_per_window() {
        let summaries = TokenFailureSummaries::new(3, 60);
        let admitted: Vec<bool> = (0..10)
            .map(|i| summaries.admit("10.0.0.1", "malformed", at(i)))
            .collect();
        assert_eq!(admitted.iter().filter(|a| **a).count(), 3);
        assert!(summaries.take_due(at(59), false).is_empty(), "not over yet");
        let due = summaries.take_due(at(60), false);
        assert_eq!(due.len(), 1);
        let m = &due[0].metadata;
        assert_eq!(m["count"], 7);
        assert_eq!(m["firstAt"], format_timestamp(at(3)));
        assert_eq!(m["lastAt"], format_timestamp(at(9)));
        assert_eq!(m["reasons"]["malformed"], 7);
        assert_eq!(due[0].ip_address.as_deref(), Some("10.0.0.1"));
        assert!(
            summaries.take_due(at(120), true).is_empty(),
            "reported once"
        );
        // A new window records again.
        assert!(summaries.admit("10.0.0.1", "malformed", at(200)));
    }

    #[test]
    fn an_address_that_returns_after_its_window_starts_a_new_one() {
        let summaries = TokenFailureSummaries::new(1, 60);
        assert!(summaries.admit("a", "expired", at(0)));
        assert!(!summaries.admit("a", "expired", at(1)));
        assert!(summaries.admit("a", "expired", at(61)), "a new window");
        let due = summaries.take_due(at(62), false);
        assert_eq!(due.len(), 1, "the first window's summary");
        assert_eq!(due[0].metadata["count"], 1);
    }

    #[test]
    fn addresses_past_the_bound_share_one_window() {
        let summaries = TokenFailureSummaries::new(1, 60);
        for i in 0..MAX_ADDRESSES {
            assert!(summaries.admit(&format!("a{i}"), "malformed", at(0)));
        }
        assert!(summaries.admit("late-1", "malformed", at(0)));
        assert!(!summaries.admit("late-2", "malformed", at(0)));
        let due = summaries.take_due(at(0), true);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].metadata["addresses"], "many");
        assert_eq!(due[0].ip_address, None);
    }

    #[test]
    fn off_records_everything() {
        let summaries = TokenFailureSummaries::off();
        assert!((0..1000).all(|i| summaries.admit("a", "malformed", at(i))));
        assert!(summaries.take_due(at(10_000), true).is_empty());
    }
}
