//! The HTTP/1.1 fast path, on both listeners: an application's HTTP/1.1 connection to a meshed
//! destination (outbound), or a caller's to the application (inbound), is served here, one
//! request after the other, without hyper: the request head is parsed in place
//! ([`crate::h1::message`]), goes through the request driver like every request
//! ([`crate::pipeline::drive()`]), is written to a pooled connection (to the peer, or to the
//! application on loopback) with the hop-by-hop headers dropped, and the response is passed back as it comes, its body delimited
//! but not re-encoded. No task, channel or header map per request: the connection's buffers are
//! reused.
//!
//! Only plain requests take this path (HTTP/1.1, origin-form target, no body or a
//! `Content-Length` one); at the first other one (an upgrade, a chunked upload, `Expect`,
//! anything malformed) the connection, with the bytes already read, goes on under hyper
//! ([`crate::hyper_glue::serve`]), which handles or refuses it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use self::message::{
    BadResponse, ChunkedScanner, Framing, HEADER_SLOT, MAX_HEAD_BYTES, MAX_HEADERS, Parse,
};
use crate::hyper_glue;
use crate::pipeline::decide::{self, Picked, Plan, Rolls};
use crate::pipeline::{
    Bound, Deadline, ExchangeCause, Failure, Held, RequestRecord, UpstreamError, drive, respond,
};
use crate::policy::retry::REPLAY_BODY_LIMIT;
use crate::policy::routing::{RequestFacts, Table, Target};
use crate::state::context::Context;
use crate::state::follow::Follow;
use crate::transport::deadline::{Expired, Watchdog};
use crate::transport::detect::Detected;
use crate::transport::prefixed::Prefixed;
use crate::upstream::{PeerStream, REPLAY_AFTER_IDLE};

/// Bytes read at a time, from either side.
const READ_SIZE: usize = 8 * 1024;

/// A request head taken by the fast path, with what is needed once its bytes are gone.
struct Taken {
    /// Its plan, for an outbound request.
    plan: Option<Result<Plan, Failure>>,
    /// Where its method and path are in the read buffer, for authorization.
    method: std::ops::Range<usize>,
    path: std::ops::Range<usize>,
    head_len: usize,
    body_len: u64,
    keep_alive: bool,
    replayable: bool,
    to_head: bool,
}

enum Step {
    Partial,
    HandOver,
    /// A request that must not be forwarded (its framing is ambiguous): refused with 400.
    Refuse(&'static str),
    Take(Taken),
}

/// Parses the request head at the start of `buf`; when the fast path takes it, plans it (an
/// outbound one, in `outbound`'s table) and writes the head to forward into `out`.
fn take(outbound: Option<(&Table, Target)>, buf: &[u8], out: &mut Vec<u8>) -> Step {
    let mut headers = [HEADER_SLOT; MAX_HEADERS];
    let request = match message::parse_request(buf, &mut headers) {
        Parse::Partial => return Step::Partial,
        Parse::HandOver => return Step::HandOver,
        Parse::Refuse(reason) => return Step::Refuse(reason),
        Parse::Done(request) => request,
    };
    let plan = outbound.map(|(table, target)| plan(&request, table, target));
    // Both are slices of `buf`: their places in it outlive the parse.
    let place = |part: &str| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + part.len()
    };
    let (method, path) = (place(request.method), place(request.path()));
    out.clear();
    request.encode(out);
    Step::Take(Taken {
        plan,
        method,
        path,
        head_len: request.head_len,
        body_len: request.body_len,
        keep_alive: request.keep_alive,
        replayable: request.replayable(),
        to_head: request.method == "HEAD",
    })
}

/// The plan of an outbound request whose head is parsed, in `table`.
fn plan(
    request: &message::Request<'_, '_>,
    table: &Table,
    target: Target,
) -> Result<Plan, Failure> {
    let header = |name: &str| request.header(name);
    let facts = RequestFacts {
        method: request.method,
        path: request.path(),
        header: &header,
    };
    decide::plan(table, target, &facts, Rolls::draw())
}

/// Buffers of one application connection, reused by its requests.
struct Buffers {
    /// Bytes from the application not yet forwarded.
    from_app: Vec<u8>,
    /// What goes out next: the request (head and first body bytes) to the peer, then the
    /// response head (and first body bytes) to the application.
    out: Vec<u8>,
    /// Bytes from the peer not yet passed on.
    from_peer: Vec<u8>,
    /// A copy of the request being sent (head and body), while a retry policy may send it
    /// again.
    replay: Vec<u8>,
}

/// Reads more of `stream` into `buf`: how many bytes came (0 at the end of the stream).
async fn read_more<S>(stream: &mut S, buf: &mut Vec<u8>) -> std::io::Result<usize>
where
    S: tokio::io::AsyncRead + Unpin,
{
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    stream.read_buf(buf).await
}

/// Serves a client's HTTP/1.1 connection, its requests bound as `bound` says (the
/// application's to a meshed destination, or a caller's to the application); `prefix` holds
/// the bytes that protocol detection read.
pub async fn serve<S>(
    context: Arc<Context>,
    mut client: S,
    bound: Bound,
    prefix: Vec<u8>,
    started: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buffers = Buffers {
        from_app: prefix,
        out: Vec::new(),
        from_peer: Vec::new(),
        replay: Vec::new(),
    };
    match serve_requests(&context, &mut client, &bound, &mut buffers, started).await {
        Next::HandOver => {
            hand_over(context, client, buffers.from_app, bound, started).await;
        }
        // Ended: an inbound mTLS connection says so (TLS close_notify) before it closes.
        Next::Close => {
            let _ = client.shutdown().await;
        }
    }
}

