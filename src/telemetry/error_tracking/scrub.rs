//! What an error event is scrubbed of before it leaves the process: anything shaped like a token
//! (a JWT, a bearer credential, a long hex or base64url string), a password, a cookie, an
//! `Authorization` value, an email address or a client's address. Applied to every event
//! (`before_send`), breadcrumb (`before_breadcrumb`) and transaction (at the transport, which
//! has no hook of its own), so that what reaches Sentry could be shown to anyone.
//!
//! The event is walked as JSON: a value under a sensitive key is replaced whole, and every other
//! string has its token-shaped parts replaced. Sentry's own ids (event, trace and span ids, hex
//! by design) are left as they are.

use std::borrow::Cow;

use regex::{Captures, Regex};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What a value under a sensitive key becomes.
pub const FILTERED: &str = "[Filtered]";

/// Keys whose value is replaced whole, matched against the key lower-cased without `-` and `_`
/// (`Set-Cookie`, `refresh_token`, `refreshToken` all name a secret).
const SENSITIVE_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "email",
    "credential",
    "apikey",
    "privatekey",
    "clientip",
    "ipaddress",
];

/// Sentry's own identifiers: hex by design, never a secret, needed to tie an event together.
const ID_KEYS: &[&str] = &[
    "event_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "segment_id",
];

/// The patterns, compiled once per client.
pub struct Scrubber {
    jwt: Regex,
    credential: Regex,
    whole_line: Regex,
    assignment: Regex,
    email: Regex,
    hex: Regex,
    token: Regex,
}

