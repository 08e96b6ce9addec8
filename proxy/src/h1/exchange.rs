//! One request on the HTTP/1.1 fast path ([`super::serve`]), as the request driver sees it
//! ([`crate::pipeline::Exchange`]): its facts come from the head still in the read buffer, and
//! its send writes head and body to a peer (pooled or new, replayed once when a pooled
//! connection closed under an idempotent request) and reads the response head. The driver
//! returns; [`Exchange::pass_on`] then passes the response on and gives the connection back to
//! the pool.

use std::pin::pin;

use super::*;
use crate::policy::authz::HttpAccess;

/// Why an attempt at sending a request and reading its response head failed.
enum Attempt {
    /// The peer answered nothing: the request may go again on a new connection. `clean`: it
    /// closed the connection in good order (a TLS `close_notify`, a FIN), as a peer does to an
    /// idle connection, rather than breaking it.
    NoAnswer(Failure, bool),
    /// The exchange failed otherwise, before the final response head.
    Failed(Failure),
}

impl From<Attempt> for Failure {
    fn from(attempt: Attempt) -> Self {
        match attempt {
            Attempt::NoAnswer(failure, _) | Attempt::Failed(failure) => failure,
        }
    }
}

/// One request on the fast path.
pub(super) struct Exchange<'a, S> {
    pub(super) context: &'a Arc<Context>,
    /// The client's connection (the application's outbound, a caller's inbound).
    pub(super) client: &'a mut S,
    pub(super) buffers: &'a mut Buffers,
    /// The plan made when an outbound head was parsed, for the driver's first question.
    pub(super) first_plan: Option<Result<Plan, Failure>>,
    /// Where the method and the path are in `buffers.from_app`, until the head is consumed.
    pub(super) method: std::ops::Range<usize>,
    pub(super) path: std::ops::Range<usize>,
    /// The head's length in `buffers.from_app`, until it is consumed.
    pub(super) head_len: usize,
    pub(super) body_len: u64,
    /// Request body bytes still to read from the application, once the head is consumed.
    pub(super) body_left: Option<u64>,
    pub(super) keep_alive: bool,
    pub(super) replayable: bool,
    pub(super) to_head: bool,
    /// The whole request is kept in `buffers.replay`, to be sent again.
    pub(super) kept: bool,
    /// Body bytes went to a peer straight from the application (not kept in `buffers.out`):
    /// without a kept copy, the request cannot go again.
    pub(super) streamed: bool,
}

/// A peer connection in use, with the identity it was verified as.
pub(super) struct Peer {
    stream: PeerStream,
    identity: Option<String>,
    addr: SocketAddr,
}

impl Peer {
    fn error(&self, cause: ExchangeCause) -> Failure {
        Failure::Upstream(UpstreamError::Exchange {
            addr: self.addr,
            cause,
        })
    }
}

/// A response head ready to go to the application, and the connection it came on.
pub(super) struct Answer {
    pub(super) head: Head,
    peer: Peer,
}

/// A final response head ready to go to the application (in `Buffers::out`).
pub(super) struct Head {
    pub(super) status: u16,
    framing: Framing,
    /// Body bytes passed on so far.
    body_sent: u64,
    scanner: ChunkedScanner,
    body_done: bool,
    reusable: bool,
    close: bool,
}

impl Head {
    /// Of `bytes` that follow what was passed on so far, how many belong to the body, and
    /// whether the body ends with them.
    fn body_part(&mut self, bytes: &[u8]) -> Result<(usize, bool), BadResponse> {
        let (take, done) = match self.framing {
            Framing::Empty => (0, true),
            Framing::Length(n) => {
                let take = (n - self.body_sent).min(bytes.len() as u64);
                (take as usize, self.body_sent + take == n)
            }
            Framing::Chunked => match self.scanner.scan(bytes) {
                Ok(Some(end)) => (end, true),
                Ok(None) => (bytes.len(), false),
                Err(_) => return Err(BadResponse::Malformed),
            },
            Framing::UntilClose => (bytes.len(), false),
        };
        self.body_sent += take as u64;
        Ok((take, done))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> crate::pipeline::Exchange for Exchange<'_, S> {
    type Response = Answer;

    fn access(&self) -> Option<HttpAccess<'_>> {
        // Parsed as UTF-8 when the head was: these cannot fail, and cost a few bytes' scan.
        let text = |range: &std::ops::Range<usize>| {
            self.buffers
                .from_app
                .get(range.clone())
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .unwrap_or_default()
        };
        Some(HttpAccess {
            method: text(&self.method),
            path: text(&self.path),
        })
    }

