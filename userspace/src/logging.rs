//! enforcer's own messages on stderr: the tracing subscriber (plain text,
//! coloured only on a terminal and never with `NO_COLOR`; JSON lines with
//! `--log-json`, so that every stderr line parses), and the errors and
//! notices the commands print themselves, which follow the same mode.
//!
//! In JSON mode every line has the shape of the decision lines
//! (`decision::line`): `ts` (RFC 3339, UTC), `level` (`error`, `warn`,
//! `info`, `debug`, `trace`), `event` (`log` here), `message`, and for
//! tracing's lines `target` and the event's fields.

use std::{ffi::OsStr, fmt, io::Write as _, sync::OnceLock};

use serde::Serialize;
use serde_json::{Map, Value};
use time::{OffsetDateTime, format_description::well_known::Rfc3339 as Rfc3339Format};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format::Writer, time::FormatTime},
    registry::LookupSpan,
};

/// The environment variable that sets tracing's filter (`warn` by default).
pub const FILTER_VAR: &str = "ENFORCER_LOG";

/// How enforcer writes to stderr, chosen once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Lines for people (`enforcer: error: ...`).
    Human,
    /// One JSON object per line, each with `ts` (RFC 3339, UTC) and
    /// `level`.
    Json,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// The format chosen by [`init`] (human until then).
pub fn format() -> Format {
    FORMAT.get().copied().unwrap_or(Format::Human)
}

/// Chooses the format and installs the tracing subscriber that writes to
/// stderr. Call once, first thing; later calls change nothing.
pub fn init(format: Format) {
    if FORMAT.set(format).is_err() {
        return;
    }
    let ansi = use_ansi(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing::subscriber::set_global_default(subscriber(format, ansi, std::io::stderr));
}

/// Colour only for a person at a terminal who has not asked for none
/// (<https://no-color.org>: `NO_COLOR` set to anything but empty).
pub fn use_ansi(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The subscriber for `format`, writing through `writer` (stderr; a buffer
/// in tests).
fn subscriber<W>(
    format: Format,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_env(FILTER_VAR).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter)
        .with_timer(Rfc3339);
    match format {
        Format::Human => Box::new(builder.with_ansi(ansi).finish()),
        Format::Json => Box::new(builder.event_format(JsonEvent).finish()),
    }
}

/// tracing's events as JSON lines of enforcer's shape (see the module).
struct JsonEvent;

impl<S, N> FormatEvent<S, N> for JsonEvent
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("ts".into(), Value::String(now_rfc3339()));
        line.insert(
            "level".into(),
            Value::String(meta.level().as_str().to_ascii_lowercase()),
        );
        line.insert("event".into(), Value::String("log".into()));
        line.insert(
            "message".into(),
            fields
                .remove("message")
                .unwrap_or(Value::String(String::new())),
        );
        line.insert("target".into(), Value::String(meta.target().into()));
        for (k, v) in fields {
            line.entry(k).or_insert(v);
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields as JSON values.
struct Fields<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// Now, as every timestamp enforcer prints: RFC 3339 in UTC
/// (`2026-11-30T05:50:52.000150123Z`), the format of the decision lines.
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// `t` as every timestamp enforcer prints ([`now_rfc3339`]).
pub fn format_rfc3339(t: std::time::SystemTime) -> String {
    rfc3339(OffsetDateTime::from(t))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339Format)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

/// tracing's timestamps, in the same form as [`now_rfc3339`].
struct Rfc3339;

impl FormatTime for Rfc3339 {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        w.write_str(&now_rfc3339())
    }
}

/// Severity of a line written by [`error`], [`warn`] or [`note`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warn,
    Info,
}

/// One line in JSON mode, of the shape of tracing's (see the module).
#[derive(Serialize)]
struct JsonLine<'a> {
    ts: String,
    level: Level,
    event: &'static str,
    message: &'a str,
    target: &'static str,
}

/// The JSON line for `message` (no trailing newline).
pub fn json_line(level: Level, message: &str) -> String {
    serde_json::to_string(&JsonLine {
        ts: now_rfc3339(),
        level,
        event: "log",
        message,
        target: "enforcer",
    })
    .unwrap_or_default()
}

