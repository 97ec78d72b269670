//! The service's `Clock` (src/clock.rs, `state.clock`) is its only source of "now". Tests move it
//! forward instead of sleeping, and that is only sound when everything that depends on time
//! (token expiry, sessions, revocations, one-time states, events, cleanup, health) reads the same
//! clock: one component on the system's time would disagree with the rest as soon as it moves.
//! This fails on a read of the system's time in the service's code (`src/`, `mod tests` blocks,
//! `tests.rs` files and comments left out) anywhere but the places listed in `ALLOWED`.
//!
//! Monotonic `Instant`s are not "now": they measure durations (timeouts, latencies, back-offs).
//! `Uuid::now_v7()` ids carry the system's time only for ordering; the one id whose time is read
//! back (an access token's `jti`) is made from the clock.

use std::path::{Path, PathBuf};

/// Ways to read the system's time.
const READS: &[&str] = &[
    "Utc::now",
    "Local::now",
    "SystemTime::now",
    "OffsetDateTime::now",
    "get_current_timestamp",
];

/// Files that may read it, and why.
const ALLOWED: &[(&str, &str)] = &[
    (
        "clock.rs",
        "the clock itself: the system's time plus the offset tests add",
    ),
    (
        "telemetry/json.rs",
        "log lines are stamped with the system's time: they are read beside other programs' logs",
    ),
];

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Each read of the system's time in `text` outside tests and comments, as `line: text`.
fn reads(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (number, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        let next = lines.get(number + 1).map_or("", |l| l.trim());
        if trimmed == "#[cfg(test)]" && next.starts_with("mod tests") {
            break;
        }
        let code = trimmed.split("//").next().unwrap_or_default();
        if READS.iter().any(|read| code.contains(read)) {
            found.push(format!("{}: {trimmed}", number + 1));
        }
    }
    found
}

#[test]
fn only_the_clock_and_log_lines_read_the_system_time() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut allowed_seen = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        if relative.ends_with("/tests.rs") {
            continue;
        }
        let found = reads(&std::fs::read_to_string(&file).unwrap());
        if found.is_empty() {
            continue;
        }
        if ALLOWED.iter().any(|(path, _)| *path == relative) {
            allowed_seen.push(relative);
            continue;
        }
        wrong.extend(found.into_iter().map(|at| format!("  src/{relative}:{at}")));
    }
    assert!(
        wrong.is_empty(),
        "the system's time read outside the clock; take `now` from the state's Clock (passed into \
         the component) instead:\n{}",
        wrong.join("\n")
    );
    for (path, why) in ALLOWED {
        assert!(
            allowed_seen.iter().any(|seen| seen == path),
            "src/{path} is allowed to read the system's time ({why}) but no longer does: \
             take it off ALLOWED"
        );
    }
}

#[test]
fn reads_are_found_in_code_but_not_in_comments_or_tests() {
    let text = "let a = 1; // Utc::now() in a comment\n\
                let t = chrono::Utc::now();\n\
                /// SystemTime::now() in a doc\n\
                #[cfg(test)]\n\
                mod tests {\n\
                    let t = Utc::now();\n\
                }\n";
    assert_eq!(reads(text), ["2: let t = chrono::Utc::now();"]);
}