    fn plan(&mut self, table: &Table, target: Target) -> Result<Plan, Failure> {
        if let Some(first) = self.first_plan.take() {
            return first;
        }
        // Asked again (the request waited for a newer config): the head is still in the buffer.
        let mut headers = [HEADER_SLOT; MAX_HEADERS];
        let Parse::Done(request) = message::parse_request(&self.buffers.from_app, &mut headers)
        else {
            return Err(Failure::BadRequest("request head changed".into()));
        };
        super::plan(&request, table, target)
    }

    async fn send(
        &mut self,
        picked: &Picked,
        deadline: Option<Deadline>,
    ) -> Result<Answer, Failure> {
        self.consume_head();
        let addr = picked.endpoint.addr;
        let identity = picked.endpoint.identity.as_deref();
        let upstreams = &self.context.upstreams;
        let timeout = picked.connect_timeout;
        // Getting a connection is boxed when it is not a pooled one at hand: its future
        // (waiting for room under maxConnections, TCP connect, TLS handshake) is large.
        let idle = match upstreams.take_idle_stream(addr, identity) {
            Some(idle) => idle,
            None => {
                let new = async {
                    (Box::pin(upstreams.stream_to(&picked.endpoint, timeout, true)).await)
                        .map_err(Failure::from)
                };
                Deadline::bound(deadline, pin!(new)).await?
            }
        };
        let idle_for = idle.idle_for;
        let mut peer = Peer {
            stream: idle.stream,
            identity: idle.identity,
            addr,
        };
        // A pooled connection may have been closed by its peer just now (its close not read
        // yet): the request goes once more, on a new connection, when it is known not to have
        // been processed — a mesh peer's proxy closes a connection in good order only between
        // requests (idle, or at the end of its pod) — or when it can safely go twice and the
        // connection was idle a while (Go's rule) or was closed in good order by the
        // application on loopback (which stops, or timed the keep-alive connection out).
        let mesh_peer = identity.is_some();
        let application = addr.ip().is_loopback();
        let mut replayed = false;
        loop {
            let attempt = Deadline::bound(
                deadline,
                pin!(async { Ok(self.send_and_read_head(&mut peer).await) }),
            )
            .await?;
            match attempt {
                Ok(head) => return Ok(Answer { head, peer }),
                Err(Attempt::NoAnswer(_, clean))
                    if !replayed
                        && idle_for.is_some_and(|idle_for| {
                            (clean && mesh_peer && self.whole())
                                || (self.replayable
                                    && (idle_for >= REPLAY_AFTER_IDLE || (clean && application)))
                        }) =>
                {
                    replayed = true;
                    self.restore_kept();
                    // The new connection takes the closed one's place under maxConnections.
                    let slot = peer.stream.take_slot();
                    let reconnect = upstreams.connect(addr, identity, timeout, slot);
                    peer.stream = Box::pin(reconnect).await.map_err(Failure::from)?;
                }
                // The application reset a connection it had not answered, and no longer
                // listens: it stopped, and this connection was still in its listener's queue
                // (closing a listener resets them), so it never read the request.
                Err(Attempt::NoAnswer(..))
                    if application && idle_for.is_none() && stopped_listening(addr).await =>
                {
                    let cause = ExchangeCause::Unprocessed("the application stopped listening");
                    return Err(peer.error(cause));
                }
                Err(failed) => return Err(failed.into()),
            }
        }
    }

    fn answered(answer: &Answer) -> Option<(u16, Option<u8>)> {
        Some((answer.head.status, None))
    }

    async fn keep_for_replay(&mut self) -> Result<bool, Failure> {
        if self.body_len > REPLAY_BODY_LIMIT {
            return Ok(false);
        }
        // The body is read whole before the first attempt (64 KiB at most), into the
        // connection's reused buffers: no allocation once they have grown.
        let mut left = self.consume_head();
        let buffers = &mut *self.buffers;
        while left > 0 {
            if buffers.from_app.is_empty() {
                match read_more(self.client, &mut buffers.from_app).await {
                    Ok(0) | Err(_) => return Err(Failure::ClientGone),
                    Ok(_) => {}
                }
            }
            let n = buffers.from_app.len().min(left as usize);
            buffers.out.extend_from_slice(&buffers.from_app[..n]);
            buffers.from_app.drain(..n);
            left -= n as u64;
        }
        self.body_left = Some(0);
        buffers.replay.clear();
        buffers.replay.extend_from_slice(&buffers.out);
        self.kept = true;
        Ok(true)
    }

