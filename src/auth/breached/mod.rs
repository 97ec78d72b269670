//! Passwords known from breaches (this folder, 100,000 of them, compiled in), and the check of a
//! new password against them, with the variations guessers try first.

use std::io::Read;

use anyhow::Context;

/// SecLists' top 100,000 of the ten-million-password set, sorted by byte value (see
/// `README.md` here for its provenance and licence).
const LIST_GZ: &[u8] = include_bytes!("passwords.txt.gz");
/// Passwords published as examples, which every guessing dictionary carries.
const WELL_KNOWN: &str = include_str!("well-known.txt");
/// The longest run of digits and punctuation taken off either end of a password before its core
/// is looked up: `Summer2024!` is `summer` with a suffix a guesser tries early. A longer run is
/// no longer a guessable decoration, and the core alone does not condemn the password.
const MAX_DECORATION: usize = 6;

/// The list in memory: every password's bytes, back to back, and where each starts.
pub struct BreachedPasswords {
    bytes: Box<[u8]>,
    /// Start of each entry in `bytes`; entry `i` ends where entry `i + 1` starts.
    starts: Box<[u32]>,
}

impl BreachedPasswords {
    /// Inflates and indexes the list compiled into the binary (a few milliseconds, once).
    pub fn load() -> anyhow::Result<Self> {
        let mut text = Vec::with_capacity(800 * 1024);
        flate2::read::GzDecoder::new(LIST_GZ)
            .read_to_end(&mut text)
            .context("the breached-password list is not valid gzip")?;
        let mut entries: Vec<&[u8]> = text
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .collect();
        // The list is stored sorted, so start-up only checks that (one comparison an entry rather
        // than a sort's many) and puts the few well-known additions in place.
        if !entries.is_sorted() {
            entries.sort_unstable();
        }
        for extra in WELL_KNOWN.lines().map(str::as_bytes) {
            if let (false, Err(at)) = (extra.is_empty(), entries.binary_search(&extra)) {
                entries.insert(at, extra);
            }
        }
        entries.dedup();
        let mut bytes = Vec::with_capacity(text.len());
        let mut starts = Vec::with_capacity(entries.len() + 1);
        for entry in &entries {
            starts.push(u32::try_from(bytes.len()).context("breached-password list too large")?);
            bytes.extend_from_slice(entry);
        }
        starts.push(u32::try_from(bytes.len()).context("breached-password list too large")?);
        Ok(Self {
            bytes: bytes.into(),
            starts: starts.into(),
        })
    }

    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn entry(&self, i: usize) -> &[u8] {
        &self.bytes[self.starts[i] as usize..self.starts[i + 1] as usize]
    }

    /// Exactly `candidate`, as listed.
    pub fn contains(&self, candidate: &str) -> bool {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = (low + high) / 2;
            match self.entry(mid).cmp(candidate.as_bytes()) {
                std::cmp::Ordering::Equal => return true,
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
            }
        }
        false
    }

    /// Whether `password` is a breached password or one of the first variations a guesser
    /// derives from one: the same in lower case (`PASSWORD`, `Dragon`), or with up to
    /// [`MAX_DECORATION`] digits and punctuation around it (`Welcome@123`, `!!monkey`).
    pub fn matches(&self, password: &str) -> bool {
        if self.contains(password) {
            return true;
        }
        let lower = password.to_lowercase();
        let core = undecorated(&lower);
        self.contains(&lower) || (!core.is_empty() && self.contains(core))
    }
}

/// `password` without the run of ASCII digits and punctuation at each end, where that run is at
/// most [`MAX_DECORATION`] characters long.
fn undecorated(password: &str) -> &str {
    let decoration = |c: char| c.is_ascii_digit() || c.is_ascii_punctuation();
    let mut core = password;
    let trailing = core.len() - core.trim_end_matches(decoration).len();
    if trailing <= MAX_DECORATION {
        core = &core[..core.len() - trailing];
    }
    let leading = core.len() - core.trim_start_matches(decoration).len();
    if leading <= MAX_DECORATION {
        core = &core[leading..];
    }
    core
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_list_has_at_least_100_000_passwords_and_finds_each_of_them() {
        let list = BreachedPasswords::load().unwrap();
        assert!(list.len() >= 100_000, "{}", list.len());
        for i in (0..list.len()).step_by(997) {
            let entry = std::str::from_utf8(list.entry(i)).unwrap();
            assert!(list.contains(entry), "{entry}");
        }
        assert!(list.contains("123456") && list.contains("trustno1"));
        assert!(!list.contains("violet tractor hums at dawn"));
    }

    #[test]
    fn breached_passwords_and_their_first_variations_match() {
        let list = BreachedPasswords::load().unwrap();
        for breached in [
            "Welcome@123",
            "Summer2024!",
            "correcthorsebatterystaple",
            "PASSWORD",
            "Dragon",
            "!!monkey",
            "2024letmein",
        ] {
            assert!(list.matches(breached), "{breached}");
        }
        for fine in [
            "violet tractor hums at dawn",
            "xK9#mQ2$vL7p",
            // The core word alone does not condemn a password with a long random decoration.
            "summer!8#4$2%7&",
            "a9",
        ] {
            assert!(!list.matches(fine), "{fine}");
        }
    }

    #[test]
    fn decorations_are_taken_off_only_when_short() {
        assert_eq!(undecorated("welcome@123"), "welcome");
        assert_eq!(undecorated("!!summer2024!"), "summer");
        assert_eq!(undecorated("summer!8#4$2%7&"), "summer!8#4$2%7&");
        assert_eq!(undecorated("2024!"), "");
        assert_eq!(undecorated("tractor dawn"), "tractor dawn");
    }
}
