//! The sign-in settings, checked once at start: which provider, which client ids, where browser
//! flows go. `problems()` reports every mistake at once, as the rest of the config does.

use secrecy::SecretString;
use url::Url;

use crate::config::Settings;
use crate::domain::GOOGLE_ISSUER;

/// Google's own spelling without the scheme; its ID tokens carry either.
pub const GOOGLE_ISSUER_BARE: &str = "accounts.google.com";

pub struct OidcSettings {
    /// The issuer identities are stored under; for Google always `https://accounts.google.com`.
    pub issuer: String,
    /// Every `iss` accepted for that issuer (Google has two spellings).
    pub accepted_issuers: Vec<String>,
    /// `None`: Google's published endpoints; `Some`: `{issuer}/.well-known/openid-configuration`.
    pub discovery_url: Option<Url>,
    pub client_ids: Vec<String>,
    pub client_secret: Option<SecretString>,
    pub redirect_uri: Option<Url>,
    pub frontend_url: Option<Url>,
    pub hosted_domain: Option<String>,
    /// Production refuses plain-http provider endpoints.
    pub require_https: bool,
}

impl OidcSettings {
    /// `None` when sign-in is not configured (no client id). Assumes `setting_problems` is empty.
    pub fn from_settings(s: &Settings) -> anyhow::Result<Option<Self>> {
        if s.google_client_id.is_empty() {
            return Ok(None);
        }
        let custom = s
            .oidc_issuer_url
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty() && *i != GOOGLE_ISSUER && *i != GOOGLE_ISSUER_BARE);
        let (issuer, accepted_issuers, discovery_url) = match custom {
            None => (
                GOOGLE_ISSUER.to_owned(),
                vec![GOOGLE_ISSUER.to_owned(), GOOGLE_ISSUER_BARE.to_owned()],
                None,
            ),
            Some(issuer) => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let url = Url::parse(&discovery)
                    .map_err(|_| anyhow::anyhow!("OIDC_ISSUER_URL is not a valid URL"))?;
                (issuer.to_owned(), vec![issuer.to_owned()], Some(url))
            }
        };
        let url = |name: &str, value: &Option<String>| -> anyhow::Result<Option<Url>> {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| Url::parse(v).map_err(|_| anyhow::anyhow!("{name} is not a valid URL")))
                .transpose()
        };
        Ok(Some(Self {
            issuer,
            accepted_issuers,
            discovery_url,
            client_ids: s.google_client_id.clone(),
            client_secret: s.google_client_secret.clone(),
            redirect_uri: url("GOOGLE_REDIRECT_URI", &s.google_redirect_uri)?,
            frontend_url: url("FRONTEND_URL", &s.frontend_url)?,
            hosted_domain: s
                .google_hosted_domain
                .as_deref()
                .map(|d| d.trim().to_ascii_lowercase())
                .filter(|d| !d.is_empty()),
            require_https: s.is_production(),
        }))
    }
}

/// Apple's issuer: its identity tokens' `iss`, and where its discovery document is.
pub const APPLE_ISSUER: &str = "https://appleid.apple.com";

impl OidcSettings {
    /// Sign in with Apple's settings; `None` without `APPLE_CLIENT_ID`. Apple's keys are found
    /// through its discovery document, as a custom issuer's are (`APPLE_ISSUER_URL` in tests).
    pub fn for_apple(s: &Settings) -> anyhow::Result<Option<Self>> {
        if s.apple_client_id.is_empty() {
            return Ok(None);
        }
        let issuer = s
            .apple_issuer_url
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .unwrap_or(APPLE_ISSUER)
            .trim_end_matches('/')
            .to_owned();
        let discovery = Url::parse(&format!("{issuer}/.well-known/openid-configuration"))
            .map_err(|_| anyhow::anyhow!("APPLE_ISSUER_URL is not a valid URL"))?;
        Ok(Some(Self {
            accepted_issuers: vec![issuer.clone()],
            issuer,
            discovery_url: Some(discovery),
            client_ids: s.apple_client_id.clone(),
            client_secret: None,
            redirect_uri: None,
            frontend_url: None,
            hosted_domain: None,
            require_https: s.is_production(),
        }))
    }
}

