//! The users of `users.json` in memory: the file's order, plus indexes by id and by the email's
//! canonical key ([`Email::key`]), computed here rather than stored, so the file keeps the old
//! service's shape.
//!
//! Records are shared (`Arc`), so the copy a group commit takes of the whole state costs a
//! reference count per user rather than a deep copy of every string, and a change copies only
//! the record it changes. Lookups by id (every `/me`) and email (every login) are hash lookups
//! instead of a scan of every user.
//!
//! Each record also keeps its entry as written in users.json, once a write has needed it, until
//! the record changes: a write encodes only the users changed since the one before and copies the
//! others' bytes, instead of encoding every user on every signup and login (the file is rewritten
//! whole, so that was the whole user base's JSON per commit, 5–8% of a signup's CPU at 2,000
//! users). The price is each user's entry in memory, a few hundred bytes.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::domain::{Email, UserRecord};
use crate::store::{EmailCollision, KeyHolder};

/// A user and, once encoded, the user's entry in users.json.
struct Stored {
    record: UserRecord,
    entry: OnceLock<Box<[u8]>>,
}

impl Clone for Stored {
    /// A copy is only made to be changed (`Arc::make_mut`), so it starts without the entry.
    fn clone(&self) -> Self {
        Self {
            record: self.record.clone(),
            entry: OnceLock::new(),
        }
    }
}

/// The user at `slot`, to change: copied first if another state shares it, and its entry
/// dropped, since it is about to be stale.
fn change(slot: &mut Arc<Stored>) -> &mut UserRecord {
    let stored = Arc::make_mut(slot);
    stored.entry.take();
    &mut stored.record
}

#[derive(Clone, Default)]
pub(super) struct Users {
    list: Vec<Arc<Stored>>,
    /// Positions in `list`. The first entry wins, as the old linear search did, should an old
    /// file hold a duplicate. A user's id and email never change once stored.
    by_id: HashMap<Arc<str>, usize>,
    /// By the canonical key of the email.
    by_email: HashMap<Arc<str>, usize>,
    /// Positions of users found by id, never by email: those whose email's key an earlier user
    /// has, and those whose email has no key ([`Email::key_of`]), in file order.
    shadowed: Vec<usize>,
}

impl Users {
    pub fn new(list: Vec<UserRecord>) -> Self {
        let mut users = Self::default();
        for user in list {
            users.push(user);
        }
        users
    }

