//! A user's settings as FluxStudio's settings page keeps them: three categories, each a JSON
//! object whose inner keys are the page's own (it stores `notifications.frequency` and
//! `notifications.quietHours` beside the defaults). What is stored is bounded in size and depth;
//! what is shown is the defaults merged per category with what is stored.

use serde_json::{Map, Value, json};

/// The categories kept; any other top-level key sent is dropped.
pub const CATEGORIES: [&str; 3] = ["notifications", "appearance", "performance"];

/// The stored settings at most, as compact JSON.
pub const MAX_STORED_BYTES: usize = 4096;

/// Levels of objects and arrays in one category at most, the category itself included: the web
/// app's `notifications` with `quietHours: {startTime, ...}` is 2. Deeper values are refused
/// rather than cut, so nothing is stored half-way.
pub const MAX_DEPTH: usize = 4;

/// Why a `PUT` of settings is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsError {
    /// 400 `AUTH_INVALID_SETTINGS`, with what is wrong.
    Invalid(String),
    /// 413: the settings as they would be stored exceed [`MAX_STORED_BYTES`].
    TooLarge,
}

/// What a user who never saved anything sees.
pub fn defaults() -> Value {
    json!({
        "notifications": { "push": true, "emailDigest": true },
        "appearance": { "darkMode": false, "language": "en" },
        "performance": { "autoSave": true },
    })
}

/// The settings to show: each category's defaults, overlaid by that category's stored keys.
pub fn merged(stored: Option<&Value>) -> Value {
    let mut shown = defaults();
    if let (Some(Value::Object(stored)), Value::Object(shown)) = (stored, &mut shown) {
        for category in CATEGORIES {
            if let (Some(Value::Object(kept)), Some(Value::Object(into))) =
                (stored.get(category), shown.get_mut(category))
            {
                for (key, value) in kept {
                    into.insert(key.clone(), value.clone());
                }
            }
        }
    }
    shown
}

/// The settings to store after a `PUT` of `sent` (the body's `settings`) over `stored`: each
/// known category sent replaces the stored one whole, the others are kept, unknown top-level keys
/// are dropped. Refused when `sent` is missing or not an object, a category is not an object or is
/// nested deeper than [`MAX_DEPTH`], or the result exceeds [`MAX_STORED_BYTES`].
pub fn apply(stored: Option<&Value>, sent: Option<&Value>) -> Result<Value, SettingsError> {
    let sent = match sent {
        Some(Value::Object(sent)) => sent,
        Some(_) => return Err(invalid("settings must be an object")),
        None => return Err(invalid("settings is required")),
    };
    let mut next = Map::new();
    if let Some(Value::Object(stored)) = stored {
        for category in CATEGORIES {
            if let Some(value @ Value::Object(_)) = stored.get(category) {
                next.insert(category.to_owned(), value.clone());
            }
        }
    }
    for category in CATEGORIES {
        match sent.get(category) {
            None => {}
            Some(value @ Value::Object(_)) => {
                if depth(value) > MAX_DEPTH {
                    return Err(invalid(format!(
                        "settings.{category} nests objects or arrays more than {MAX_DEPTH} levels deep"
                    )));
                }
                next.insert(category.to_owned(), value.clone());
            }
            Some(_) => return Err(invalid(format!("settings.{category} must be an object"))),
        }
    }
    let next = Value::Object(next);
    // Serialising a `Value` cannot fail; an error would only overstate the size.
    let size = serde_json::to_vec(&next).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_STORED_BYTES {
        return Err(SettingsError::TooLarge);
    }
    Ok(next)
}

