//! `users.json` as the old service wrote it (`{"users":[...]}`, pretty-printed): reading it,
//! unknown fields kept, and writing it back byte for byte in the same shape.

use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::users::Users;
use crate::domain::{UserRecord, UserType, format_timestamp};

/// users.json as the old service wrote it, pretty-printed: byte for byte what
/// `serde_json::to_writer_pretty` gives for `{"users": [...]}`, assembled from each user's
/// entry, which is encoded only when the user is new or changed (see `users.rs`). Runs on every
/// commit of users.json.
pub(super) fn encode_users(users: &Users) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64 + users.len() * 512);
    out.extend_from_slice(b"{\n  \"users\": [");
    let mut empty = true;
    for entry in users.entries(encode_user) {
        out.extend_from_slice(if empty { b"\n" } else { b",\n" });
        out.extend_from_slice(entry?);
        empty = false;
    }
    if !empty {
        out.extend_from_slice(b"\n  ");
    }
    out.extend_from_slice(b"]\n}");
    Ok(out)
}

/// One user's entry in users.json: the user pretty-printed, every line four spaces deeper, as it
/// sits inside `{"users": [...]}`. Only the formatting puts line breaks in JSON (strings escape
/// theirs), so indenting after each one is exact.
fn encode_user(user: &UserRecord) -> anyhow::Result<Vec<u8>> {
    const INDENT: &[u8] = b"    ";
    let flat = serde_json::to_vec_pretty(&FileUserOut::from(user)).context("serialising a user")?;
    let mut out = Vec::with_capacity(flat.len() + flat.len() / 4);
    out.extend_from_slice(INDENT);
    for &byte in &flat {
        out.push(byte);
        if byte == b'\n' {
            out.extend_from_slice(INDENT);
        }
    }
    Ok(out)
}

/// A user as the old service wrote it. Unknown fields are kept in `extra` and written back.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileUser {
    #[serde(deserialize_with = "string_or_number")]
    id: String,
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_type: Option<String>,
    /// The old service called the hash `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    google_id: Option<String>,
    #[serde(default)]
    email_verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    avatar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_login: Option<String>,
    #[serde(default)]
    two_factor_enabled: bool,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// A [`FileUser`] to write, borrowed from the record: the same fields, in the same order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileUserOut<'a> {
    id: &'a str,
    email: &'a str,
    name: &'a str,
    user_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    google_id: Option<&'a str>,
    email_verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    avatar: Option<&'a str>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_login: Option<String>,
    /// Written only when on, so an entry without a second factor keeps the old shape.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    two_factor_enabled: bool,
    // `updatedAt` and the user's settings (`settings`) stay here, where FluxStudio's own
    // users.json kept them, so an entry nobody changed is written back exactly as it was.
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct UsersFile<T> {
    users: T,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "id must be a string or number, got {other}"
        ))),
    }
}

fn parse_time(raw: Option<&str>) -> Option<DateTime<Utc>> {
    raw.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

impl From<FileUser> for UserRecord {
    fn from(u: FileUser) -> Self {
        let email_verified = u.email_verified || u.google_id.is_some();
        let created_at = parse_time(u.created_at.as_deref()).unwrap_or(DateTime::UNIX_EPOCH);
        Self {
            created_at,
            // An entry without `updatedAt` is unchanged since it was created.
            updated_at: parse_time(u.extra.get(UPDATED_AT).and_then(|v| v.as_str()))
                .unwrap_or(created_at),
            last_login: parse_time(u.last_login.as_deref()),
            two_factor_enabled: u.two_factor_enabled,
            user_type: u
                .user_type
                .as_deref()
                .and_then(UserType::parse)
                .unwrap_or(UserType::Client),
            email: u.email.trim().to_lowercase(),
            id: u.id,
            name: u.name,
            password_hash: u.password.filter(|h| !h.is_empty()),
            google_id: u.google_id,
            email_verified,
            avatar: u.avatar,
            extra: u.extra,
        }
    }
}

impl<'a> From<&'a UserRecord> for FileUserOut<'a> {
    fn from(u: &'a UserRecord) -> Self {
        Self {
            id: &u.id,
            email: &u.email,
            name: &u.name,
            user_type: u.user_type.as_str(),
            password: u.password_hash.as_deref(),
            google_id: u.google_id.as_deref(),
            email_verified: u.email_verified,
            avatar: u.avatar.as_deref(),
            created_at: format_timestamp(u.created_at),
            last_login: u.last_login.map(format_timestamp),
            two_factor_enabled: u.two_factor_enabled,
            extra: &u.extra,
        }
    }
}