/// Mistakes in the sign-in settings, each with what to do about it.
pub fn setting_problems(s: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    let production = s.is_production();
    let check_url = |problems: &mut Vec<String>, name: &str, value: &Option<String>| {
        let Some(raw) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) else {
            return;
        };
        match Url::parse(raw) {
            Ok(url) if url.scheme() == "https" || (url.scheme() == "http" && !production) => {
                if url.fragment().is_some() {
                    problems.push(format!("{name} must not contain a #fragment."));
                }
            }
            Ok(_) if production => problems.push(format!(
                "{name} must be an https:// URL when NODE_ENV=production."
            )),
            _ => problems.push(format!(
                "{name} must be an absolute http(s) URL such as https://app.example.com/…"
            )),
        }
    };
    check_url(&mut problems, "GOOGLE_REDIRECT_URI", &s.google_redirect_uri);
    check_url(&mut problems, "FRONTEND_URL", &s.frontend_url);
    check_url(&mut problems, "OIDC_ISSUER_URL", &s.oidc_issuer_url);
    check_url(&mut problems, "APPLE_ISSUER_URL", &s.apple_issuer_url);
    if s.oidc_issuer_url
        .as_deref()
        .and_then(|u| Url::parse(u.trim()).ok())
        .is_some_and(|u| u.query().is_some())
    {
        problems.push("OIDC_ISSUER_URL must not contain a ?query (OpenID Discovery §2).".into());
    }
    if s.google_client_id.is_empty()
        && (s.google_client_secret.is_some() || s.google_redirect_uri.is_some())
    {
        problems.push(
            "GOOGLE_CLIENT_SECRET / GOOGLE_REDIRECT_URI are set but GOOGLE_CLIENT_ID is not; \
             set GOOGLE_CLIENT_ID (comma-separated for several) to enable Google sign-in."
                .into(),
        );
    }
    if s.google_client_id
        .iter()
        .any(|id| id.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        problems.push("GOOGLE_CLIENT_ID entries must not contain spaces.".into());
    }
    if let Some(domain) = s.google_hosted_domain.as_deref().map(str::trim)
        && !domain.is_empty()
        && (domain.contains('@') || domain.contains('/') || !domain.contains('.'))
    {
        problems.push(
            "GOOGLE_HOSTED_DOMAIN must be a bare domain such as example.com (the Workspace `hd`)."
                .into(),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_production_wants_https() {
        let mut s = Settings {
            google_client_id: vec!["client-a".into()],
            frontend_url: Some("not a url".into()),
            oidc_issuer_url: Some("http://127.0.0.1:9/issuer".into()),
            ..Settings::default()
        };
        let problems = setting_problems(&s);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("FRONTEND_URL"));
        s.frontend_url = Some("https://app.example.com/#x".into());
        s.node_env = crate::config::Environment::Production;
        let problems = setting_problems(&s);
        assert!(
            problems.iter().any(|p| p.contains("#fragment")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("OIDC_ISSUER_URL must be an https"))
        );
    }

    #[test]
    fn google_is_the_default_issuer_with_both_spellings() {
        let s = Settings {
            google_client_id: vec!["client-a".into()],
            ..Settings::default()
        };
        let o = OidcSettings::from_settings(&s).unwrap().unwrap();
        assert_eq!(o.issuer, GOOGLE_ISSUER);
        assert_eq!(o.accepted_issuers, [GOOGLE_ISSUER, GOOGLE_ISSUER_BARE]);
        assert!(o.discovery_url.is_none());
        let s = Settings {
            oidc_issuer_url: Some("http://127.0.0.1:4444/".into()),
            ..s
        };
        let o = OidcSettings::from_settings(&s).unwrap().unwrap();
        assert_eq!(o.accepted_issuers, ["http://127.0.0.1:4444/"]);
        assert_eq!(
            o.discovery_url.unwrap().as_str(),
            "http://127.0.0.1:4444/.well-known/openid-configuration"
        );
        assert!(
            OidcSettings::from_settings(&Settings::default())
                .unwrap()
                .is_none()
        );
    }
}
