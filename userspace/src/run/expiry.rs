//! The end of a run's credentials: at its TTL the placeholders stop
//! working, and with `--kill-on-expiry` the run's processes end.

use std::{path::PathBuf, time::Duration};

use crate::decision::{Cause, Decision, DecisionSink, Layer};

/// Waits for the credentials' TTL; then records the expiry and, with
/// `--kill-on-expiry`, ends the run.
pub async fn expiry(left: Duration, kill: bool, cgroup: PathBuf, sink: DecisionSink) {
    tokio::time::sleep(left).await;
    let reason = if kill {
        "the run's TTL has passed; --kill-on-expiry: ending the run"
    } else {
        "the run's TTL has passed: placeholders no longer work"
    };
    sink.record(&Decision::new(Layer::Control, Cause::CredentialsExpired, reason).host("run"));
    if kill {
        let _ = tokio::task::spawn_blocking(move || {
            crate::kernel::cgroup::kill_all(&cgroup, Duration::from_secs(10))
        })
        .await;
    }
}