/// Settings made from another service's stored preferences (FluxStudio's `users.preferences`,
/// which has the same three categories): what a `PUT` of them would store, except that a category
/// that is not an object or nests too deep is dropped (and named in the answer) instead of
/// refusing the rest. `Ok((None, _))` when no category is kept; [`SettingsError::TooLarge`] when
/// the kept ones exceed [`MAX_STORED_BYTES`].
pub fn from_preferences(
    preferences: &Value,
) -> Result<(Option<Value>, Vec<&'static str>), SettingsError> {
    let Value::Object(preferences) = preferences else {
        return Ok((None, Vec::new()));
    };
    let mut kept = Map::new();
    let mut dropped = Vec::new();
    for category in CATEGORIES {
        match preferences.get(category) {
            None => {}
            Some(value @ Value::Object(_)) if depth(value) <= MAX_DEPTH => {
                kept.insert(category.to_owned(), value.clone());
            }
            Some(_) => dropped.push(category),
        }
    }
    if kept.is_empty() {
        return Ok((None, dropped));
    }
    let settings = apply(None, Some(&Value::Object(kept)))?;
    Ok((Some(settings), dropped))
}

fn invalid(message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid(message.into())
}

/// Levels of objects and arrays in `value`: a scalar is 0, `{}` is 1, `{"a":{}}` is 2. Iterative,
/// so no input can exhaust the stack (the body parser bounds nesting as well).
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, above)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Object(map) => Box::new(map.values()),
            Value::Array(items) => Box::new(items.iter()),
            _ => continue,
        };
        let level = above + 1;
        deepest = deepest.max(level);
        pending.extend(children.map(|child| (child, level)));
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_merged_per_category() {
        let stored = json!({ "notifications": { "push": false, "frequency": "daily" } });
        let shown = merged(Some(&stored));
        assert_eq!(shown["notifications"]["push"], false);
        assert_eq!(shown["notifications"]["emailDigest"], true);
        assert_eq!(shown["notifications"]["frequency"], "daily");
        assert_eq!(shown["appearance"], defaults()["appearance"]);
        assert_eq!(merged(None), defaults());
    }

    #[test]
    fn a_category_sent_replaces_the_stored_one_and_unknown_keys_are_dropped() {
        let stored = json!({ "appearance": { "darkMode": true }, "performance": { "x": 1 } });
        let sent = json!({ "performance": { "autoSave": false }, "admin": true });
        let next = apply(Some(&stored), Some(&sent)).unwrap();
        assert_eq!(
            next,
            json!({ "appearance": { "darkMode": true }, "performance": { "autoSave": false } })
        );
    }

    #[test]
    fn bad_shapes_depths_and_sizes_are_refused() {
        assert!(matches!(apply(None, None), Err(SettingsError::Invalid(_))));
        assert!(matches!(
            apply(None, Some(&json!([1]))),
            Err(SettingsError::Invalid(_))
        ));
        assert!(matches!(
            apply(None, Some(&json!({ "appearance": "dark" }))),
            Err(SettingsError::Invalid(_))
        ));
        let ok = json!({ "notifications": { "quietHours": { "a": { "b": { "c": 1 } } } } });
        assert!(apply(None, Some(&ok)).is_ok());
        let deep = json!({ "notifications": { "quietHours": { "a": { "b": { "c": [1] } } } } });
        assert!(matches!(
            apply(None, Some(&deep)),
            Err(SettingsError::Invalid(_))
        ));
        let big = json!({ "appearance": { "note": "x".repeat(MAX_STORED_BYTES) } });
        assert_eq!(apply(None, Some(&big)), Err(SettingsError::TooLarge));
    }

    #[test]
    fn preferences_keep_the_good_categories_and_name_the_dropped_ones() {
        let prefs = json!({
            "appearance": { "theme": "dark" },
            "notifications": "all",
            "performance": { "a": { "b": { "c": { "d": [1] } } } },
            "stripe": { "plan": "pro" },
        });
        let (settings, dropped) = from_preferences(&prefs).unwrap();
        assert_eq!(settings, Some(json!({ "appearance": { "theme": "dark" } })));
        assert_eq!(dropped, ["notifications", "performance"]);
        assert_eq!(from_preferences(&json!({})).unwrap(), (None, vec![]));
        assert_eq!(from_preferences(&json!([1])).unwrap(), (None, vec![]));
        let big = json!({ "appearance": { "note": "x".repeat(MAX_STORED_BYTES) } });
        assert_eq!(from_preferences(&big), Err(SettingsError::TooLarge));
    }
}
