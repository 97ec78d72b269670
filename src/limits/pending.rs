//! Writes made in-process while Redis was unreachable (revocations, lockouts), waiting to be
//! copied to it once it is back.
//!
//! Each entry is a key with the value Redis must come to hold at least; values only grow (a
//! later revocation cutoff, a longer lock), so a second write of a key merges into its entry.
//! A copy takes a [`Snapshot`], writes it to Redis, and reports each key it wrote
//! ([`Pending::copied`]): the entry leaves only if nothing newer was recorded meanwhile, so a
//! write made during the copy waits for the next one instead of being dropped with the value it
//! replaced. Past its capacity the set gives up its keys for one flag, "copy everything" (every
//! live entry the in-process store holds): more writes, none lost. The flag is taken when a
//! snapshot is, so a write recorded while that copy runs is kept as a key of its own, and it comes
//! back if the copy fails.

use std::collections::HashMap;

/// A value that only grows: two writes of one key merge into the larger.
pub trait Grows: Copy + PartialEq {
    fn grow(self, other: Self) -> Self;
}

/// A lock's end (milliseconds).
impl Grows for i64 {
    fn grow(self, other: Self) -> Self {
        self.max(other)
    }
}

/// A revocation: its value (1, or a logout-all's cutoff) and its expiry, each the later.
impl Grows for (i64, chrono::DateTime<chrono::Utc>) {
    fn grow(self, other: Self) -> Self {
        (self.0.max(other.0), self.1.max(other.1))
    }
}

pub struct Pending<V> {
    entries: HashMap<String, V>,
    everything: bool,
    capacity: usize,
}

/// What one copy is to write.
#[derive(Debug, PartialEq)]
pub struct Snapshot<V> {
    /// The entries as they were when the copy began.
    pub entries: Vec<(String, V)>,
    /// Whether every live entry of the in-process store is to be copied as well.
    pub everything: bool,
}

impl<V: Grows> Pending<V> {
    /// A set that keeps at most `capacity` keys before it copies everything instead.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            everything: false,
            capacity,
        }
    }

    /// Records that Redis must come to hold `value` (at least) under `key`.
    pub fn add(&mut self, key: String, value: V) {
        if self.everything {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&key) {
            *entry = entry.grow(value);
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
            self.everything = true;
            return;
        }
        self.entries.insert(key, value);
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        !self.everything && self.entries.is_empty()
    }

    /// Keys waiting, and whether everything is to be copied.
    pub fn waiting(&self) -> (usize, bool) {
        (self.entries.len(), self.everything)
    }

    /// What a copy starting now is to write. The "everything" flag is taken with it: writes
    /// recorded from now on are kept as keys, for the next copy, whatever becomes of this one.
    pub fn snapshot(&mut self) -> Snapshot<V> {
        Snapshot {
            entries: self
                .entries
                .iter()
                .map(|(key, value)| (key.clone(), *value))
                .collect(),
            everything: std::mem::take(&mut self.everything),
        }
    }

    /// Redis now holds `value` (at least) under `key`: the entry leaves unless a newer value was
    /// recorded since the snapshot that carried `value`.
    pub fn copied(&mut self, key: &str, value: V) {
        if self.entries.get(key) == Some(&value) {
            self.entries.remove(key);
        }
    }

    /// The copy of `snapshot` stopped before its end (Redis failed again): what it did not write
    /// waits for the next one. Its keys are still here; its "everything" flag comes back.
    pub fn copy_failed(&mut self, snapshot: &Snapshot<V>) {
        if snapshot.everything {
            self.entries.clear();
            self.everything = true;
        }
    }

    /// `key` no longer needs copying (a lock lifted meanwhile).
    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Whether `key` waits (a copy checks before each write, so a key removed meanwhile is not
    /// written back).
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_entry_leaves_and_a_second_write_merges_into_the_larger() {
        let mut pending = Pending::new(10);
        assert!(pending.is_empty());
        pending.add("lock:a".into(), 100);
        pending.add("lock:a".into(), 50);
        let snapshot = pending.snapshot();
        assert_eq!(snapshot.entries, [("lock:a".to_owned(), 100)]);
        assert!(!snapshot.everything);
        pending.copied("lock:a", 100);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_newer_value_written_during_the_copy_stays_for_the_next_one() {
        let mut pending = Pending::new(10);
        pending.add("user:u".into(), 100);
        let snapshot = pending.snapshot();
        // While the copy writes 100, a later cutoff is recorded.
        pending.add("user:u".into(), 200);
        for (key, value) in &snapshot.entries {
            pending.copied(key, *value);
        }
        assert_eq!(pending.waiting(), (1, false));
        assert_eq!(pending.snapshot().entries, [("user:u".to_owned(), 200)]);
        pending.copied("user:u", 200);
        assert!(pending.is_empty());
    }

    #[test]
    fn past_its_capacity_it_copies_everything_and_a_write_during_that_copy_is_kept() {
        let mut pending = Pending::new(2);
        pending.add("a".into(), 1);
        pending.add("b".into(), 1);
        pending.add("c".into(), 1);
        assert_eq!(pending.waiting(), (0, true));
        pending.add("d".into(), 1);
        assert_eq!(pending.waiting(), (0, true), "everything covers it");

        let snapshot = pending.snapshot();
        assert!(snapshot.everything);
        // Recorded while the copy of everything runs: not covered by that copy's listing.
        pending.add("e".into(), 1);
        assert_eq!(pending.waiting(), (1, false));
        assert!(!pending.is_empty());
        assert_eq!(pending.snapshot().entries, [("e".to_owned(), 1)]);
    }

    #[test]
    fn a_failed_copy_of_everything_leaves_everything_to_copy() {
        let mut pending = Pending::new(1);
        pending.add("a".into(), 1);
        pending.add("b".into(), 1);
        let snapshot = pending.snapshot();
        assert!(pending.is_empty());
        pending.add("c".into(), 1);
        pending.copy_failed(&snapshot);
        assert_eq!(pending.waiting(), (0, true));

        // A failed copy of keys keeps the keys it did not write.
        let mut pending = Pending::new(10);
        pending.add("a".into(), 1);
        pending.add("b".into(), 1);
        let snapshot = pending.snapshot();
        pending.copied("a", 1);
        pending.copy_failed(&snapshot);
        assert_eq!(pending.snapshot().entries, [("b".to_owned(), 1)]);
    }

    #[test]
    fn a_removed_key_is_no_longer_waiting() {
        let mut pending = Pending::new(10);
        pending.add("lock:a".into(), 100);
        let snapshot = pending.snapshot();
        assert!(pending.contains("lock:a"));
        pending.remove("lock:a");
        assert!(!pending.contains("lock:a"), "lifted during the copy");
        pending.copied("lock:a", 100);
        assert!(pending.is_empty());
        assert_eq!(snapshot.entries.len(), 1);
    }

    #[test]
    fn revocations_merge_value_and_expiry_each_to_the_later() {
        let t = chrono::DateTime::from_timestamp_millis(1_000_000).unwrap();
        let later = t + chrono::Duration::seconds(5);
        assert_eq!((100, later).grow((200, t)), (200, later));
    }
}
