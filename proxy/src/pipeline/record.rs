//! One record per request: a guard made when a request starts and finished when its response
//! head goes out, or dropped without one (the client went away, the connection broke). It is
//! where a request's outcome is recorded — today the request, response and latency counters;
//! next Istio's metrics, the access log, the span, and the outlier and budget state, each from
//! the same place on both codecs.

use std::time::Instant;

use super::failure::{Failure, Kind};
use crate::telemetry::metrics::{Direction, Metrics};

/// A request under way.
#[must_use = "a request's record is finished with `responded`, or dropped"]
pub struct RequestRecord<'m> {
    metrics: &'m Metrics,
    direction: Direction,
    started: Instant,
    answered: bool,
}

impl<'m> RequestRecord<'m> {
    /// Starts the record of a request in `direction` (counted at once).
    pub fn start(metrics: &'m Metrics, direction: Direction) -> Self {
        metrics.request(direction);
        Self {
            metrics,
            direction,
            started: Instant::now(),
            answered: false,
        }
    }

    /// The response head with `status` went to the client (the peer's or the proxy's own).
    pub fn responded(&mut self, status: u16) {
        if !self.answered {
            self.answered = true;
            self.metrics
                .response(self.direction, status, self.started.elapsed());
        }
    }

    /// The proxy answered itself with `status`, for `failure`: counted by its cause and
    /// logged (at `info`, as linkerd2-proxy does; a denial or a rate limit, decisions the
    /// policy asked for, at `debug`).
    pub fn failed(&mut self, status: u16, failure: &Failure) {
        if !self.answered {
            let kind = failure.kind();
            self.metrics.failure(self.direction, kind);
            let direction = self.direction.label();
            let after = self.started.elapsed().as_millis();
            if matches!(kind, Kind::Denied | Kind::RateLimited) {
                tracing::debug!(
                    "{direction} request answered {status} after {after} ms: {failure}"
                );
            } else {
                tracing::info!("{direction} request answered {status} after {after} ms: {failure}");
            }
        }
        self.responded(status);
    }
}

impl Drop for RequestRecord<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.unanswered(self.direction);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(metrics: &Metrics) -> String {
        let mut out = String::new();
        metrics.render(&mut out);
        out
    }

    #[test]
    fn a_request_is_recorded_once_however_it_ends() {
        let metrics = Metrics::default();
        {
            let mut record = RequestRecord::start(&metrics, Direction::Outbound);
            record.responded(200);
            record.responded(200);
        }
        {
            let mut record = RequestRecord::start(&metrics, Direction::Outbound);
            record.failed(504, &Failure::Timeout(std::time::Duration::from_millis(5)));
        }
        drop(RequestRecord::start(&metrics, Direction::Outbound));
        let text = rendered(&metrics);
        for line in [
            "braid_proxy_requests_total{direction=\"outbound\"} 3",
            "braid_proxy_responses_total{direction=\"outbound\",status=\"200\"} 1",
            "braid_proxy_responses_total{direction=\"outbound\",status=\"504\"} 1",
            "braid_proxy_request_failures_total{direction=\"outbound\",response_flag=\"UT\"} 1",
            "braid_proxy_requests_unanswered_total{direction=\"outbound\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
