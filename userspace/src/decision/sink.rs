//! Where decisions go: the run's counts, stderr, and the audit log. A
//! refusal repeated over and over (a retry loop) is printed once; the number
//! of distinct refusals printed is bounded too, so that an agent cannot make
//! enforcer's memory or its terminal grow without end.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use super::{Cause, Decision, Verdict, line, tally::Tally};
use crate::audit::{AuditError, AuditEvent, AuditWriter, EventId, Outcome};

/// Most distinct refusals printed on stderr without `-v`.
pub const MAX_SHOWN: usize = 4096;

/// Refusals of one run written to the audit log one by one in a second;
/// past it, plain refusals (kernel, DNS, connection: never alarms) are
/// counted but not written, and one `flood` row marks the second. A flood
/// from one run must not fill the disk or hold up the audit writer other
/// runs share.
pub const FLOOD_ROWS: u32 = 200;

/// This second's count of rows, for [`FLOOD_ROWS`].
#[derive(Default)]
struct FloodGate {
    second: Option<std::time::Instant>,
    rows: u32,
}

impl FloodGate {
    /// Whether to write `d`'s row, and whether to mark the flood first.
    fn admit(&mut self, d: &Decision) -> (bool, bool) {
        let plain = matches!(
            d.cause,
            Cause::Kernel | Cause::BenignProbe | Cause::NotInPolicy | Cause::NotFromRun
        );
        if !plain {
            return (true, false);
        }
        let now = std::time::Instant::now();
        if self
            .second
            .is_none_or(|s| now.duration_since(s) >= std::time::Duration::from_secs(1))
        {
            self.second = Some(now);
            self.rows = 0;
        }
        self.rows = self.rows.saturating_add(1);
        match self.rows.cmp(&FLOOD_ROWS) {
            std::cmp::Ordering::Greater => (false, self.rows == FLOOD_ROWS + 1),
            _ => (true, false),
        }
    }
}

/// How decisions are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    /// One readable line per refusal (and per allow with `verbose`).
    Human { verbose: bool },
    /// One JSON object per decision.
    Json,
    /// Nothing (tests of the sink itself).
    Quiet,
}

#[derive(Default)]
struct Shown {
    keys: HashSet<String>,
    /// The "not printing more" note was printed.
    saturated: bool,
}

/// Where decisions go: the tally, stderr, and the audit log. Cheap to
/// clone; shared by every task of a run.
#[derive(Clone)]
pub struct DecisionSink {
    run_id: Arc<str>,
    mode: LogMode,
    audit: Option<AuditWriter>,
    tally: Arc<Mutex<Tally>>,
    shown: Arc<Mutex<Shown>>,
    flood: Arc<Mutex<FloodGate>>,
}

impl DecisionSink {
    pub fn new(run_id: &str, mode: LogMode) -> Self {
        Self::with_audit(run_id, mode, None)
    }

