//! Per-address summaries of refused bearer tokens. A flood of bad tokens from one address would
//! otherwise record one event per request: past a threshold of refusals from an address within a
//! window, further ones are only counted, and when the window ends one event stands for them (how
//! many, the first and last time, their reasons). Bounded: at most `MAX_ADDRESSES` windows at once;
//! addresses past that share one window, so a flood from many addresses is summarised too, and
//! that window's summary names the addresses that sent the most.
//!
//! Only anonymous refusals are merged into plain counts. A refusal that names a user (an access
//! token whose signature verified but whose session is revoked or whose user is gone, a refresh
//! token of a known session) may be a stolen token being replayed: the first for each user,
//! session and reason in a window is recorded on its own, from whichever address and whatever
//! else that address sent, and repeats are counted in the summary under who they named. Those
//! are no more than the sessions the service created, so a flood of junk cannot hide them and
//! they cannot flood the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::event::{EventType, SecurityEvent};
use crate::domain::format_timestamp;

/// Addresses followed at once (a window is ~200 bytes: about 2 MB at most).
const MAX_ADDRESSES: usize = 10_000;
/// Distinct reasons kept per window; others are counted under `other`.
const MAX_REASONS: usize = 16;
/// The window shared by addresses past `MAX_ADDRESSES`.
const MANY: &str = "*";
/// Users, sessions and reasons of named refusals followed at once (an entry is ~200 bytes: about
/// 2 MB at most), and as many repeat counts in the windows. Past it a new one is counted under
/// `named` like a repeat instead of recorded: reaching it takes that many distinct sessions
/// refused within one window.
const MAX_NAMED: usize = 10_000;
/// Named repeats listed in one summary, the most repeated first.
const NAMED_LISTED: usize = 10;
/// Addresses the shared window follows to tell which sent the most (Space-Saving counters).
const TOP_TRACKED: usize = 64;
/// Addresses listed in the shared window's summary, the most counted first.
const TOP_LISTED: usize = 10;

/// Who a refused token names, when it names someone: its user, and its session when it has one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Named {
    pub user_id: String,
    pub session_id: Option<String>,
}

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
    /// Each user, session and reason refused lately, and when its window began: the first
    /// refusal is recorded, repeats until the window ends are counted.
    named: HashMap<(Named, String), DateTime<Utc>>,
    /// Repeat counts held by all windows together (bounded by `MAX_NAMED`).
    repeats: usize,
}

struct Window {
    started: DateTime<Utc>,
    recorded: u32,
    counted: u64,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    reasons: BTreeMap<String, u64>,
    /// Repeated named refusals counted here, by who and why.
    named: HashMap<(Named, String), u64>,
    /// Repeated named refusals counted here past the bound on repeat counts.
    named_untracked: u64,
    /// The shared window's counted refusals by address, the heaviest kept.
    addresses: TopAddresses,
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
            named: HashMap::new(),
            named_untracked: 0,
            addresses: TopAddresses::default(),
        }
    }

    /// Counts a named refusal under who it named (`repeats`: the counts held by every window).
    fn count_named(&mut self, entry: (Named, String), repeats: &mut usize) {
        if let Some(n) = self.named.get_mut(&entry) {
            *n += 1;
        } else if *repeats < MAX_NAMED {
            self.named.insert(entry, 1);
            *repeats += 1;
        } else {
            self.named_untracked += 1;
        }
    }

    /// Counts a refusal into the summary instead of recording it.
    fn count(&mut self, reason: &str, now: DateTime<Utc>) {
        self.counted += 1;
        self.first.get_or_insert(now);
        self.last = Some(now);
        let reason = if self.reasons.len() < MAX_REASONS || self.reasons.contains_key(reason) {
            reason
        } else {
            "other"
        };
        *self.reasons.entry(reason.to_owned()).or_default() += 1;
    }
}

