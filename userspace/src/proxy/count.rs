//! A response body that writes its request's outcome (status, latency,
//! cost, and how many bytes it carried) onto the request's audit row when it
//! ends or is dropped: one update per request.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::upstream::{Body, BoxError};
use crate::{
    audit::{EventId, Outcome},
    decision::DecisionSink,
};

pub struct CountBody {
    inner: Body,
    sink: DecisionSink,
    id: Option<EventId>,
    outcome: Outcome,
    bytes: u64,
    reported: bool,
}

impl CountBody {
    /// `outcome` is what is known when the response starts.
    pub fn new(inner: Body, sink: DecisionSink, id: Option<EventId>, outcome: Outcome) -> Self {
        Self {
            inner,
            sink,
            id,
            outcome,
            bytes: 0,
            reported: id.is_none(),
        }
    }

    fn report(&mut self) {
        if !self.reported {
            self.reported = true;
            let mut outcome = std::mem::take(&mut self.outcome);
            outcome.bytes_down = Some(self.bytes);
            self.sink.complete(self.id, outcome);
        }
    }
}

impl hyper::body::Body for CountBody {
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
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.report(),
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

impl Drop for CountBody {
    fn drop(&mut self) {
        self.report();
    }
}
