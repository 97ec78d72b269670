//! The messages: subject, plain text and HTML. Every value that comes from a user (the name)
//! goes through [`escape`] before it enters the HTML, here and nowhere else; links are built from
//! `FRONTEND_URL` with the token and the address URL-encoded.

use url::Url;

/// What a message says, before it is addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// "Verify your FluxStudio email", with the verification link.
    VerifyEmail { link: String },
    /// "Reset your FluxStudio password", with the reset link.
    ResetPassword { link: String },
    /// The password was changed (by reset or by the user).
    PasswordChanged,
    /// A reset was asked for an account that signs in with Google only.
    SignInWithGoogle,
    /// Two-factor sign-in was turned on (`true`) or off.
    TwoFactor { enabled: bool },
    /// A sign-in from a device the account had not signed in from: what it was, from where, when.
    NewDevice {
        device: String,
        ip: String,
        at: String,
    },
    /// `flux-auth mail test`.
    Test,
}

impl Template {
    /// The name the outbox and the events know it by.
    pub fn name(&self) -> &'static str {
        match self {
            Self::VerifyEmail { .. } => "verify_email",
            Self::ResetPassword { .. } => "reset_password",
            Self::PasswordChanged => "password_changed",
            Self::SignInWithGoogle => "sign_in_with_google",
            Self::TwoFactor { enabled: true } => "two_factor_enabled",
            Self::TwoFactor { enabled: false } => "two_factor_disabled",
            Self::NewDevice { .. } => "new_device_login",
            Self::Test => "test",
        }
    }

    pub fn subject(&self) -> &'static str {
        match self {
            Self::VerifyEmail { .. } => "Verify your FluxStudio email",
            Self::ResetPassword { .. } => "Reset your FluxStudio password",
            Self::PasswordChanged => "Your FluxStudio password was changed",
            Self::SignInWithGoogle => "Sign in with Google",
            Self::TwoFactor { enabled: true } => "Two-factor sign-in was turned on",
            Self::TwoFactor { enabled: false } => "Two-factor sign-in was turned off",
            Self::NewDevice { .. } => "New sign-in to your FluxStudio account",
            Self::Test => "FluxStudio mail test",
        }
    }

    /// The link the message asks the reader to follow, if any.
    pub fn link(&self) -> Option<&str> {
        match self {
            Self::VerifyEmail { link } | Self::ResetPassword { link } => Some(link),
            _ => None,
        }
    }

    /// The paragraph, the button's label when there is a link, and the closing line.
    fn wording(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::VerifyEmail { .. } => (
                "Please confirm that this is your email address.",
                "Verify email",
                "The link is valid for 24 hours. If you did not create a FluxStudio account, \
                 ignore this message.",
            ),
            Self::ResetPassword { .. } => (
                "Someone (we hope you) asked to reset your FluxStudio password.",
                "Reset password",
                "The link is valid for 1 hour and works once. If you did not ask for it, ignore \
                 this message: your password stays as it is.",
            ),
            Self::PasswordChanged => (
                "The password of your FluxStudio account was just changed.",
                "",
                "If this was not you, reset your password at once and contact support.",
            ),
            Self::SignInWithGoogle => (
                "You asked to reset your FluxStudio password, but your account has no \
                 password: you sign in with Google.",
                "",
                "Use \"Sign in with Google\" on the sign-in page.",
            ),
            Self::TwoFactor { enabled: true } => (
                "Two-factor sign-in was turned on for your FluxStudio account.",
                "",
                "If this was not you, reset your password at once and contact support.",
            ),
            Self::TwoFactor { enabled: false } => (
                "Two-factor sign-in was turned off for your FluxStudio account.",
                "",
                "If this was not you, reset your password at once and contact support.",
            ),
            Self::NewDevice { .. } => (
                "Your FluxStudio account was just signed in to from a device it had not been \
                 signed in from before:",
                "",
                "If this was you, no action is needed. If it was not, reset your password at once \
                 and sign out of the other sessions in Settings.",
            ),
            Self::Test => (
                "This is a test message from flux-auth: mail is configured.",
                "",
                "No action is needed.",
            ),
        }
    }

    /// The lines that follow the paragraph, when the message names facts (a new device's).
    fn details(&self) -> Vec<String> {
        match self {
            Self::NewDevice { device, ip, at } => vec![
                format!("Device: {device}"),
                format!("Address: {ip}"),
                format!("Time: {at}"),
            ],
            _ => Vec::new(),
        }
    }

    /// The plain-text part.
    pub fn text(&self, name: &str) -> String {
        let (paragraph, _, closing) = self.wording();
        let details = self.details();
        let paragraph = if details.is_empty() {
            paragraph.to_owned()
        } else {
            format!("{paragraph}\n\n{}", details.join("\n"))
        };
        let greeting = greeting(name);
        match self.link() {
            Some(link) => {
                format!("{greeting}\n\n{paragraph}\n\n{link}\n\n{closing}\n\nFluxStudio\n")
            }
            None => format!("{greeting}\n\n{paragraph}\n\n{closing}\n\nFluxStudio\n"),
        }
    }

    /// The HTML part: one button and the same link as text.
    pub fn html(&self, name: &str) -> String {
        let (paragraph, button, closing) = self.wording();
        let greeting = escape(&greeting(name));
        let action = match self.link() {
            Some(link) => {
                let link = escape(link);
                format!(
                    "<p><a href=\"{link}\" style=\"display:inline-block;padding:12px 20px;\
                     background:#4f46e5;color:#fff;border-radius:6px;text-decoration:none\">\
                     {button}</a></p>\n<p>Or open this link: <a href=\"{link}\">{link}</a></p>\n"
                )
            }
            None => String::new(),
        };
        let details: String = self
            .details()
            .iter()
            .map(|line| format!("{}<br>\n", escape(line)))
            .collect();
        let details = if details.is_empty() {
            details
        } else {
            format!("<p>{details}</p>\n")
        };
        format!(
            "<!doctype html>\n<html><body style=\"font-family:sans-serif;line-height:1.5\">\n\
             <p>{greeting}</p>\n<p>{}</p>\n{details}{action}<p>{}</p>\n<p>FluxStudio</p>\n\
             </body></html>\n",
            escape(paragraph),
            escape(closing)
        )
    }
}

