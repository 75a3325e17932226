//! The response on its way to the agent: counted, read for the call's
//! actual cost as it passes (nothing is held back), and, when it ends (or
//! breaks, or the agent goes away), the call's charge is settled and the
//! request's audit row completed once: status, bytes, latency, cost, vendor
//! id, and how the upstream failed if it did.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Body as _, Frame, SizeHint};

use super::upstream::{Body, BoxError};
use crate::{
    audit::{EventId, Failure, Outcome},
    decision::{Cause, Decision, DecisionSink},
    spend::{Charge, Settled, response::Reader},
};

/// What the end of a response settles.
pub struct Tracking {
    pub sink: DecisionSink,
    pub id: Option<EventId>,
    pub status: StatusCode,
    pub started: Instant,
    pub bytes_up: Option<u64>,
    pub charge: Option<Charge>,
    /// The request's decision, to report a failure on stderr.
    pub decision: Decision,
}

/// A response body that settles its call when it ends.
pub struct Tracked {
    inner: Body,
    bytes: u64,
    reader: Option<Reader>,
    tracking: Option<Tracking>,
}

impl Tracked {
    /// `content_type` of the response picks how its cost is read.
    pub fn new(inner: Body, mut tracking: Tracking, content_type: Option<&str>) -> Self {
        let reader = tracking
            .charge
            .as_mut()
            .filter(|c| Reader::wanted(c.rule()) && tracking.status.is_success())
            .map(|c| Reader::new(c.rule(), &c.cost.currency, content_type));
        Self {
            inner,
            bytes: 0,
            reader,
            tracking: Some(tracking),
        }
    }

    /// Settles once: the charge (on a task when a daily cap, which lives in
    /// SQLite, is involved), then the row.
    fn finish(&mut self, failure: Option<(Failure, String)>) {
        let Some(t) = self.tracking.take() else {
            return;
        };
        let (actual, vendor_id) = self.reader.take().map_or((None, None), Reader::finish);
        let bytes = self.bytes;
        if let Some((f, detail)) = failure.as_ref().filter(|(f, _)| *f != Failure::ClientGone) {
            let mut d = t.decision.clone();
            d.set_cause(
                Cause::UpstreamFailed,
                format!("{} ({}; {bytes} bytes passed)", detail, f.as_str()),
            );
            t.sink.log(&d);
        }
        let Tracking {
            sink,
            id,
            status,
            started,
            bytes_up,
            charge,
            ..
        } = t;
        let complete = move |settled: Option<Settled>| {
            sink.complete(
                id,
                Outcome {
                    status: Some(status.as_u16()),
                    bytes_up,
                    bytes_down: Some(bytes),
                    latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
                    cost_usd: settled.as_ref().map(|s| s.cost_usd),
                    vendor_txn_id: settled.and_then(|s| s.vendor_txn_id),
                    failure: failure.as_ref().map(|(f, _)| *f),
                    detail: failure.map(|(f, d)| format!("{}: {d}", f.as_str())),
                },
            );
        };
        let Some(charge) = charge else {
            // Nothing to settle: the row is completed here, without a task.
            complete(None);
            return;
        };
        let (charge, vendor_id) = match charge.settle_now(status, actual, vendor_id) {
            Ok(settled) => return complete(Some(settled)),
            Err(daily) => *daily,
        };
        // Without a runtime (shutting down), the charge's own drop commits it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let settled = charge.settle(status, actual, vendor_id).await;
                complete(Some(settled));
            });
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                    if let Some(r) = self.reader.as_mut() {
                        r.feed(d);
                    }
                }
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Ready(Some(Err(e))) => {
                let detail = format!("the upstream response broke off: {e}");
                self.finish(Some((Failure::ResetMidBody, detail)));
            }
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // An empty body may never be polled: its end is still an end.
        if self.inner.is_end_stream() {
            self.finish(None);
        } else if self.tracking.is_some() {
            let detail = "the agent closed the connection before the response ended".to_string();
            self.finish(Some((Failure::ClientGone, detail)));
        }
    }
}