/// Writes `human` (as is) or, in JSON mode, `message` as a JSON line.
/// A stderr that cannot be written is ignored: there is nowhere to say so.
fn emit(level: Level, human: &str, message: &str) {
    let line = match format() {
        Format::Human => human.to_string(),
        Format::Json => json_line(level, message),
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A line written as it is in human mode (`enforcer: note: ...`); in JSON
/// mode its text, less the leading `enforcer: `, is the message.
pub fn say(level: Level, text: &str) {
    emit(level, text, text.strip_prefix("enforcer: ").unwrap_or(text));
}

/// `say!(Warn, "enforcer: ...", args)`: a line on stderr that follows
/// `--log-json` ([`say`] with `format!` syntax; the level is `Error`,
/// `Warn` or `Info`).
#[macro_export]
macro_rules! say {
    ($level:ident, $($arg:tt)*) => {
        $crate::logging::say($crate::logging::Level::$level, &format!($($arg)*))
    };
}

/// `enforcer: error: MESSAGE`.
pub fn error(message: impl fmt::Display) {
    let m = message.to_string();
    emit(Level::Error, &format!("enforcer: error: {m}"), &m);
}

/// A message whose text already says where and what (a policy error:
/// `file:line:col: error: ...`), printed as it is.
pub fn verbatim(level: Level, message: impl fmt::Display) {
    let m = message.to_string();
    emit(level, &m, &m);
}

/// `enforcer: warning: MESSAGE`.
pub fn warn(message: impl fmt::Display) {
    let m = message.to_string();
    emit(Level::Warn, &format!("enforcer: warning: {m}"), &m);
}

/// `enforcer: MESSAGE` (what happened, for the record).
pub fn note(message: impl fmt::Display) {
    let m = message.to_string();
    emit(Level::Info, &format!("enforcer: {m}"), &m);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    fn captured(format: Format, ansi: bool) -> String {
        let buf = Buffer::default();
        let sub = subscriber(format, ansi, buf.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(
                path = "/x/audit.db",
                "the audit database is readable by others"
            );
            tracing::info!("not shown: below the default level");
        });
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    fn assert_rfc3339(ts: &str) {
        assert!(
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
            "not RFC 3339: {ts}"
        );
        assert!(ts.ends_with('Z'), "{ts}");
    }

    #[test]
    fn json_mode_makes_tracing_lines_json_with_timestamp_and_level() {
        let out = captured(Format::Json, true);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["event"], "log");
        assert_eq!(v["message"], "the audit database is readable by others");
        assert_eq!(v["path"], "/x/audit.db");
        assert_eq!(v["target"], module_path!());
        assert_rfc3339(v["ts"].as_str().unwrap());
        assert!(!out.contains('\u{1b}'), "{out:?}");
    }

    #[test]
    fn human_mode_is_plain_text_and_coloured_only_when_asked() {
        let plain = captured(Format::Human, false);
        assert!(plain.contains("WARN"), "{plain}");
        assert!(plain.contains("the audit database is readable by others"));
        assert!(!plain.contains('\u{1b}'), "{plain:?}");
        assert!(serde_json::from_str::<serde_json::Value>(plain.trim()).is_err());
        let coloured = captured(Format::Human, true);
        assert!(coloured.contains('\u{1b}'), "{coloured:?}");
    }

    #[test]
    fn colour_follows_the_terminal_and_no_color() {
        assert!(use_ansi(true, None));
        assert!(!use_ansi(false, None));
        assert!(!use_ansi(true, Some(OsStr::new("1"))));
        assert!(!use_ansi(false, Some(OsStr::new("1"))));
        // NO_COLOR="" does not count (no-color.org).
        assert!(use_ansi(true, Some(OsStr::new(""))));
    }

    #[test]
    fn json_lines_of_our_own_match_tracing_s() {
        let line = json_line(Level::Error, "bad \"policy\"\n  | line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["event"], "log");
        assert_eq!(v["message"], "bad \"policy\"\n  | line");
        assert_eq!(v["target"], "enforcer");
        assert_rfc3339(v["ts"].as_str().unwrap());
        assert!(!line.contains('\n'));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123456789Z");
    }
}
