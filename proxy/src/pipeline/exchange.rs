//! What the request driver ([`super::drive()`]) needs from a codec ([`Exchange`]: the HTTP/1.1
//! fast path, hyper, opaque TCP), a request's deadline ([`Deadline`]), and how long a request
//! waits for endpoints ([`HOLD_FOR_ENDPOINTS`]).

use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use super::decide::{Picked, Plan};
use super::failure::Failure;
use crate::policy::authz::HttpAccess;
use crate::policy::routing::{Table, Target};

/// How long a request to a backend with no endpoint listed yet waits for a config that lists
/// one before it fails with 503 (Linkerd queues such requests for up to 3 s too): the endpoint
/// list lags pod readiness by the operator's write and the kubelet's volume sync. A request
/// whose only endpoint is going away waits as long for its successor.
pub const HOLD_FOR_ENDPOINTS: Duration = Duration::from_secs(3);

/// When a request's time is up, and what it was (to name it in the failure).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    /// The instant.
    pub at: Instant,
    /// The timeout it came from.
    pub timeout: Duration,
}

impl Deadline {
    /// `future`, or [`Failure::Timeout`] at the deadline if there is one. It takes the future
    /// pinned where its caller keeps it: moved in, it would be stored twice in the caller's
    /// future (an async fn keeps its arguments beside what it moves them into), and a
    /// request's futures are moved whole when hyper spawns an HTTP/2 stream.
    pub async fn bound<T, F: Future<Output = Result<T, Failure>>>(
        deadline: Option<Self>,
        future: Pin<&mut F>,
    ) -> Result<T, Failure> {
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.at, future)
                .await
                .unwrap_or(Err(Failure::Timeout(deadline.timeout))),
            None => future.await,
        }
    }
}

/// What the driver needs from a codec for one request.
pub trait Exchange {
    /// What a successful send yields (a response head, or the end of an opaque connection).
    type Response;

    /// The request's method and path, which authorization may decide on; `None` for an
    /// opaque connection.
    fn access(&self) -> Option<HttpAccess<'_>>;

    /// The plan of an outbound request in `table`, where it is bound for `target`.
    fn plan(&mut self, table: &Table, target: Target) -> Result<Plan, Failure>;

    /// Sends the request to `peer`; the deadline, when set, bounds the send and the response
    /// head. A failure to connect leaves the request unsent, to go to another endpoint.
    fn send(
        &mut self,
        peer: &Picked,
        deadline: Option<Deadline>,
    ) -> impl Future<Output = Result<Self::Response, Failure>>;

    /// The status of a response and, for gRPC, the `grpc-status` of a trailers-only one: what
    /// retries and outlier detection judge; `None` for the end of an opaque connection.
    fn answered(response: &Self::Response) -> Option<(u16, Option<u8>)>;

    /// Keeps the whole request (its body up to
    /// [`REPLAY_BODY_LIMIT`](crate::policy::retry::REPLAY_BODY_LIMIT)) so that it can be sent
    /// again; whether it could. Asked before the first attempt, only when a retry policy applies.
    fn keep_for_replay(&mut self) -> impl Future<Output = Result<bool, Failure>>;

    /// Readies the request to go again after an attempt: `discarded` is that attempt's
    /// response, if it had one (dropped, its connection pooled when it can be). Whether it
    /// can go again (a request hyper's client consumed, with no copy kept, cannot).
    fn rewind(&mut self, discarded: Option<Self::Response>) -> bool;
}
