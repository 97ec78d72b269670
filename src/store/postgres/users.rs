//! Users: reading one by id through the store's cache.

use super::PgStore;
use super::rows::UserRow;
use crate::domain::UserRecord;
use crate::store::StoreResult;

impl PgStore {
    /// [`Store::user_by_id`] from the database, kept in the cache if nothing changed meanwhile.
    pub(super) async fn read_user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        let ticket = self.users.as_ref().and_then(|users| users.ticket());
        let row: Option<UserRow> = read_retrying!(self, |conn| sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *conn))?;
        let user = row.map(UserRecord::from);
        if let (Some(users), Some(ticket), Some(user)) = (&self.users, ticket, &user) {
            users.keep(ticket, user);
        }
        Ok(user)
    }
}
