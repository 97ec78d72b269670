//! The outbox and the one-time tokens on the file store: records of the sessions' journal, so a
//! message and its token are one journal line (one commit), durable before the request is
//! answered. One process writes the folder, so a claim's lease lives in that process's memory
//! only: after a crash the restarted sender takes the message again at once.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::FileStore;
use crate::store::outbox::{
    Attempt, OneTimeToken, OutboxMessage, OutboxState, OutboxStore, OutboxSummary, TokenEffect,
    TokenUse,
};
use crate::store::{StoreError, StoreResult};

#[async_trait]
impl OutboxStore for FileStore {
    async fn enqueue(
        &self,
        messages: &[OutboxMessage],
        token: Option<&OneTimeToken>,
    ) -> StoreResult<()> {
        self.update_sessions(|tx| {
            if let Some(token) = token {
                tx.put_one_time(token.clone());
            }
            for m in messages {
                if tx.state().outgoing(&m.id).is_none() {
                    tx.put_outgoing(m.clone());
                }
            }
            Ok(())
        })
        .await
    }

    async fn claim_due(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: usize,
    ) -> StoreResult<Vec<OutboxMessage>> {
        let mut leases = self
            .outbox_leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        leases.retain(|_, until| *until > now);
        let state = self.sessions.read();
        let Some(index) = state.outbox_of(kind) else {
            return Ok(Vec::new());
        };
        // Due order, and only the due ones: the index stops at the first message not due yet.
        let mut due = Vec::new();
        for (_, id) in index.due.iter().take_while(|(at, _)| *at <= now) {
            if due.len() == limit {
                break;
            }
            if leases.contains_key(id) {
                continue;
            }
            if let Some(m) = state.outgoing(id).filter(|m| m.is_due(now)) {
                let mut m = m.as_ref().clone();
                m.leased_until = Some(now + lease);
                leases.insert(m.id, now + lease);
                due.push(m);
            }
        }
        Ok(due)
    }

    async fn record_attempts(
        &self,
        attempts: &[(Uuid, Attempt)],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        // One journal line for the batch: one write and one sync, however many were delivered.
        let recorded = self
            .update_sessions(|tx| {
                for (id, attempt) in attempts {
                    let Some(current) = tx.state().outgoing(id) else {
                        continue;
                    };
                    if current.state != OutboxState::Pending {
                        continue;
                    }
                    let mut m = current.as_ref().clone();
                    m.attempts += 1;
                    m.leased_until = None;
                    match attempt {
                        Attempt::Sent => {
                            m.state = OutboxState::Sent;
                            m.body = None;
                            m.sent_at = Some(now);
                            m.last_error = None;
                        }
                        Attempt::Retry { error, retry_at } => {
                            m.next_attempt_at = *retry_at;
                            m.last_error = Some(error.clone());
                        }
                        Attempt::Dead { error } => {
                            m.state = OutboxState::Dead;
                            m.last_error = Some(error.clone());
                        }
                    }
                    tx.put_outgoing(m);
                }
                Ok(())
            })
            .await;
        let mut leases = self
            .outbox_leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, _) in attempts {
            leases.remove(id);
        }
        recorded
    }

    async fn outbox_summary(&self, kind: &str) -> StoreResult<OutboxSummary> {
        let state = self.sessions.read();
        Ok(state
            .outbox_of(kind)
            .map(|index| OutboxSummary {
                pending: index.due.len() as u64,
                dead: index.dead,
                oldest_pending_at: index.created.first().map(|(at, _)| *at),
            })
            .unwrap_or_default())
    }

    async fn outbox_messages(&self, limit: usize) -> StoreResult<Vec<OutboxMessage>> {
        let state = self.sessions.read();
        Ok(state
            .outbox()
            .iter()
            .filter(|m| m.state != OutboxState::Sent)
            .take(limit)
            .map(|m| OutboxMessage {
                body: None,
                ..m.as_ref().clone()
            })
            .collect())
    }

    async fn delete_finished_mail(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        self.update_sessions(|tx| {
            let sent: Vec<Uuid> = tx
                .state()
                .outbox()
                .iter()
                .filter(|m| m.state == OutboxState::Sent && m.sent_at.is_some_and(|t| t < before))
                .map(|m| m.id)
                .collect();
            let expired: Vec<String> = tx
                .state()
                .one_time_tokens()
                .filter(|t| t.expires_at <= now)
                .map(|t| t.token_hash.clone())
                .collect();
            let count = (sent.len() + expired.len()) as u64;
            for id in sent {
                tx.drop_outgoing(id);
            }
            for hash in expired {
                tx.drop_one_time(&hash);
            }
            Ok(count)
        })
        .await
    }

    async fn one_time_token(&self, token_hash: &str) -> StoreResult<Option<OneTimeToken>> {
        Ok(self
            .sessions
            .read()
            .one_time_token(token_hash)
            .map(|t| t.as_ref().clone()))
    }

    async fn use_one_time_token(
        &self,
        token_hash: &str,
        effect: &TokenEffect,
        now: DateTime<Utc>,
    ) -> StoreResult<TokenUse> {
        // Consumed first, in its own commit: of concurrent uses only one finds the token. A crash
        // before the user's change is written leaves the token used and nothing applied; the
        // owner asks for a new link.
        let found = self
            .update_sessions(|tx| {
                let token = tx
                    .state()
                    .one_time_token(token_hash)
                    .filter(|t| t.purpose == effect.purpose())
                    .map(|t| t.as_ref().clone());
                if token.is_some() {
                    tx.drop_one_time(token_hash);
                }
                Ok(token)
            })
            .await?;
        let token = match found {
            None => return Ok(TokenUse::Unknown),
            Some(t) if t.expires_at <= now => return Ok(TokenUse::Expired),
            Some(t) => t,
        };
        let applied = self
            .update_users(|users| {
                let user = users
                    .by_id_mut(&token.user_id)
                    .ok_or(StoreError::NotFound)?;
                user.email_verified = true;
                if let TokenEffect::ResetPassword { password_hash } = effect {
                    user.password_hash = Some(password_hash.clone());
                }
                Ok(())
            })
            .await;
        match applied {
            Ok(()) => Ok(TokenUse::Applied {
                user_id: token.user_id,
            }),
            Err(StoreError::NotFound) => Ok(TokenUse::Unknown),
            Err(e) => Err(e),
        }
    }
}
