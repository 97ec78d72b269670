//! The JSON log line: one object per line, in the shape tracing-subscriber's JSON formatter gives
//! with `flatten_event` and `with_current_span` (timestamp, level, the event's fields, target,
//! and the current span as `"span":{<fields>,"name":…}`), written straight into the line buffer.
//!
//! Why not tracing-subscriber's own: it collects each event's fields into a map of
//! `serde_json::Value`s before writing them, and stores a span's fields as JSON text that it
//! parses back into values for every line logged inside the span. With one line per request
//! that was about a tenth of the CPU of a `GET /api/auth/me` (BENCHMARKS.md, "Log lines"). Here a
//! span's fields are kept as a ready-made JSON fragment (`"request_id":"…"`) and spliced in.

use std::fmt::{self, Write};

use chrono::{Datelike, Timelike, Utc};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events (the `event_format` of the fmt layer).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLine;

/// Formats span fields as a JSON fragment (the layer's `fmt_fields`), which [`JsonLine`] splices
/// into every line logged inside the span.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFields;

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events bridged from the `log` crate carry their real target and level here.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        timestamp(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = FieldWriter::new(&mut writer, false);
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>()
                && !fields.fields.is_empty()
            {
                writer.write_str(&fields.fields)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = FieldWriter::new(&mut writer, true);
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut visitor = FieldWriter::new(&mut writer, first);
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Now, in UTC, as tracing-subscriber writes it: `2026-12-06T06:33:09.122504Z`.
fn timestamp(w: &mut impl Write) -> fmt::Result {
    let now = Utc::now();
    write!(
        w,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        now.month(),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond() % 1_000_000_000 / 1_000
    )
}

/// Writes `"name":value` for each field, each after a comma unless it is the first of a
/// fragment. Fields of `log` records' metadata (`log.target`, `log.file`…) are left out, as
/// tracing-subscriber does: the line's own target and level already say them.
struct FieldWriter<'a, W> {
    writer: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<'a, W: Write> FieldWriter<'a, W> {
    fn new(writer: &'a mut W, first: bool) -> Self {
        Self {
            writer,
            first,
            result: Ok(()),
        }
    }

    /// Writes the separator and the key; false when the field is skipped or writing failed.
    fn key(&mut self, field: &Field) -> bool {
        if self.result.is_err() || field.name().starts_with("log.") {
            return false;
        }
        let separator = if std::mem::take(&mut self.first) {
            ""
        } else {
            ","
        };
        self.result = self
            .writer
            .write_str(separator)
            .and_then(|()| string(self.writer, field.name()))
            .and_then(|()| self.writer.write_char(':'));
        self.result.is_ok()
    }

    fn plain(&mut self, field: &Field, value: impl fmt::Display) {
        if self.key(field) {
            self.result = write!(self.writer, "{value}");
        }
    }
}

impl<W: Write> Visit for FieldWriter<'_, W> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.plain(field, value);
        } else {
            // JSON has no NaN or infinity; serde_json writes null too.
            self.plain(field, "null");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.plain(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.plain(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.plain(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.plain(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.plain(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            self.result = string(self.writer, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            self.result = quoted(self.writer, format_args!("{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.result = quoted(self.writer, format_args!("{value:?}"));
        }
    }
}

/// `s` as a JSON string.
fn string(w: &mut impl Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Formatted text as a JSON string, escaped as it is written (no intermediate `String`).
fn quoted(w: &mut impl Write, args: fmt::Arguments<'_>) -> fmt::Result {
    w.write_char('"')?;
    Escaped(&mut *w).write_fmt(args)?;
    w.write_char('"')
}

/// Writes what it is given with JSON string escaping: quote, backslash and every control
/// character (C0, DEL and C1, so no terminal escape or stray line break survives into a log
/// line), and U+2028/U+2029, which some JavaScript log viewers take for line breaks.
struct Escaped<'a, W: ?Sized>(&'a mut W);

impl<W: Write + ?Sized> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Most of what is logged is plain ASCII: checked a byte at a time, written in one piece.
        if !s
            .bytes()
            .any(|b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f)
        {
            return self.0.write_str(s);
        }
        let mut plain_from = 0;
        for (i, c) in s.char_indices() {
            let short = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => "",
                _ => continue,
            };
            self.0.write_str(&s[plain_from..i])?;
            if short.is_empty() {
                write!(self.0, "\\u{:04x}", u32::from(c))?;
            } else {
                self.0.write_str(short)?;
            }
            plain_from = i + c.len_utf8();
        }
        self.0.write_str(&s[plain_from..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        string(&mut out, s).unwrap();
        out
    }

    #[test]
    fn strings_are_escaped_to_valid_json_that_reads_back_the_same() {
        let nasty = "quote\" back\\slash\nline\rcr\ttab \u{1b}[31mred \u{7f}del \u{85}nel \u{2028}ls \u{2029}ps é 🦀";
        let json = escaped(nasty);
        for raw in [
            '\n', '\r', '\t', '\u{1b}', '\u{7f}', '\u{85}', '\u{2028}', '\u{2029}',
        ] {
            assert!(!json.contains(raw), "{raw:?} left raw in {json}");
        }
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, nasty);
        assert_eq!(escaped("plain"), "\"plain\"");
    }

    /// Lines written by the service's JSON subscriber (`telemetry::json_subscriber`), parsed.
    fn lines_of(log: impl FnOnce()) -> Vec<serde_json::Value> {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = crate::telemetry::json_subscriber(
            tracing_subscriber::EnvFilter::new("debug"),
            move || writer.clone(),
        );
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"))
            })
            .collect()
    }

    #[test]
    fn events_are_one_json_object_a_line_with_their_fields_and_current_span() {
        let error = std::io::Error::other("disk \"full\"");
        let lines = lines_of(|| {
            tracing::info!(n = 7u64, neg = -3i64, ratio = 0.5f64, nan = f64::NAN, ok = true,
                text = "two\nlines", shown = %"display", debugged = ?Some("x"),
                error = &error as &(dyn std::error::Error + 'static), "outside {}", 1);
            let span =
                tracing::info_span!("request", request_id = "r-1", later = tracing::field::Empty);
            span.record("later", "set after");
            span.in_scope(|| {
                tracing::warn!(status = 500u16, "inside");
                let inner = tracing::debug_span!("inner");
                inner.in_scope(|| tracing::debug!("innermost"));
            });
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        let outside = &lines[0];
        assert_eq!(outside["message"], "outside 1");
        assert_eq!(outside["level"], "INFO");
        assert_eq!(outside["target"], module_path!());
        assert_eq!(outside["n"], 7);
        assert_eq!(outside["neg"], -3);
        assert_eq!(outside["ratio"], 0.5);
        assert!(outside["nan"].is_null());
        assert_eq!(outside["ok"], true);
        assert_eq!(outside["text"], "two\nlines");
        assert_eq!(outside["shown"], "display");
        assert_eq!(outside["debugged"], "Some(\"x\")");
        assert_eq!(outside["error"], "disk \"full\"");
        assert!(outside["timestamp"].is_string());
        assert!(outside.get("span").is_none(), "{outside}");

        let inside = &lines[1];
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["level"], "WARN");
        assert_eq!(inside["status"], 500);
        assert_eq!(
            inside["span"],
            serde_json::json!({ "request_id": "r-1", "later": "set after", "name": "request" })
        );
        // Only the current span is written, as with_current_span(true) did.
        assert_eq!(lines[2]["span"], serde_json::json!({ "name": "inner" }));
    }

    #[test]
    fn the_timestamp_is_rfc3339_utc_with_microseconds() {
        let mut out = String::new();
        timestamp(&mut out).unwrap();
        assert_eq!(out.len(), "2026-12-06T06:33:09.122504Z".len(), "{out}");
        let parsed = chrono::DateTime::parse_from_rfc3339(&out).unwrap();
        assert!(
            (Utc::now() - parsed.with_timezone(&Utc))
                .num_seconds()
                .abs()
                < 60
        );
    }
}
