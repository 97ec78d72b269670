//! Reading settings: compiled-in defaults, then `config/default.toml` (or `CONFIG_FILE`), then
//! env (and `.env`), each value read by the kind its declaration gives it.

use std::collections::HashMap;
use std::path::PathBuf;

use super::declare::Kind;
use super::{ConfigError, KEYS, Settings};

impl Settings {
    /// Loads from the process environment (after `.env`, when present) and the config file.
    pub fn load() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is reported by the values it fails to set.
        let _ = dotenvy::dotenv();
        Self::from_env(std::env::vars().collect())
    }

    /// Builds settings from an explicit environment map, so tests never touch the process env.
    pub fn from_env(env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        let set = |name: &str| env.get(name).filter(|v| !v.is_empty());
        let file = set("CONFIG_FILE").map(PathBuf::from).or_else(|| {
            let default = PathBuf::from("config/default.toml");
            default.exists().then_some(default)
        });
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            table = text.parse::<toml::Table>().map_err(|e| ConfigError::Toml {
                path: path.clone(),
                message: e.to_string(),
            })?;
        }
        for (key, kind) in KEYS {
            let name = key.to_uppercase();
            // An empty value is "not set" (an empty list for lists), so `JWT_SECRET=` in a .env
            // does not hide JWT_SECRET_FILE.
            let direct = env
                .get(&name)
                .filter(|v| !v.is_empty() || matches!(kind, Kind::List));
            let value = match direct {
                Some(v) => Some(v.clone()),
                None if matches!(kind, Kind::Secret) => match set(&format!("{name}_FILE")) {
                    Some(path) => Some(
                        std::fs::read_to_string(path)
                            .map_err(|source| ConfigError::Read {
                                path: path.into(),
                                source,
                            })?
                            .trim()
                            .to_owned(),
                    ),
                    None => None,
                },
                None => None,
            };
            let Some(value) = value else { continue };
            if value.is_empty() && !matches!(kind, Kind::List) {
                continue; // `JWT_SECRET=` in a .env means "not set", as it did for the old service
            }
            table.insert((*key).to_owned(), env_value(&name, &value, *kind)?);
        }
        // The plural spelling some deployments use for the same list.
        if !table.contains_key("google_client_id")
            && let Some(ids) = set("GOOGLE_CLIENT_IDS")
        {
            table.insert(
                "google_client_id".into(),
                env_value("GOOGLE_CLIENT_IDS", ids, Kind::List)?,
            );
        }
        if !table.contains_key("redis_url")
            && let Some(host) = env.get("REDIS_HOST").filter(|h| !h.is_empty())
        {
            {
                let port = set("REDIS_PORT").map(String::as_str).unwrap_or("6379");
                let auth = match env.get("REDIS_PASSWORD").filter(|p| !p.is_empty()) {
                    Some(password) => format!(":{password}@"),
                    None => String::new(),
                };
                table.insert(
                    "redis_url".into(),
                    format!("redis://{auth}{host}:{port}").into(),
                );
            }
        }
        let settings: Settings = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        Ok(settings)
    }
}

fn env_value(name: &str, value: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    let bad = |expected| ConfigError::BadValue {
        name: name.into(),
        value: value.into(),
        expected,
    };
    Ok(match kind {
        Kind::Text | Kind::Secret => toml::Value::String(value.to_owned()),
        Kind::Number => {
            toml::Value::Integer(value.trim().parse().map_err(|_| bad("a whole number"))?)
        }
        Kind::Decimal => toml::Value::Float(
            value
                .trim()
                .parse()
                .map_err(|_| bad("a number such as 0.25"))?,
        ),
        Kind::Flag => toml::Value::Boolean(match value.trim().to_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err(bad("true or false")),
        }),
        Kind::List => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
    })
}