    /// A sink that also writes every decision to the audit log.
    pub fn with_audit(run_id: &str, mode: LogMode, audit: Option<AuditWriter>) -> Self {
        Self {
            run_id: Arc::from(run_id),
            mode,
            audit,
            tally: Arc::new(Mutex::new(Tally::default())),
            shown: Arc::new(Mutex::new(Shown::default())),
            flood: Arc::new(Mutex::new(FloodGate::default())),
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn mode(&self) -> LogMode {
        self.mode
    }

    /// Records one decision: the tally, a log line, and an audit row
    /// committed with the next batch (for decisions nothing waits on).
    pub fn record(&self, d: &Decision) {
        self.count_and_log(d);
        let Some(a) = &self.audit else {
            return;
        };
        let (write, mark) = self
            .flood
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(d);
        if mark {
            let marker = Decision::new(
                super::Layer::Control,
                Cause::Flood,
                format!(
                    "more than {FLOOD_ROWS} refusals in one second: the rest of this second's \
                     kernel, DNS and connection refusals are counted in the run's summary, not \
                     written one by one"
                ),
            )
            .host("run");
            a.record_later(AuditEvent::from_decision(&self.run_id, &marker));
        }
        if write {
            a.record_later(AuditEvent::from_decision(&self.run_id, d));
        }
    }

    /// Records a decision that lets something through, and returns only once
    /// its audit row is committed: call it before forwarding anything. An
    /// error means the audit log cannot be written, and nothing may pass.
    pub async fn commit(&self, d: &Decision) -> Result<Option<EventId>, AuditError> {
        let id = match &self.audit {
            None => None,
            Some(a) => {
                a.healthy()?;
                Some(a.record(AuditEvent::from_decision(&self.run_id, d)).await?)
            }
        };
        // Counted once written: a decision whose row failed is refused
        // (and recorded as such) by the caller instead.
        self.count_and_log(d);
        Ok(id)
    }

    /// Writes what happened after an allowed decision onto its row.
    pub fn complete(&self, id: Option<EventId>, outcome: Outcome) {
        if let (Some(a), Some(id)) = (&self.audit, id) {
            a.complete(id, outcome);
        }
    }

    /// Whether decisions can still be audited (always, without an audit log).
    pub fn healthy(&self) -> Result<(), AuditError> {
        self.audit.as_ref().map_or(Ok(()), AuditWriter::healthy)
    }

    /// The audit writer, if the run has one.
    pub fn audit(&self) -> Option<&AuditWriter> {
        self.audit.as_ref()
    }

    fn count_and_log(&self, d: &Decision) {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).add(d);
        self.log(d);
    }

    /// Prints a note for the person running the agent (not a decision: no
    /// count, no audit row), in the sink's format.
    pub fn note(&self, text: &str) {
        match self.mode {
            LogMode::Quiet => {}
            LogMode::Json => stderr_line(
                &serde_json::json!({
                    "ts": crate::logging::now_rfc3339(),
                    "level": "info",
                    "event": "note",
                    "run": &*self.run_id,
                    "message": text,
                })
                .to_string(),
            ),
            LogMode::Human { .. } => stderr_line(&format!("enforcer: {text}")),
        }
    }

    /// Prints a line for a decision that is already counted and recorded
    /// (an upstream failure written onto its request's row), in the sink's
    /// format.
    pub fn log(&self, d: &Decision) {
        match self.mode {
            LogMode::Quiet => {}
            LogMode::Json => stderr_line(&line::json_line(&self.run_id, d)),
            LogMode::Human { verbose } => {
                if let Some(text) = self.human(d, verbose) {
                    stderr_line(&format!("enforcer: {text}"));
                }
            }
        }
    }

    /// The human line for `d`, unless it is not shown.
    fn human(&self, d: &Decision, verbose: bool) -> Option<String> {
        if verbose {
            return Some(line::human_line(d));
        }
        if d.cause.always_shown() {
            return Some(line::human_line(d));
        }
        if d.verdict == Verdict::Allow || d.cause == Cause::BenignProbe {
            return None;
        }
        // The same refusal over and over (a retry loop) is shown once; the
        // summary counts them all.
        let key = format!(
            "{:?}|{}|{:?}|{}|{:?}",
            d.layer,
            d.destination(),
            d.path.as_deref().map(|p| crate::audit::redact_target(p).0),
            d.reason,
            d.comm
        );
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        if shown.keys.contains(&key) {
            return None;
        }
        if shown.keys.len() >= MAX_SHOWN {
            if shown.saturated {
                return None;
            }
            shown.saturated = true;
            return Some(format!(
                "{MAX_SHOWN} distinct refusals printed; further ones are counted in the summary and recorded in the audit log, not printed"
            ));
        }
        shown.keys.insert(key);
        Some(line::human_line(d))
    }

    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One line on stderr; a stderr that cannot be written (closed, full) is
/// ignored: there is nowhere to say so, and the run goes on.
fn stderr_line(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_plain_refusals_is_marked_once_a_second_and_alarms_always_pass() {
        let mut g = FloodGate::default();
        let kernel = Decision::new(super::super::Layer::Kernel, Cause::Kernel, "udp");
        let leak = Decision::new(super::super::Layer::Request, Cause::Exfiltration, "leak");
        let verdicts: Vec<(bool, bool)> = (0..1000).map(|_| g.admit(&kernel)).collect();
        assert_eq!(verdicts.iter().filter(|v| v.0).count(), FLOOD_ROWS as usize);
        assert_eq!(verdicts.iter().filter(|v| v.1).count(), 1, "one marker");
        assert_eq!(g.admit(&leak), (true, false), "alarms are always written");
        g.second = g.second.map(|s| s - std::time::Duration::from_secs(2));
        assert_eq!(g.admit(&kernel), (true, false), "a new second");
    }
    use crate::decision::Layer;

    #[test]
    fn repeated_and_excess_refusals_are_not_printed_again() {
        let sink = DecisionSink::new("r1", LogMode::Human { verbose: false });
        let d =
            Decision::new(Layer::Dns, Cause::NotInPolicy, "not in the policy").host("evil.test");
        assert!(sink.human(&d, false).is_some());
        assert!(sink.human(&d, false).is_none());
        for i in 0..(MAX_SHOWN + 10) {
            let d = Decision::new(Layer::Dns, Cause::NotInPolicy, "x").host(format!("n{i}.test"));
            let _ = sink.human(&d, false);
        }
        let shown = sink.shown.lock().unwrap();
        assert_eq!(shown.keys.len(), MAX_SHOWN);
        assert!(shown.saturated);
        drop(shown);
        let exfil = Decision::new(Layer::Dns, Cause::Exfiltration, "x").host("n1.test");
        assert!(
            sink.human(&exfil, false).is_some(),
            "alarms are always shown"
        );
        let probe = Decision::new(Layer::Kernel, Cause::BenignProbe, "nscd");
        assert!(sink.human(&probe, false).is_none());
    }
}
