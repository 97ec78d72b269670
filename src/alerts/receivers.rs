//! The webhooks alerts go to (`ALERT_WEBHOOK_URLS`), and what is wrong with them. A webhook's URL
//! can be a credential (Slack's are), so it is never logged, stored or printed: the outbox and the
//! logs name a receiver by its host and a digest of its URL ([`Receiver::id`]).

use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use url::Url;

use crate::config::Settings;
use crate::security_log::Severity;

/// The most webhooks alerts go to.
pub const MAX_RECEIVERS: usize = 10;
/// The prefix that makes any URL get Slack's shape (a test receiver, a Slack-compatible chat).
pub const SLACK_PREFIX: &str = "slack+";
/// The host of Slack's incoming webhooks, which get Slack's shape.
const SLACK_HOST: &str = "hooks.slack.com";

/// The shape of the body a receiver gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The alert as JSON ([`super::payload::Alert`]).
    Json,
    /// `{"text": …, "blocks": […]}`: what a Slack incoming webhook shows.
    Slack,
}

/// One webhook.
#[derive(Clone)]
pub struct Receiver {
    /// Where alerts are posted (without the `slack+` prefix). Never logged.
    pub url: Url,
    pub format: Format,
    /// `<host>#<12 hex of the URL's SHA-256>`: how the outbox, the logs and the CLI name it.
    pub id: String,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("id", &self.id)
            .field("format", &self.format)
            .finish()
    }
}

impl Receiver {
    /// One entry of `ALERT_WEBHOOK_URLS`, or what is wrong with it (without the URL's text).
    pub fn parse(entry: &str, position: usize, production: bool) -> Result<Self, String> {
        let (forced, raw) = match entry.strip_prefix(SLACK_PREFIX) {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let url = Url::parse(raw)
            .map_err(|e| format!("ALERT_WEBHOOK_URLS entry {position} is not a URL ({e})."))?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !matches!(url.scheme(), "https" | "http") || host.is_empty() {
            return Err(format!(
                "ALERT_WEBHOOK_URLS entry {position} must be an http(s) URL with a host."
            ));
        }
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if production && url.scheme() == "http" && !loopback {
            return Err(format!(
                "ALERT_WEBHOOK_URLS entry {position} ({host}) must use https in production: \
                 alerts name addresses and accounts."
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "ALERT_WEBHOOK_URLS entry {position} ({host}) must not carry a user or password."
            ));
        }
        let format = if forced || host == SLACK_HOST {
            Format::Slack
        } else {
            Format::Json
        };
        // The entry as written: one URL in both shapes is two receivers.
        let digest = hex::encode(Sha256::digest(entry.as_bytes()));
        Ok(Self {
            id: format!("{host}#{}", &digest[..12]),
            url,
            format,
        })
    }
}

/// The configured webhooks (none when `ALERT_WEBHOOK_URLS` is unset), or every problem with them.
pub fn from_settings(settings: &Settings) -> Result<Vec<Receiver>, Vec<String>> {
    let Some(raw) = settings.alert_webhook_urls.as_ref() else {
        return Ok(Vec::new());
    };
    let entries: Vec<&str> = raw
        .expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let mut problems = Vec::new();
    if entries.len() > MAX_RECEIVERS {
        problems.push(format!(
            "ALERT_WEBHOOK_URLS names {} webhooks; at most {MAX_RECEIVERS}.",
            entries.len()
        ));
    }
    let mut receivers: Vec<Receiver> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match Receiver::parse(entry, i + 1, settings.is_production()) {
            Ok(r) if receivers.iter().any(|o| o.id == r.id) => problems.push(format!(
                "ALERT_WEBHOOK_URLS entry {} repeats an earlier one ({}).",
                i + 1,
                r.id
            )),
            Ok(r) => receivers.push(r),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(receivers)
    } else {
        Err(problems)
    }
}

/// `ALERT_MIN_SEVERITY` as a severity.
pub fn min_severity(settings: &Settings) -> Option<Severity> {
    Severity::parse(settings.alert_min_severity.trim())
}

/// What is wrong with the alerts' webhooks and severity (the secret and bounds: `config`).
pub fn setting_problems(settings: &Settings) -> Vec<String> {
    let mut problems = from_settings(settings).err().unwrap_or_default();
    if min_severity(settings).is_none() {
        problems.push(format!(
            "ALERT_MIN_SEVERITY must be info, low, warning, high or critical, not {:?}.",
            settings.alert_min_severity
        ));
    }
    if let Some(public) = &settings.public_url
        && Url::parse(public)
            .ok()
            .is_none_or(|u| !matches!(u.scheme(), "https" | "http") || u.host_str().is_none())
    {
        problems.push(format!(
            "PUBLIC_URL must be this service's http(s) address, such as https://auth.example.com, \
             not {public:?}."
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_by_host_or_prefix_and_named_without_the_url() {
        let slack = Receiver::parse("https://hooks.slack.com/services/T/B/XYZ", 1, true).unwrap();
        assert_eq!(slack.format, Format::Slack);
        assert!(slack.id.starts_with("hooks.slack.com#"));
        assert!(!format!("{slack:?}").contains("XYZ"));
        let forced = Receiver::parse("slack+http://127.0.0.1:9/hook", 1, true).unwrap();
        assert_eq!(forced.format, Format::Slack);
        assert_eq!(forced.url.as_str(), "http://127.0.0.1:9/hook");
        let plain = Receiver::parse("https://siem.example.com/in", 1, true).unwrap();
        assert_eq!(plain.format, Format::Json);
        assert!(Receiver::parse("http://siem.example.com/in", 2, true).is_err());
        assert!(Receiver::parse("http://siem.example.com/in", 2, false).is_ok());
        assert!(Receiver::parse("ftp://x/y", 1, false).is_err());
        assert!(Receiver::parse("https://u:p@x.example/y", 1, false).is_err());
    }
}