/// What becomes of a connection the fast path stops serving.
enum Next {
    /// It goes on under hyper.
    HandOver,
    /// It closes.
    Close,
}

/// Serves the requests of a connection until it closes or needs hyper.
async fn serve_requests<S>(
    context: &Arc<Context>,
    client: &mut S,
    bound: &Bound,
    buffers: &mut Buffers,
    started: tokio::time::Instant,
) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let direction = bound.direction();
    // One timer for the connection's deadlines ([`crate::transport::deadline`]): the request head's while
    // one is under way (the first one's from the connection's start), else the idle time.
    let limits = context.limits();
    let head_timeout = Duration::from_millis(limits.request_head_timeout_ms);
    let mut watchdog = Watchdog::new(started + head_timeout);
    let mut head_started = Some(started);
    let mut idle_since = started;
    let mut follow = Follow::default();
    // At the end of the pod, an idle connection closes at once, a busy one after its response.
    let mut drain = context.drain.subscribe();
    loop {
        // The config in force, for this request only: the connection keeps it weakly while it
        // waits for the next one (an idle connection never keeps a replaced config alive), and
        // takes it again, and looks its destination up again, only after a swap.
        let (loaded, target) = match bound {
            Bound::Outbound(original) => match follow.current(&context.config, Some(*original)) {
                Some((loaded, Some(target))) => (Some(loaded), Some(target)),
                // Without a config, or when the destination left it, hyper's path answers.
                _ => return Next::HandOver,
            },
            Bound::Inbound(_) => (
                follow
                    .current(&context.config, None)
                    .map(|(loaded, _)| loaded),
                None,
            ),
        };
        let outbound = loaded.as_ref().zip(target).map(|(l, t)| (&l.table, t));
        let taken = match take(outbound, &buffers.from_app, &mut buffers.out) {
            Step::Take(taken) => taken,
            Step::Partial => {
                let limits = loaded.map_or_else(|| context.limits(), |l| l.config.limits);
                // (`loaded` is gone: the wait below holds no config.)
                let idle = head_started.is_none() && buffers.from_app.is_empty();
                let (deadline, expiry) = if idle {
                    let idle = Duration::from_millis(limits.idle_timeout_ms);
                    (idle_since + idle, Expired::Idle)
                } else {
                    let head_timeout = Duration::from_millis(limits.request_head_timeout_ms);
                    let head_started = *head_started.get_or_insert_with(tokio::time::Instant::now);
                    (head_started + head_timeout, Expired::RequestHead)
                };
                let read = tokio::select! {
                    biased;
                    read = read_more(client, &mut buffers.from_app) => read,
                    () = watchdog.until(deadline) => {
                        context.metrics.timed_out(direction, expiry);
                        return Next::Close;
                    }
                    _ = drain.wait_for(|draining| *draining), if idle => return Next::Close,
                };
                match read {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(_) => continue,
                }
            }
            Step::HandOver => return Next::HandOver,
            Step::Refuse(reason) => {
                let mut record = RequestRecord::start(&context.metrics, direction);
                let failure = Failure::BadRequest(reason.into());
                record.failed(failure.status().as_u16(), &failure);
                buffers.out.clear();
                respond::encode_h1(&failure, true, &mut buffers.out);
                let _ = client.write_all(&buffers.out).await;
                return Next::Close;
            }
        };
        head_started = None;
        let mut record = RequestRecord::start(&context.metrics, direction);
        let mut exchange = Exchange {
            context,
            client: &mut *client,
            buffers: &mut *buffers,
            first_plan: taken.plan,
            method: taken.method.clone(),
            path: taken.path.clone(),
            head_len: taken.head_len,
            body_len: taken.body_len,
            body_left: None,
            keep_alive: taken.keep_alive,
            replayable: taken.replayable,
            to_head: taken.to_head,
            kept: false,
            streamed: false,
        };
        let held = loaded.map(|config| Held { config, target });
        let outcome = match drive(context, bound, held, &mut exchange).await {
            Ok(answer) => {
                record.responded(answer.head.status);
                exchange.pass_on(answer).await
            }
            Err(failure) => Err(failure),
        };
        idle_since = tokio::time::Instant::now();
        match outcome {
            Ok(true) => {}
            Ok(false) | Err(Failure::ClientGone) => return Next::Close,
            Err(failure) => {
                // A body not read whole would be taken for the next request.
                let close =
                    !taken.keep_alive || exchange.consume_head() > 0 || context.drain.is_draining();
                let status = failure.status().as_u16();
                record.failed(status, &failure);
                drop(record);
                buffers.out.clear();
                respond::encode_h1(&failure, close, &mut buffers.out);
                let written = client.write_all(&buffers.out).await.is_ok();
                if !written || client.flush().await.is_err() || close {
                    return Next::Close;
                }
            }
        }
    }
}

/// The rest of the connection goes to hyper, the bytes read so far first.
async fn hand_over<S>(
    context: Arc<Context>,
    client: S,
    read: Vec<u8>,
    bound: Bound,
    started: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = Prefixed::new(read, client);
    hyper_glue::serve(context, client, bound, Detected::Http1, started).await;
}

mod exchange;
pub mod message;
use exchange::Exchange;

#[cfg(test)]
mod tests;