    fn rewind(&mut self, discarded: Option<Answer>) -> bool {
        let buffers = &mut *self.buffers;
        if let Some(Answer { head, peer }) = discarded {
            // A response read whole leaves its connection fit for the next request.
            if head.body_done && head.reusable && buffers.from_peer.is_empty() {
                self.context
                    .upstreams
                    .return_idle_stream(peer.addr, peer.identity, peer.stream);
            }
            buffers.from_peer.clear();
        }
        self.restore_kept();
        self.whole()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Exchange<'_, S> {
    /// Puts the kept copy of the request back in `buffers.out`, to be sent again. Without one
    /// the request is still whole there unless its body went straight to the peer.
    fn restore_kept(&mut self) {
        if self.kept {
            self.buffers.out.clear();
            self.buffers.out.extend_from_slice(&self.buffers.replay);
        }
    }

    /// Whether the whole request can be sent again: kept, or all of it in `buffers.out`.
    fn whole(&self) -> bool {
        self.kept || !self.streamed
    }

    /// Takes the request out of the read buffer (once): its head and the body bytes already
    /// read go to `buffers.out`, after the head the parse wrote there; what follows them is the
    /// next request's. Returns the body bytes still to read from the application.
    pub(super) fn consume_head(&mut self) -> u64 {
        if let Some(left) = self.body_left {
            return left;
        }
        let buffers = &mut *self.buffers;
        let in_buffer = (buffers.from_app.len() - self.head_len).min(self.body_len as usize);
        let sent = self.head_len + in_buffer;
        buffers
            .out
            .extend_from_slice(&buffers.from_app[self.head_len..sent]);
        buffers.from_app.drain(..sent);
        let left = self.body_len - in_buffer as u64;
        self.body_left = Some(left);
        left
    }

    /// Passes the response whose head is in `buffers.out` on to the application, its body as
    /// it comes; `Ok(keep_alive)` once it went whole.
    pub(super) async fn pass_on(&mut self, answer: Answer) -> Result<bool, Failure> {
        let Answer { mut head, mut peer } = answer;
        let buffers = &mut *self.buffers;
        self.client
            .write_all(&buffers.out)
            .await
            .map_err(|_| Failure::ClientGone)?;
        while !head.body_done {
            if buffers.from_peer.is_empty() {
                match read_more(&mut peer.stream, &mut buffers.from_peer).await {
                    Ok(0) if head.framing == Framing::UntilClose => break,
                    Ok(0) | Err(_) => return Err(Failure::ClientGone),
                    Ok(_) => {}
                }
            }
            let (take, done) = head
                .body_part(&buffers.from_peer)
                .map_err(|_| Failure::ClientGone)?;
            self.client
                .write_all(&buffers.from_peer[..take])
                .await
                .map_err(|_| Failure::ClientGone)?;
            buffers.from_peer.drain(..take);
            head.body_done = done;
        }
        // A TLS client (inbound) may hold the last records back when its socket was full.
        self.client.flush().await.map_err(|_| Failure::ClientGone)?;
        // Anything the peer sent past the response is a protocol error: that connection ends.
        // At the end of the pod nothing is pooled: the application is stopping, and a pooled
        // connection it closes meanwhile could take a request that was never processed.
        if head.reusable && buffers.from_peer.is_empty() && !self.context.drain.is_draining() {
            self.context
                .upstreams
                .return_idle_stream(peer.addr, peer.identity, peer.stream);
        }
        buffers.from_peer.clear();
        Ok(!head.close)
    }

    /// Sends the request (`buffers.out`, then the rest of its body from the application) and
    /// reads the final response head, which it leaves in `buffers.out` with the body bytes that
    /// came with it. Interim (1xx) responses go to the application on the way; an application
    /// that goes away meanwhile fails it with [`Failure::ClientGone`].
    async fn send_and_read_head(&mut self, peer: &mut Peer) -> Result<Head, Attempt> {
        let app_gone = || Attempt::Failed(Failure::ClientGone);
        let no_answer =
            |e: std::io::Error, peer: &Peer| Attempt::NoAnswer(peer.error(e.into()), false);
        let buffers = &mut *self.buffers;
        let app = &mut *self.client;
        buffers.from_peer.clear();
        peer.stream
            .write_all(&buffers.out)
            .await
            .map_err(|e| no_answer(e, peer))?;
        let mut body_left = self.body_left.unwrap_or(0);
        // A body small enough to keep is kept whole in `out` as it goes (a copy, in a reused
        // buffer), so that the request can go to another endpoint when the peer's proxy says
        // its application never got it; a larger one streams through.
        let keep_copy = self.body_len <= REPLAY_BODY_LIMIT;
        self.streamed |= body_left > 0 && !keep_copy;
        while body_left > 0 {
            if buffers.from_app.is_empty() {
                match read_more(app, &mut buffers.from_app).await {
                    Ok(0) | Err(_) => return Err(app_gone()),
                    Ok(_) => {}
                }
            }
            let n = buffers.from_app.len().min(body_left as usize);
            peer.stream
                .write_all(&buffers.from_app[..n])
                .await
                .map_err(|e| no_answer(e, peer))?;
            if keep_copy {
                buffers.out.extend_from_slice(&buffers.from_app[..n]);
            }
            buffers.from_app.drain(..n);
            body_left -= n as u64;
            self.body_left = Some(body_left);
        }
        peer.stream.flush().await.map_err(|e| no_answer(e, peer))?;

        let mut answered = false;
        let mesh_peer = peer.identity.is_some();
        loop {
            let parsed = {
                let mut headers = [HEADER_SLOT; MAX_HEADERS];
                let response =
                    message::parse_response(&buffers.from_peer, &mut headers, self.to_head);
                if let Ok(Some(r)) = &response
                    && mesh_peer
                    && r.unprocessed()
                {
                    // The request is still in `out`: it may go to another endpoint.
                    let cause = ExchangeCause::Unprocessed("its application is not listening");
                    return Err(Attempt::Failed(peer.error(cause)));
                }
                response.map(|response| {
                    response.map(|r| {
                        // At the end of the pod, the client is told to go elsewhere.
                        let close = !self.keep_alive
                            || r.framing == Framing::UntilClose
                            || self.context.drain.is_draining();
                        buffers.out.clear();
                        r.encode(close, &mut buffers.out);
                        (
                            r.head_len,
                            Head {
                                status: r.status,
                                framing: r.framing,
                                body_sent: 0,
                                scanner: ChunkedScanner::default(),
                                body_done: false,
                                reusable: r.reusable,
                                close,
                            },
                        )
                    })
                })
            };
            match parsed {
                Ok(Some((head_len, mut head))) => {
                    let rest = &buffers.from_peer[head_len..];
                    let (take, done) = head.body_part(rest).map_err(|e| malformed(peer, e))?;
                    buffers.out.extend_from_slice(&rest[..take]);
                    head.body_done = done;
                    buffers.from_peer.drain(..head_len + take);
                    if !(100..200).contains(&head.status) {
                        return Ok(head);
                    }
                    // Interim: passed on at once; the final response follows.
                    answered = true;
                    if app.write_all(&buffers.out).await.is_err() || app.flush().await.is_err() {
                        return Err(app_gone());
                    }
                    continue;
                }
                Ok(None) => {}
                Err(bad) => return Err(malformed(peer, bad)),
            }
            let nothing_yet = !answered && buffers.from_peer.is_empty();
            // While the peer thinks, an application that closes its connection cancels the
            // request (its connection to the peer is dropped), as hyper's server does. Bytes it
            // sends meanwhile are its next requests' (kept up to a head's worth).
            let room = buffers.from_app.len() < MAX_HEAD_BYTES;
            let read = tokio::select! {
                biased;
                read = read_more(&mut peer.stream, &mut buffers.from_peer) => read,
                read = read_more(app, &mut buffers.from_app), if room => match read {
                    Ok(0) | Err(_) => return Err(app_gone()),
                    Ok(_) => continue,
                },
            };
            let closed = |when| peer.error(ExchangeCause::Closed(when));
            match read {
                Ok(0) if nothing_yet => {
                    return Err(Attempt::NoAnswer(closed("before responding"), true));
                }
                Ok(0) => return Err(Attempt::Failed(closed("before the response head ended"))),
                Ok(_) => {}
                Err(e) if nothing_yet => return Err(no_answer(e, peer)),
                Err(e) => return Err(Attempt::Failed(peer.error(e.into()))),
            }
        }
    }
}

/// Whether nothing listens on `addr` (a connection to it is refused) any more.
async fn stopped_listening(addr: SocketAddr) -> bool {
    let connect = tokio::net::TcpStream::connect(addr);
    matches!(
        tokio::time::timeout(Duration::from_millis(100), connect).await,
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

fn malformed(peer: &Peer, error: BadResponse) -> Attempt {
    Attempt::Failed(peer.error(ExchangeCause::Malformed(error.to_string())))
}
