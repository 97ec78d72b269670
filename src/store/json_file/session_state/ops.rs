//! The changes the sessions are made of, and their form in a journal line.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
}

/// An op as the journal writes it: `{"session":{…}}`, `{"token":{…}}`, `{"dropSession":"…"}`,
/// `{"dropToken":"…"}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum OpOut<'a> {
    Session(&'a SessionRecord),
    Token(&'a TokenRecord),
    DropSession(Uuid),
    DropToken(Uuid),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum OpIn {
    Session(SessionRecord),
    Token(TokenRecord),
    DropSession(Uuid),
    DropToken(Uuid),
}

impl<'a> From<&'a Op> for OpOut<'a> {
    fn from(op: &'a Op) -> Self {
        match op {
            Op::Session(s) => Self::Session(s),
            Op::Token(t) => Self::Token(t),
            Op::DropSession(id) => Self::DropSession(*id),
            Op::DropToken(id) => Self::DropToken(*id),
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
        }
    }
}
