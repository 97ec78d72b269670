//! `sessions.json`, the snapshot: `{"seq":N,"sessions":[…],"tokens":[…],"oneTimeTokens":[…],
//! "outbox":[…],"totpSteps":[…]}`, the state after journal batch `N`, read record by record into a state and
//! written streaming from one.

use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::super::session_state::{HashKey, Op, RetiredToken, Sessions, TotpStep};
use super::SNAPSHOT;
use crate::durable_file;
use crate::store::outbox::{OneTimeToken, OutboxMessage};
use crate::store::{SessionRecord, TokenRecord};

/// Reads a snapshot (`{"seq":…,"sessions":[…],"tokens":[…]}`, every key optional) straight into
/// a state, record by record: neither the file nor its records are held in between.
pub(super) fn read_snapshot(reader: impl Read) -> serde_json::Result<Sessions> {
    let mut state = Sessions::default();
    let mut de = serde_json::Deserializer::from_reader(reader);
    de.deserialize_map(SnapshotVisitor(&mut state))?;
    de.end()?;
    Ok(state)
}

struct SnapshotVisitor<'a>(&'a mut Sessions);

impl<'de> Visitor<'de> for SnapshotVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("{\"seq\":…,\"sessions\":[…],\"tokens\":[…]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "seq" => self.0.seq = map.next_value()?,
                "sessions" => map.next_value_seed(Records {
                    state: &mut *self.0,
                    op: |s: SessionRecord| Op::Session(Arc::new(s)),
                })?,
                "tokens" => map.next_value_seed(Records {
                    state: &mut *self.0,
                    op: |t: TokenRecord| Op::Token(Arc::new(t)),
                })?,
                "oneTimeTokens" => map.next_value_seed(Records {
                    state: &mut *self.0,
                    op: |t: OneTimeToken| Op::OneTime(Arc::new(t)),
                })?,
                "outbox" => map.next_value_seed(Records {
                    state: &mut *self.0,
                    op: |m: OutboxMessage| Op::Outgoing(Arc::new(m)),
                })?,
                "totpSteps" => map.next_value_seed(Records {
                    state: &mut *self.0,
                    op: |s: TotpStep| Op::TotpStep(Arc::new(s)),
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// An array of records, each applied to the state as it is read.
struct Records<'a, T> {
    state: &'a mut Sessions,
    op: fn(T) -> Op,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Records<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Records<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(record) = seq.next_element::<T>()? {
            self.state.apply(&(self.op)(record));
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    seq: u64,
    sessions: Vec<&'a SessionRecord>,
    tokens: TokensOut<'a>,
    #[serde(rename = "oneTimeTokens", skip_serializing_if = "<[_]>::is_empty")]
    one_time_tokens: &'a [Arc<OneTimeToken>],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    outbox: &'a [Arc<OutboxMessage>],
    #[serde(rename = "totpSteps", skip_serializing_if = "<[_]>::is_empty")]
    totp_steps: &'a [Arc<TotpStep>],
}

/// The live tokens, then the retired ones as whole records (the snapshot's format does not know
/// about retirement: a retired token loads as the rotated token it is).
pub(super) struct TokensOut<'a> {
    pub(super) live: &'a [Arc<TokenRecord>],
    pub(super) retired: &'a [(HashKey, RetiredToken)],
}

impl Serialize for TokensOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.live.len() + self.retired.len()))?;
        for t in self.live {
            seq.serialize_element(t.as_ref())?;
        }
        for (key, t) in self.retired {
            seq.serialize_element(&t.record(key))?;
        }
        seq.end()
    }
}

/// What a snapshot is written from: the state's records, taken under its lock and written
/// without it.
pub(super) struct SnapshotRecords {
    pub(super) seq: u64,
    pub(super) sessions: Vec<Arc<SessionRecord>>,
    pub(super) tokens: Vec<Arc<TokenRecord>>,
    pub(super) retired: Vec<(HashKey, RetiredToken)>,
    pub(super) one_time_tokens: Vec<Arc<OneTimeToken>>,
    pub(super) outbox: Vec<Arc<OutboxMessage>>,
    pub(super) totp_steps: Vec<Arc<TotpStep>>,
}

impl SnapshotRecords {
    pub(super) fn of(state: &Sessions) -> Self {
        let (sessions, tokens) = state.records();
        let retired = state
            .retired()
            .read()
            .iter()
            .map(|(k, t)| (*k, *t))
            .collect();
        Self {
            seq: state.seq,
            sessions,
            tokens,
            retired,
            one_time_tokens: state.one_time_tokens().cloned().collect(),
            outbox: state.outbox(),
            totp_steps: state.totp_steps().cloned().collect(),
        }
    }
}

/// Writes the snapshot durably (temp file, fsync, rename, folder fsync), streaming it; returns
/// its length.
pub(super) fn write_snapshot(dir: &Path, records: &SnapshotRecords) -> anyhow::Result<u64> {
    let path = dir.join(SNAPSHOT);
    let tmp = dir.join(format!(".{SNAPSHOT}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        serde_json::to_writer(
            &mut out,
            &SnapshotOut {
                seq: records.seq,
                sessions: records.sessions.iter().map(|s| s.as_ref()).collect(),
                tokens: TokensOut {
                    live: &records.tokens,
                    retired: &records.retired,
                },
                one_time_tokens: &records.one_time_tokens,
                outbox: &records.outbox,
                totp_steps: &records.totp_steps,
            },
        )?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let len = file.metadata()?.len();
        fs::rename(&tmp, &path)?;
        durable_file::sync_dir(dir)?;
        Ok::<_, anyhow::Error>(len)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("could not write {}", path.display()))
}
