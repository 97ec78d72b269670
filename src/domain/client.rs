//! Who is on the other end of a request: address, user agent and the device fingerprint.

use std::net::IpAddr;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// Longest user agent kept anywhere (events, sessions); longer values are cut with a marker.
pub const MAX_USER_AGENT_CHARS: usize = 512;

#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub user_agent: Option<String>,
    pub accept_language: Option<String>,
    /// Computed on first use: most authenticated requests (a successful /me) never need it.
    fingerprint: OnceLock<DeviceFingerprint>,
}

impl ClientInfo {
    pub fn new(ip: IpAddr, user_agent: Option<String>, accept_language: Option<String>) -> Self {
        Self {
            ip,
            user_agent,
            accept_language,
            fingerprint: OnceLock::new(),
        }
    }

    pub fn fingerprint(&self) -> &DeviceFingerprint {
        self.fingerprint.get_or_init(|| {
            DeviceFingerprint::compute(
                self.user_agent.as_deref().unwrap_or_default(),
                self.accept_language.as_deref().unwrap_or_default(),
                self.ip,
            )
        })
    }

    pub fn device_name(&self) -> String {
        device_name(self.user_agent.as_deref().unwrap_or_default())
    }
}

/// The fingerprint of a session imported from the old service, which kept a fingerprint of its
/// own making: no SHA-256 is 64 zeros, so no device has it, and the session's first refresh adopts
/// the device's.
pub const UNSET_FINGERPRINT: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 over the user agent, the accept-language and the client's network (/24 or /64), so a
/// phone moving between addresses of one network keeps its fingerprint. Stored as hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFingerprint(String);

impl DeviceFingerprint {
    pub fn compute(user_agent: &str, accept_language: &str, ip: IpAddr) -> Self {
        let network = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.0/24", o[0], o[1], o[2])
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => {
                    let o = v4.octets();
                    format!("{}.{}.{}.0/24", o[0], o[1], o[2])
                }
                None => {
                    let s = v6.segments();
                    format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
        };
        let mut hasher = Sha256::new();
        for part in [user_agent, accept_language, &network] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        Self(hex::encode(hasher.finalize()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short human label for a session list ("Chrome on macOS"); never used for decisions.
pub fn device_name(user_agent: &str) -> String {
    if user_agent.is_empty() {
        return "Unknown device".to_owned();
    }
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(needle, _)| user_agent.contains(needle))
    .map(|(_, name)| *name);
    let os = [
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Android", "Android"),
        ("Mac OS X", "macOS"),
        ("Windows", "Windows"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(needle, _)| user_agent.contains(needle))
    .map(|(_, name)| *name);
    match (browser, os) {
        (Some(b), Some(o)) => format!("{b} on {o}"),
        (Some(b), None) => b.to_owned(),
        (None, Some(o)) => o.to_owned(),
        (None, None) => "Unknown device".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_host_part_of_the_address() {
        let a = DeviceFingerprint::compute("ua", "en", "10.1.2.3".parse().unwrap());
        let b = DeviceFingerprint::compute("ua", "en", "10.1.2.200".parse().unwrap());
        let c = DeviceFingerprint::compute("ua", "en", "10.1.3.3".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        let d = DeviceFingerprint::compute("ua2", "en", "10.1.2.3".parse().unwrap());
        assert_ne!(a, d);
    }

    #[test]
    fn names_common_devices() {
        let ua = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
        assert_eq!(device_name(ua), "Chrome on macOS");
        assert_eq!(device_name(""), "Unknown device");
    }
}