fn greeting(name: &str) -> String {
    let name = name.trim();
    if name.is_empty() {
        "Hello,".to_owned()
    } else {
        format!("Hello {name},")
    }
}

/// HTML-escapes text for an element or a double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `base` + `path` with `token` and `email` as query parameters, URL-encoded.
pub fn link(base: &Url, path: &str, token: &str, email: &str) -> String {
    let mut url = base.clone();
    let prefix = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{prefix}{path}"));
    url.query_pairs_mut()
        .clear()
        .append_pair("token", token)
        .append_pair("email", email);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_device_notice_names_the_device_as_text() {
        let notice = Template::NewDevice {
            device: "<img src=x onerror=alert(1)>".into(),
            ip: "203.0.113.9".into(),
            at: "2026-01-31 12:00 UTC".into(),
        };
        let html = notice.html("Ann");
        assert!(html.contains("Device: &lt;img src=x onerror=alert(1)&gt;<br>"));
        assert!(!html.contains("<img"));
        let text = notice.text("Ann");
        assert!(text.contains("Address: 203.0.113.9\nTime: 2026-01-31 12:00 UTC"));
    }

    #[test]
    fn a_name_with_markup_arrives_as_text() {
        let html = Template::PasswordChanged.html("<a href=\"https://evil\">x</a>");
        assert!(!html.contains("<a href=\"https://evil\""), "{html}");
        assert!(
            html.contains("&lt;a href=&quot;https://evil&quot;&gt;"),
            "{html}"
        );
    }

    #[test]
    fn links_carry_the_token_and_the_encoded_address() {
        let base = Url::parse("https://fluxstudio.art").unwrap();
        let l = link(&base, "/verify-email", "abc", "a+b@example.com");
        assert_eq!(
            l,
            "https://fluxstudio.art/verify-email?token=abc&email=a%2Bb%40example.com"
        );
        let html = Template::VerifyEmail { link: l.clone() }.html("Ann");
        assert!(html.contains("token=abc&amp;email="), "{html}");
        assert!(
            Template::VerifyEmail { link: l.clone() }
                .text("Ann")
                .contains(&l)
        );
    }
}
