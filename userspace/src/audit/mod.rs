//! The durable audit log: one SQLite row per decision (kernel, DNS,
//! connection, request), committed before a request goes upstream.
//!
//! - `store`: open/create the database (WAL, migrations, a proven write),
//!   run rows; `schema`: tables, indexes, the `audit_log` view.
//! - `writer`: the group-commit writer thread behind [`AuditWriter`].
//! - `event`: what callers record, and how it is redacted into a row.
//! - `query`, `format`: `enforcer audit` listings as a table, JSON lines or CSV.
//! - `report`: the end-of-run summary and `--report FILE.json`.
//! - `prune`: deleting old rows; `clock`: times and ages; `vendor`: the
//!   vendor of a host.
//!
//! docs/audit.md documents the schema for people using `sqlite3` directly.

mod clock;
mod error;
mod event;
mod format;
mod prune;
mod query;
mod report;
mod schema;
mod store;
#[cfg(test)]
pub(crate) mod testutil;
mod vendor;
mod writer;

#[cfg(test)]
mod tests;

pub use clock::{ago, parse_age};
pub use error::AuditError;
pub use event::{AuditEvent, EventId, Failure, Outcome, RunEnd, RunInfo, redact_target};
pub use format::{OutputFormat, write_events, write_runs};
pub use prune::PruneReport;
pub use query::{EventFilter, EventRow, RunFilter, RunRow};
pub use report::{RunSummary, TOP_REFUSED, destination};
pub use schema::SCHEMA_VERSION;
pub use store::{AuditStore, BUSY_TIMEOUT, StoreOptions};
pub use vendor::vendor_of;
pub use writer::{AuditWriter, MAX_BATCH, MAX_QUEUED_LATER, WriterStats};

/// Where the audit log lives unless `--audit-db PATH` says otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/enforcer/audit.db";
