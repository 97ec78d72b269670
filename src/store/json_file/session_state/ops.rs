//! The changes the sessions are made of, and their form in a journal line.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::outbox::{OneTimeToken, OutboxMessage};
use crate::store::{SessionRecord, TokenRecord};

/// One change to the sessions.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Inserts or replaces a session.
    Session(Arc<SessionRecord>),
    /// Inserts or replaces a token (by id; its hash and session never change).
    Token(Arc<TokenRecord>),
    /// Removes a session and all its tokens.
    DropSession(Uuid),
    /// Removes one token.
    DropToken(Uuid),
    /// Inserts a one-time token, replacing its user's earlier one of the same purpose.
    OneTime(Arc<OneTimeToken>),
    /// Removes a one-time token (by hash).
    DropOneTime(String),
    /// Inserts or replaces an outbox message.
    Outgoing(Arc<OutboxMessage>),
    /// Removes an outbox message.
    DropOutgoing(Uuid),
    /// Records the last TOTP time step a user's code was accepted for.
    TotpStep(Arc<TotpStep>),
    /// Forgets a user's last accepted step (long past: it refuses nothing any more).
    DropTotpStep(String),
}

/// The last TOTP time step accepted for a user. Kept here, in the journal, rather than in the
/// user's entry of `users.json`: every two-factor sign-in writes one, and a journal record costs
/// what it holds where `users.json` is rewritten whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TotpStep {
    pub user_id: String,
    pub step: i64,
}

/// An op as the journal writes it: `{"session":{…}}`, `{"token":{…}}`, `{"dropSession":"…"}`,
/// `{"dropToken":"…"}`, `{"oneTime":{…}}`, `{"dropOneTime":"…"}`, `{"outgoing":{…}}`,
/// `{"dropOutgoing":"…"}`, `{"totpStep":{"userId":"…","step":N}}`, `{"dropTotpStep":"…"}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum OpOut<'a> {
    Session(&'a SessionRecord),
    Token(&'a TokenRecord),
    DropSession(Uuid),
    DropToken(Uuid),
    OneTime(&'a OneTimeToken),
    DropOneTime(&'a str),
    Outgoing(&'a OutboxMessage),
    DropOutgoing(Uuid),
    TotpStep(&'a TotpStep),
    DropTotpStep(&'a str),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum OpIn {
    Session(SessionRecord),
    Token(TokenRecord),
    DropSession(Uuid),
    DropToken(Uuid),
    OneTime(OneTimeToken),
    DropOneTime(String),
    Outgoing(OutboxMessage),
    DropOutgoing(Uuid),
    TotpStep(TotpStep),
    DropTotpStep(String),
}

impl<'a> From<&'a Op> for OpOut<'a> {
    fn from(op: &'a Op) -> Self {
        match op {
            Op::Session(s) => Self::Session(s),
            Op::Token(t) => Self::Token(t),
            Op::DropSession(id) => Self::DropSession(*id),
            Op::DropToken(id) => Self::DropToken(*id),
            Op::OneTime(t) => Self::OneTime(t),
            Op::DropOneTime(hash) => Self::DropOneTime(hash),
            Op::Outgoing(m) => Self::Outgoing(m),
            Op::DropOutgoing(id) => Self::DropOutgoing(*id),
            Op::TotpStep(s) => Self::TotpStep(s),
            Op::DropTotpStep(user) => Self::DropTotpStep(user),
        }
    }
}

impl From<OpIn> for Op {
    fn from(op: OpIn) -> Self {
        match op {
            OpIn::Session(s) => Self::Session(Arc::new(s)),
            OpIn::Token(t) => Self::Token(Arc::new(t)),
            OpIn::DropSession(id) => Self::DropSession(id),
            OpIn::DropToken(id) => Self::DropToken(id),
            OpIn::OneTime(t) => Self::OneTime(Arc::new(t)),
            OpIn::DropOneTime(hash) => Self::DropOneTime(hash),
            OpIn::Outgoing(m) => Self::Outgoing(Arc::new(m)),
            OpIn::DropOutgoing(id) => Self::DropOutgoing(id),
            OpIn::TotpStep(s) => Self::TotpStep(Arc::new(s)),
            OpIn::DropTotpStep(user) => Self::DropTotpStep(user),
        }
    }
}
