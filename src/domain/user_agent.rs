//! What the sessions page shows of a session's user agent: the kind of device, the browser and the
//! operating system, read by `woothee` (patterns compiled into the binary, no data file; its cost
//! per call is `cargo bench --bench micro -- sessions_page`).

/// A user agent, described; every field is a short display text, `Unknown` when not recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAgentSummary {
    /// `Desktop`, `Mobile`, `Tablet` or `Unknown`.
    pub device: &'static str,
    pub browser: String,
    pub os: String,
}

const UNKNOWN: &str = "Unknown";

pub fn describe(user_agent: &str) -> UserAgentSummary {
    let Some(found) = woothee::parser::Parser::new().parse(user_agent) else {
        return UserAgentSummary {
            device: UNKNOWN,
            browser: UNKNOWN.to_owned(),
            os: UNKNOWN.to_owned(),
        };
    };
    let known = |s: &str| {
        if s.is_empty() || s == woothee::woothee::VALUE_UNKNOWN {
            UNKNOWN.to_owned()
        } else {
            s.to_owned()
        }
    };
    let device = match (found.category, found.os) {
        ("pc", _) => "Desktop",
        ("smartphone" | "mobilephone", "iPad") => "Tablet",
        // Android tablets' browsers leave `Mobile` out of the user agent; phones' put it in.
        ("smartphone", "Android") if !user_agent.contains("Mobile") => "Tablet",
        ("smartphone" | "mobilephone", _) => "Mobile",
        _ => UNKNOWN,
    };
    let os = match found.os {
        "iPhone" | "iPad" | "iPod" | "iOS" => "iOS".to_owned(),
        "Mac OSX" => "macOS".to_owned(),
        other => known(other),
    };
    UserAgentSummary {
        device,
        browser: known(found.name),
        os,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_clients_are_described() {
        let cases = [
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
                 Chrome/124.0.0.0 Safari/537.36",
                ("Desktop", "Chrome", "Windows 10"),
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like \
                 Gecko) Version/17.4 Safari/605.1.15",
                ("Desktop", "Safari", "macOS"),
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 \
                 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
                ("Mobile", "Safari", "iOS"),
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like \
                 Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
                ("Tablet", "Safari", "iOS"),
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) \
                 Chrome/124.0.0.0 Mobile Safari/537.36",
                ("Mobile", "Chrome", "Android"),
            ),
            (
                "Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 (KHTML, like Gecko) \
                 Chrome/124.0.0.0 Safari/537.36",
                ("Tablet", "Chrome", "Android"),
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
                ("Desktop", "Firefox", "Linux"),
            ),
            ("", ("Unknown", "Unknown", "Unknown")),
            ("flux-cli/1.2", ("Unknown", "Unknown", "Unknown")),
        ];
        for (ua, (device, browser, os)) in cases {
            let found = describe(ua);
            assert_eq!(
                (found.device, found.browser.as_str(), found.os.as_str()),
                (device, browser, os),
                "{ua}"
            );
        }
    }
}