/// The addresses that sent the most, over a stream of any number of addresses in bounded
/// memory (the Space-Saving algorithm): `TOP_TRACKED` counters; a new address takes the place of
/// the least counted one and inherits its count as a possible over-count. An address with more
/// than 1/`TOP_TRACKED` of the counts is never displaced, so whoever dominated is listed.
#[derive(Default)]
struct TopAddresses {
    /// Address: (count, of which possibly someone else's).
    counts: HashMap<String, (u64, u64)>,
}

impl TopAddresses {
    fn add(&mut self, address: &str) {
        if let Some((n, _)) = self.counts.get_mut(address) {
            *n += 1;
            return;
        }
        let inherited = if self.counts.len() < TOP_TRACKED {
            0
        } else {
            let Some((least, n)) = self
                .counts
                .iter()
                .min_by_key(|(_, (n, _))| *n)
                .map(|(a, (n, _))| (a.clone(), *n))
            else {
                return;
            };
            self.counts.remove(&least);
            n
        };
        self.counts
            .insert(address.to_owned(), (inherited + 1, inherited));
    }

    /// The most counted addresses, each with the bounds of its count.
    fn listed(self) -> Vec<Value> {
        let mut top: Vec<(String, (u64, u64))> = self.counts.into_iter().collect();
        top.sort_by(|(a, (n, _)), (b, (m, _))| m.cmp(n).then_with(|| a.cmp(b)));
        top.into_iter()
            .take(TOP_LISTED)
            .map(|(ip, (n, over))| json!({ "ip": ip, "atLeast": n - over, "atMost": n }))
            .collect()
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
    /// into the address's summary (`false`). A refusal naming someone (`named`) is recorded on
    /// its own the first time in a window for that user, session and reason, from any address.
    pub fn admit(
        &self,
        address: &str,
        reason: &str,
        named: Option<Named>,
        now: DateTime<Utc>,
    ) -> bool {
        if self.threshold == 0 {
            return true;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State {
            windows,
            due,
            named: followed,
            repeats,
        } = &mut *state;
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
            *repeats -= ended.named.len();
            due.extend(self.summary(key, ended));
        }
        if let Some(named) = named {
            let entry = (named, reason.to_owned());
            let fresh = followed
                .get(&entry)
                .is_none_or(|started| now >= *started + self.window);
            if fresh && (followed.len() < MAX_NAMED || followed.contains_key(&entry)) {
                followed.insert(entry, now);
                return true;
            }
            window.count_named(entry, repeats);
        } else if window.recorded < self.threshold {
            window.recorded += 1;
            return true;
        }
        window.count(reason, now);
        if key == MANY {
            window.addresses.add(address);
        }
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
                state.repeats -= window.named.len();
                out.extend(self.summary(&key, window));
            }
        }
        let window = self.window;
        state
            .named
            .retain(|_, started| !all && now < *started + window);
        out
    }

    /// The event that stands for a window's counted refusals; none when it counted none. It
    /// carries the address, counts, times and reasons, the users and sessions of repeated named
    /// refusals, and for the shared window the addresses that sent the most: no token, user
    /// agent or request detail.
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
        let mut repeated: Vec<((Named, String), u64)> = window.named.into_iter().collect();
        if !repeated.is_empty() || window.named_untracked > 0 {
            repeated.sort_by(|(a, n), (b, m)| {
                m.cmp(n).then_with(|| {
                    (&a.0.user_id, &a.0.session_id, &a.1).cmp(&(
                        &b.0.user_id,
                        &b.0.session_id,
                        &b.1,
                    ))
                })
            });
            let unlisted = window.named_untracked
                + repeated
                    .iter()
                    .skip(NAMED_LISTED)
                    .map(|(_, n)| n)
                    .sum::<u64>();
            let listed: Vec<Value> = repeated
                .into_iter()
                .take(NAMED_LISTED)
                .map(|((named, reason), n)| {
                    json!({
                        "userId": named.user_id,
                        "sessionId": named.session_id,
                        "reason": reason,
                        "count": n,
                    })
                })
                .collect();
            event = event.with("named", listed).with("namedUnlisted", unlisted);
        }
        if address == MANY {
            event = event
                .with("addresses", "many")
                .with("topAddresses", window.addresses.listed());
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

    impl TokenFailureSummaries {
        fn admit_anonymous(&self, address: &str, reason: &str, now: DateTime<Utc>) -> bool {
            self.admit(address, reason, None, now)
        }
    }

    fn named(user: &str, session: &str) -> Option<Named> {
        Some(Named {
            user_id: user.into(),
            session_id: Some(session.into()),
        })
    }

    #[test]
    fn past_the_threshold_refusals_are_counted_and_summarised_once_per_window() {
        let summaries = TokenFailureSummaries::new(3, 60);
        let admitted: Vec<bool> = (0..10)
            .map(|i| summaries.admit_anonymous("10.0.0.1", "malformed", at(i)))
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
        assert!(summaries.admit_anonymous("10.0.0.1", "malformed", at(200)));
    }

    #[test]
    fn an_address_that_returns_after_its_window_starts_a_new_one() {
        let summaries = TokenFailureSummaries::new(1, 60);
        assert!(summaries.admit_anonymous("a", "expired", at(0)));
        assert!(!summaries.admit_anonymous("a", "expired", at(1)));
        assert!(
            summaries.admit_anonymous("a", "expired", at(61)),
            "a new window"
        );
        let due = summaries.take_due(at(62), false);
        assert_eq!(due.len(), 1, "the first window's summary");
        assert_eq!(due[0].metadata["count"], 1);
    }

    #[test]
    fn addresses_past_the_bound_share_one_window() {
        let summaries = TokenFailureSummaries::new(1, 60);
        for i in 0..MAX_ADDRESSES {
            assert!(summaries.admit_anonymous(&format!("a{i}"), "malformed", at(0)));
        }
        assert!(summaries.admit_anonymous("late-1", "malformed", at(0)));
        assert!(!summaries.admit_anonymous("late-2", "malformed", at(0)));
        let due = summaries.take_due(at(0), true);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].metadata["addresses"], "many");
        assert_eq!(due[0].ip_address, None);
    }

    /// Junk past the threshold first, then replays of revoked tokens: the first replay of each
    /// session is recorded on its own with its user, and the repeats are listed by user and
    /// session in the summary.
    #[test]
    fn refusals_that_name_a_user_are_never_lost_in_an_anonymous_count() {
        let summaries = TokenFailureSummaries::new(3, 60);
        for i in 0..50 {
            summaries.admit_anonymous("10.0.0.1", "malformed", at(i % 10));
        }
        let admitted: Vec<bool> = (0..5)
            .map(|i| summaries.admit("10.0.0.1", "session_revoked", named("u1", "s1"), at(i)))
            .collect();
        assert_eq!(admitted, [true, false, false, false, false]);
        assert!(summaries.admit("10.0.0.1", "session_revoked", named("u2", "s2"), at(5)));
        assert!(
            summaries.admit("10.0.0.1", "user_gone", named("u1", "s1"), at(6)),
            "another reason is another entry"
        );
        let due = summaries.take_due(at(60), false);
        assert_eq!(due.len(), 1);
        let m = &due[0].metadata;
        assert_eq!(m["count"], 47 + 4, "{m:?}");
        assert_eq!(m["reasons"]["session_revoked"], 4, "{m:?}");
        assert_eq!(
            m["named"],
            json!([{ "userId": "u1", "sessionId": "s1", "reason": "session_revoked", "count": 4 }])
        );
        assert_eq!(m["namedUnlisted"], 0);
        assert!(summaries.take_due(at(120), false).is_empty());
        {
            let state = summaries.state.lock().unwrap();
            assert!(
                state.named.is_empty(),
                "each forgotten when its window ends"
            );
            assert_eq!(state.repeats, 0);
        }
        assert!(
            summaries.admit("10.0.0.1", "session_revoked", named("u1", "s1"), at(121)),
            "recorded again in a new window"
        );
    }

    /// The same token replayed from many addresses is recorded once per window, not once per
    /// address: addresses are cheap (an IPv6 /64 each), tokens are not.
    #[test]
    fn a_named_refusal_is_recorded_once_per_window_whichever_address_sends_it() {
        let summaries = TokenFailureSummaries::new(20, 60);
        let recorded = (0..100)
            .filter(|i| {
                summaries.admit(&format!("a{i}"), "user_gone", named("u1", "s1"), at(i % 50))
            })
            .count();
        assert_eq!(recorded, 1);
        assert!(summaries.admit("a0", "user_gone", named("u1", "s1"), at(60)));
        let due = summaries.take_due(at(200), true);
        let counted: u64 = due
            .iter()
            .map(|e| e.metadata["count"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, 99);
    }

    /// Memory is bounded: past `MAX_NAMED` subjects followed at once a new one is counted under
    /// who it named instead of recorded, and past `MAX_NAMED` repeat counts it is counted as
    /// unlisted.
    #[test]
    fn named_refusals_followed_are_bounded() {
        let summaries = TokenFailureSummaries::new(1, 60);
        for i in 0..MAX_NAMED {
            assert!(summaries.admit("a", "session_revoked", named("u", &i.to_string()), at(0)));
        }
        for _ in 0..3 {
            assert!(!summaries.admit("a", "session_revoked", named("u", "late"), at(1)));
        }
        for i in 0..MAX_NAMED {
            summaries.admit("b", "session_revoked", named("u", &i.to_string()), at(2));
        }
        {
            let state = summaries.state.lock().unwrap();
            assert_eq!(state.named.len(), MAX_NAMED);
            assert_eq!(state.repeats, MAX_NAMED);
        }
        let due = summaries.take_due(at(62), false);
        let of = |address: &str| {
            due.iter()
                .find(|e| e.ip_address.as_deref() == Some(address))
                .unwrap()
                .metadata
                .clone()
        };
        let a = of("a");
        assert_eq!(a["named"][0]["sessionId"], "late");
        assert_eq!(a["named"][0]["count"], 3);
        let b = of("b");
        assert_eq!(b["count"], MAX_NAMED as u64);
        assert_eq!(b["named"].as_array().unwrap().len(), NAMED_LISTED);
        // One repeat count was free for "b" (the other went to "late"): the rest are untracked.
        assert_eq!(b["namedUnlisted"], (MAX_NAMED - NAMED_LISTED) as u64);
        let state = summaries.state.lock().unwrap();
        assert!(state.named.is_empty());
        assert_eq!(state.repeats, 0);
    }

    /// The shared window says which addresses sent the most, even when they are a few among
    /// thousands that each sent one.
    #[test]
    fn the_shared_window_names_the_addresses_that_dominated_it() {
        let summaries = TokenFailureSummaries::new(1, 60);
        for i in 0..MAX_ADDRESSES {
            summaries.admit_anonymous(&format!("a{i}"), "malformed", at(0));
        }
        for round in 0..100 {
            for i in 0..50 {
                summaries.admit_anonymous(&format!("many-{round}-{i}"), "malformed", at(1));
            }
            for _ in 0..(round % 3 + 1) * 10 {
                summaries.admit_anonymous("heavy", "malformed", at(1));
            }
            for _ in 0..3 {
                summaries.admit_anonymous("medium", "malformed", at(1));
            }
        }
        let due = summaries.take_due(at(1), true);
        let shared = due
            .iter()
            .find(|e| e.metadata.get("addresses") == Some(&json!("many")))
            .unwrap();
        let top = shared.metadata["topAddresses"].as_array().unwrap();
        assert!(top.len() <= TOP_LISTED);
        assert_eq!(top[0]["ip"], "heavy", "{top:?}");
        let heavy: u64 = (0..100).map(|r| (r % 3 + 1) * 10).sum();
        assert!(top[0]["atLeast"].as_u64() <= Some(heavy), "{top:?}");
        assert!(top[0]["atMost"].as_u64() >= Some(heavy), "{top:?}");
        assert_eq!(top[1]["ip"], "medium", "{top:?}");
    }

    #[test]
    fn off_records_everything() {
        let summaries = TokenFailureSummaries::off();
        assert!((0..1000).all(|i| summaries.admit_anonymous("a", "malformed", at(i))));
        assert!(summaries.take_due(at(10_000), true).is_empty());
    }
}
