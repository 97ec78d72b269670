//! A journal line: one batch of ops, `{"seq":N,"ops":[…],"sum":"<16 hex>"}`, where `sum` is the
//! first 64 bits of the SHA-256 of the line up to `,"sum"`, so a line cut short or filled with
//! zeros by a crash is recognised.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::super::session_state::{Op, OpIn, OpOut};

#[derive(Serialize)]
struct LineOut<'a> {
    seq: u64,
    ops: Vec<OpOut<'a>>,
}

#[derive(Deserialize)]
pub(super) struct LineIn {
    pub(super) seq: u64,
    pub(super) ops: Vec<OpIn>,
}

const SUM_KEY: &[u8] = b",\"sum\":\"";
const SUM_HEX: usize = 16;
/// `,"sum":"` + 16 hex digits + `"}`.
const TAIL: usize = SUM_KEY.len() + SUM_HEX + 2;

fn checksum(body: &[u8]) -> String {
    hex::encode(&Sha256::digest(body)[..SUM_HEX / 2])
}

/// One batch as a journal line, newline included.
pub(super) fn encode_line(seq: u64, ops: &[Op]) -> anyhow::Result<Vec<u8>> {
    let line = LineOut {
        seq,
        ops: ops.iter().map(OpOut::from).collect(),
    };
    let mut buf = serde_json::to_vec(&line).context("serialising a journal line")?;
    // `{"seq":…,"ops":[…]}` becomes `{"seq":…,"ops":[…],"sum":"…"}`.
    buf.pop();
    let sum = checksum(&buf);
    buf.extend_from_slice(SUM_KEY);
    buf.extend_from_slice(sum.as_bytes());
    buf.extend_from_slice(b"\"}\n");
    Ok(buf)
}

pub(super) enum Decoded {
    Line(LineIn),
    /// Not a whole line with a matching checksum.
    Torn,
}

/// A line without its newline. A line whose checksum matches but whose content does not parse
/// is an error, not a torn write.
pub(super) fn decode_line(line: &[u8]) -> anyhow::Result<Decoded> {
    if line.len() <= TAIL {
        return Ok(Decoded::Torn);
    }
    let (body, tail) = line.split_at(line.len() - TAIL);
    let (key, rest) = tail.split_at(SUM_KEY.len());
    let (sum, end) = rest.split_at(SUM_HEX);
    if key != SUM_KEY || end != b"\"}" || sum != checksum(body).as_bytes() {
        return Ok(Decoded::Torn);
    }
    let mut json = Vec::with_capacity(body.len() + 1);
    json.extend_from_slice(body);
    json.push(b'}');
    Ok(Decoded::Line(serde_json::from_slice(&json).context(
        "a journal line with a valid checksum is unreadable",
    )?))
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn lines_carry_a_checksum_that_catches_any_changed_byte() {
        let line = encode_line(7, &[Op::DropSession(Uuid::nil())]).unwrap();
        assert!(line.ends_with(b"\"}\n"));
        let text = std::str::from_utf8(&line).unwrap();
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(value["seq"], 7, "each line is plain JSON: {text}");
        let body = &line[..line.len() - 1];
        assert!(matches!(decode_line(body).unwrap(), Decoded::Line(l) if l.seq == 7));
        for i in 0..body.len() {
            let mut bad = body.to_vec();
            bad[i] ^= 0x01;
            assert!(
                !matches!(decode_line(&bad), Ok(Decoded::Line(_))),
                "byte {i} changed and still accepted"
            );
        }
        for cut in 0..body.len() {
            assert!(matches!(decode_line(&body[..cut]).unwrap(), Decoded::Torn));
        }
    }
}