/// The key of an entry's last change, among its other fields (`extra`).
const UPDATED_AT: &str = "updatedAt";

/// Sets the user's `updated_at`, and the entry's `updatedAt` that keeps it in users.json: every
/// change the file store makes to an account itself goes through here.
pub(super) fn touch(user: &mut UserRecord, at: DateTime<Utc>) {
    user.updated_at = at;
    user.extra.insert(
        UPDATED_AT.to_owned(),
        serde_json::Value::String(format_timestamp(at)),
    );
}

/// Reads the old service's `users.json`; used at start and by `import-users`.
pub fn read_users_file(path: &Path) -> anyhow::Result<Vec<UserRecord>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    let file: UsersFile<Vec<FileUser>> = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a users.json of the form {{\"users\":[...]}}",
            path.display()
        )
    })?;
    Ok(file.users.into_iter().map(UserRecord::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str) -> UserRecord {
        UserRecord {
            id: id.into(),
            email: format!("user{id}@example.com"),
            name: name.into(),
            user_type: UserType::Client,
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            google_id: None,
            email_verified: false,
            avatar: None,
            created_at: Utc::now(),
            last_login: None,
            updated_at: Utc::now(),
            two_factor_enabled: false,
            extra: serde_json::Map::new(),
        }
    }

    /// users.json as it was written before entries were kept: the whole file through
    /// serde_json's pretty printer.
    fn pretty(users: &Users) -> Vec<u8> {
        let all: Vec<FileUserOut> = users.iter().map(FileUserOut::from).collect();
        serde_json::to_vec_pretty(&UsersFile { users: all }).unwrap()
    }

    #[test]
    fn users_json_is_the_pretty_printers_byte_for_byte_and_follows_every_change() {
        let empty = Users::default();
        assert_eq!(encode_users(&empty).unwrap(), pretty(&empty));

        let mut odd = user("2", "Zoë \"quoted\"\nwith a line break");
        odd.extra = serde_json::json!({
            "preferences": { "theme": "dark", "tags": ["a", "b"], "none": {}, "nothing": [] },
            "note": "tab\there",
        })
        .as_object()
        .unwrap()
        .clone();
        let mut users = Users::new(vec![user("1", "Ann"), odd, user("3", "Bo")]);
        assert_eq!(encode_users(&users).unwrap(), pretty(&users));

        // A state published before a change keeps its own entries; the changed user and a new
        // one are encoded again.
        let published = users.clone();
        users.by_id_mut("2").unwrap().name = "Changed".into();
        users.by_email_mut("user3@example.com").unwrap().last_login = Some(Utc::now());
        users.push(user("4", "New"));
        let written = encode_users(&users).unwrap();
        assert_eq!(written, pretty(&users));
        assert!(String::from_utf8(written).unwrap().contains("\"Changed\""));
        assert_eq!(encode_users(&published).unwrap(), pretty(&published));

        // Changed in place (no other state shares the record): its kept entry must go too.
        drop(published);
        users.by_id_mut("1").unwrap().name = "Renamed in place".into();
        users.find_mut(|u| u.id == "4").unwrap().avatar = Some("https://a.example/4.png".into());
        let written = encode_users(&users).unwrap();
        assert_eq!(written, pretty(&users));
        let text = String::from_utf8(written).unwrap();
        assert!(
            text.contains("Renamed in place") && text.contains("4.png"),
            "{text}"
        );
    }
}