    /// In file order.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &UserRecord> {
        self.list.iter().map(|u| &u.record)
    }

    /// Each user's entry in users.json, in file order: encoded with `encode` the first time it is
    /// needed after a change, then kept, shared by every copy of the state that holds the record.
    pub fn entries<'a, E>(
        &'a self,
        encode: impl Fn(&UserRecord) -> Result<Vec<u8>, E> + 'a,
    ) -> impl Iterator<Item = Result<&'a [u8], E>> + 'a {
        self.list.iter().map(move |u| {
            if let Some(entry) = u.entry.get() {
                return Ok(&**entry);
            }
            let encoded = encode(&u.record)?.into_boxed_slice();
            Ok(&**u.entry.get_or_init(|| encoded))
        })
    }

    pub fn by_id(&self, id: &str) -> Option<&UserRecord> {
        self.by_id.get(id).map(|&i| &self.list[i].record)
    }

    /// The user whose email has the canonical `key`.
    pub fn by_email(&self, key: &str) -> Option<&UserRecord> {
        self.by_email.get(key).map(|&i| &self.list[i].record)
    }

    /// The user that answers for the mailbox of `email` (an address as stored), if any.
    pub fn holder_of(&self, email: &str) -> Option<&UserRecord> {
        self.by_email(&Email::key_of(email)?)
    }

    /// Users that cannot be found by email (an old file can hold them): those whose email shares
    /// its key with an earlier user's, each with the user that holds the key, and those whose
    /// email has no key.
    pub fn collisions(&self) -> Vec<EmailCollision> {
        self.shadowed
            .iter()
            .map(|&i| {
                let user = &self.list[i].record;
                EmailCollision {
                    user_id: user.id.clone(),
                    email: user.email.clone(),
                    holder: self.holder_of(&user.email).map(|holder| KeyHolder {
                        id: holder.id.clone(),
                        email: holder.email.clone(),
                    }),
                }
            })
            .collect()
    }

    pub fn push(&mut self, user: UserRecord) {
        let at = self.list.len();
        self.by_id.entry(Arc::from(user.id.as_str())).or_insert(at);
        match Email::key_of(&user.email) {
            Some(key) => match self.by_email.entry(Arc::from(key.as_str())) {
                std::collections::hash_map::Entry::Occupied(_) => self.shadowed.push(at),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(at);
                }
            },
            None => self.shadowed.push(at),
        }
        self.list.push(Arc::new(Stored {
            record: user,
            entry: OnceLock::new(),
        }));
    }

    /// The user to change (copied first if a published state still shares it). The change must
    /// leave `id` and `email` as they are.
    pub fn by_id_mut(&mut self, id: &str) -> Option<&mut UserRecord> {
        let i = *self.by_id.get(id)?;
        Some(change(&mut self.list[i]))
    }

    /// Like [`Users::by_id_mut`], by the email's canonical key.
    pub fn by_email_mut(&mut self, key: &str) -> Option<&mut UserRecord> {
        let i = *self.by_email.get(key)?;
        Some(change(&mut self.list[i]))
    }

    /// The first user matching `pred`, to change (a scan: for the rare lookups with no index).
    pub fn find_mut(&mut self, pred: impl Fn(&UserRecord) -> bool) -> Option<&mut UserRecord> {
        let i = self.list.iter().position(|u| pred(&u.record))?;
        Some(change(&mut self.list[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserType;

    fn user(id: &str, email: &str) -> UserRecord {
        UserRecord {
            id: id.into(),
            email: email.into(),
            name: "Someone".into(),
            user_type: UserType::Client,
            password_hash: None,
            google_id: None,
            email_verified: false,
            avatar: None,
            created_at: chrono::Utc::now(),
            last_login: None,
            updated_at: chrono::Utc::now(),
            two_factor_enabled: false,
            extra: serde_json::Map::new(),
        }
    }

    #[test]
    fn lookups_find_the_first_of_duplicates_and_changes_leave_shared_copies_alone() {
        let mut users = Users::new(vec![
            user("1", "a@example.com"),
            user("2", "b@example.com"),
            // An old file's duplicate email: the first one keeps answering, as before.
            user("3", "a@example.com"),
        ]);
        assert_eq!(users.iter().count(), 3);
        assert_eq!(users.by_email("a@example.com").unwrap().id, "1");
        assert_eq!(users.by_id("3").unwrap().email, "a@example.com");
        assert!(users.by_id("4").is_none());

        let published = users.clone();
        users.by_id_mut("2").unwrap().name = "Changed".into();
        assert_eq!(users.by_id("2").unwrap().name, "Changed");
        assert_eq!(published.by_id("2").unwrap().name, "Someone");

        users.push(user("4", "d@example.com"));
        let order: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(order, ["1", "2", "3", "4"]);
        assert_eq!(published.iter().count(), 3);
    }

    #[test]
    fn spellings_of_one_mailbox_are_one_key_and_later_ones_are_reported() {
        let users = Users::new(vec![
            user("1", "josé@x.com"),
            user("2", "jose\u{301}@x.com"),
            user("3", "\"alice\"@x.com"),
            user("4", "alice@x.com"),
            user("5", "bob@x.com"),
            // Valid under the old rules; its key would be 258 characters.
            user("6", &format!("{}@x.com", "\u{FDFA}".repeat(14))),
        ]);
        assert_eq!(users.holder_of("JOSÉ@ｘ.com").unwrap().id, "1");
        assert_eq!(users.by_email("alice@x.com").unwrap().id, "3");
        let found: Vec<(String, Option<String>)> = users
            .collisions()
            .into_iter()
            .map(|c| (c.user_id, c.holder.map(|h| h.id)))
            .collect();
        assert_eq!(
            found,
            [
                ("2".into(), Some("1".into())),
                ("4".into(), Some("3".into())),
                ("6".into(), None)
            ]
        );
        assert!(users.by_id("6").is_some());
        assert_eq!(users.by_id("2").unwrap().email, "jose\u{301}@x.com");
    }
}