impl Scrubber {
    pub fn new() -> Result<Self, regex::Error> {
        Ok(Self {
            // header.payload.signature, each base64url; a JWT's header always starts `{"`.
            jwt: Regex::new(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")?,
            // An Authorization value: the scheme stays, the credential goes.
            credential: Regex::new(r"(?i)\b(bearer|basic|digest|token)\s+[A-Za-z0-9._~+/=-]{4,}")?,
            // A cookie or Authorization header's value runs to the end of the line, `;` and all.
            whole_line: Regex::new(
                r#"(?i)((?:set-)?cookie"?\s*[=:]\s*"?|authorization"?\s*[=:]\s*"?)[^"\r\n]+"#,
            )?,
            // `password=…`, `"refreshToken": "…"`, `api_key: …`, `?token=…`.
            assignment: Regex::new(
                r#"(?i)\b((?:password|passwd|pwd|secret|[a-z_]*token|api_?key|credential)"?\s*[=:]\s*"?)[^\s"&,;]+"#,
            )?,
            email: Regex::new(
                r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
            )?,
            hex: Regex::new(r"\b[0-9a-fA-F]{32,}\b")?,
            // Refresh tokens, reset links' secrets, API keys: a long base64url run. Whether it
            // is random (mixed case and digits) is checked per match, so that long identifiers
            // and UUIDs stay readable.
            token: Regex::new(r"[A-Za-z0-9_-]{32,}")?,
        })
    }

    /// `item` (an event, a breadcrumb, a transaction) with its secrets replaced; `None` when it
    /// cannot be read back (it is then not sent at all).
    pub fn item<T: Serialize + DeserializeOwned>(&self, item: &T) -> Option<T> {
        let mut value = serde_json::to_value(item).ok()?;
        self.value(&mut value);
        serde_json::from_value(value).ok()
    }

    /// Scrubs a JSON value in place.
    pub fn value(&self, value: &mut Value) {
        match value {
            Value::String(text) => {
                if let Cow::Owned(scrubbed) = self.text(text) {
                    *text = scrubbed;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.value(v)),
            Value::Object(fields) => {
                for (key, field) in fields.iter_mut() {
                    if ID_KEYS.contains(&key.as_str()) {
                        continue;
                    }
                    if is_sensitive_key(key) && !matches!(field, Value::Null) {
                        *field = Value::String(FILTERED.into());
                    } else {
                        self.value(field);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// `text` with its token-shaped parts, credentials, cookies and addresses replaced.
    pub fn text<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut text = Cow::Borrowed(text);
        let mut apply = |re: &Regex, with: &dyn Fn(&Captures) -> String| {
            if re.is_match(&text) {
                text = Cow::Owned(re.replace_all(&text, |c: &Captures| with(c)).into_owned());
            }
        };
        apply(&self.jwt, &|_| "[jwt]".into());
        apply(&self.credential, &|c| format!("{} {FILTERED}", &c[1]));
        apply(&self.whole_line, &|c| format!("{}{FILTERED}", &c[1]));
        apply(&self.assignment, &|c| format!("{}{FILTERED}", &c[1]));
        apply(&self.email, &|_| "[email]".into());
        apply(&self.hex, &|_| "[hex]".into());
        apply(&self.token, &|c| {
            if looks_random(&c[0]) {
                "[token]".into()
            } else {
                c[0].to_owned()
            }
        });
        text
    }
}

fn is_sensitive_key(key: &str) -> bool {
    let folded: String = key
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    SENSITIVE_KEYS.iter().any(|k| folded.contains(k))
}

/// Upper case, lower case and a digit all present: random base64url almost always has all three
/// in 32 characters, an identifier or a lower-case UUID does not.
fn looks_random(run: &str) -> bool {
    run.bytes().any(|b| b.is_ascii_uppercase())
        && run.bytes().any(|b| b.is_ascii_lowercase())
        && run.bytes().any(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    const REFRESH: &str = "rt1_Qm9vdHN0cmFwUmVmcmVzaFRva2VuQ2FuYXJ5MTIzNDU2";

    #[test]
    fn tokens_credentials_and_addresses_are_replaced_in_text() {
        let s = Scrubber::new().unwrap();
        let cases = [
            (format!("token {JWT} refused"), "token [jwt] refused"),
            (format!("jwt {JWT}"), "jwt [jwt]"),
            (
                format!("Authorization: Bearer {REFRESH}"),
                "Authorization: [Filtered]",
            ),
            (format!("sent Bearer {REFRESH}"), "sent Bearer [Filtered]"),
            ("password=hunter2 next".into(), "password=[Filtered] next"),
            (
                r#"{"password":"hunter2"}"#.into(),
                r#"{"password":"[Filtered]"}"#,
            ),
            (
                format!("refreshToken: {REFRESH}"),
                "refreshToken: [Filtered]",
            ),
            (
                "/reset?token=abc123&x=1".into(),
                "/reset?token=[Filtered]&x=1",
            ),
            ("Cookie: a=1; refresh=2".into(), "Cookie: [Filtered]"),
            (
                "Key (email)=(ann.lee+x@example.co.uk) already exists".into(),
                "Key (email)=([email]) already exists",
            ),
            (format!("hash {}", "ab12".repeat(16)), "hash [hex]"),
            (format!("leaked {REFRESH} here"), "leaked [token] here"),
        ];
        for (input, expected) in cases {
            assert_eq!(s.text(&input), expected, "{input}");
        }
    }

    #[test]
    fn identifiers_and_plain_text_are_kept() {
        let s = Scrubber::new().unwrap();
        for kept in [
            "request 0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b failed",
            "flux_auth::store::postgres::sessions::insert_session_with_rotation",
            "route /api/auth/sessions/{id} answered 500",
            "inserts refused",
        ] {
            assert_eq!(s.text(kept), kept);
        }
    }

    #[test]
    fn values_under_sensitive_keys_go_whole_and_ids_stay() {
        let s = Scrubber::new().unwrap();
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let mut v = json!({
            "event_id": trace,
            "contexts": {"trace": {"trace_id": trace, "span_id": "00f067aa0ba902b7"}},
            "request": {"headers": {"Cookie": "a=b", "X-Csrf-Token": "x", "User-Agent": "curl"}},
            "extra": {"user_email": "a@b.io", "client_ip": "203.0.113.9", "cause": format!("bad {JWT}")},
            "tags": {"request_id": "req-1", "route": "/api/auth/login"},
        });
        s.value(&mut v);
        assert_eq!(v["event_id"], trace);
        assert_eq!(v["contexts"]["trace"]["trace_id"], trace);
        assert_eq!(v["request"]["headers"]["Cookie"], FILTERED);
        assert_eq!(v["request"]["headers"]["X-Csrf-Token"], FILTERED);
        assert_eq!(v["request"]["headers"]["User-Agent"], "curl");
        assert_eq!(v["extra"]["user_email"], FILTERED);
        assert_eq!(v["extra"]["client_ip"], FILTERED);
        assert_eq!(v["extra"]["cause"], "bad [jwt]");
        assert_eq!(v["tags"]["request_id"], "req-1");
    }

    #[test]
    fn an_event_survives_the_round_trip() {
        let s = Scrubber::new().unwrap();
        let mut event = sentry::protocol::Event {
            message: Some(format!("login failed for ann@example.com with {JWT}")),
            ..Default::default()
        };
        event.tags.insert("request_id".into(), "req-7".into());
        let scrubbed = s.item(&event).unwrap();
        assert_eq!(scrubbed.event_id, event.event_id);
        assert_eq!(
            scrubbed.message.as_deref(),
            Some("login failed for [email] with [jwt]")
        );
        assert_eq!(scrubbed.tags["request_id"], "req-7");
    }
}
