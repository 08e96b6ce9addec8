//! One request on the HTTP/1.1 fast path ([`super::serve`]): send its head and body to a peer
//! (pooled or new, replayed once when a pooled connection closed under an idempotent request),
//! read the response head, pass the response on, and give the connection back to the pool.

use super::*;

/// How a request failed.
pub(super) enum Failed {
    /// Nothing was sent to the application yet: it gets the failure's response.
    Answer(Failure),
    /// A response was under way, or the application went away: the connection closes.
    Broken,
}

/// Why an attempt at sending a request and reading its response head failed.
enum Attempt {
    /// The peer answered nothing: the request may go again on a new connection.
    NoAnswer(Failure),
    /// The exchange failed otherwise, before the final response head.
    Failed(Failure),
    /// The application's connection failed.
    AppGone,
}

/// One request on the fast path.
pub(super) struct Exchange<'a> {
    pub(super) context: &'a Arc<Context>,
    pub(super) table: &'a Table,
    /// Request body bytes still to read from the application.
    pub(super) body_left: u64,
    pub(super) keep_alive: bool,
    pub(super) replayable: bool,
    pub(super) to_head: bool,
    pub(super) started: Instant,
}

/// A peer connection in use, with the identity it was verified as.
struct Peer {
    stream: PeerStream,
    identity: Option<String>,
    addr: SocketAddr,
}

impl Peer {
    fn error(&self, message: impl std::fmt::Display) -> Failure {
        Failure::Upstream(UpstreamError::Exchange {
            addr: self.addr,
            message: message.to_string(),
        })
    }
}

/// A final response head ready to go to the application (in `Buffers::out`).
struct Head {
    status: u16,
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

impl Exchange<'_> {
    /// Forwards the request in `buffers.out` (and the rest of its body) and its response;
    /// `Ok(keep_alive)` once the response went whole to the application.
    pub(super) async fn run(
        &mut self,
        plan: Result<Plan<'_>, Failure>,
        app: &mut TcpStream,
        buffers: &mut Buffers,
    ) -> Result<bool, Failed> {
        let plan = plan.map_err(Failed::Answer)?;
        http::inject(plan.fault).await.map_err(Failed::Answer)?;
        let (endpoint, connect_timeout, stats) =
            http::choose_endpoint(self.context, self.table, plan.backend)
                .map_err(Failed::Answer)?;
        let addr = SocketAddr::new(endpoint.ip, endpoint.port);
        let identity = endpoint.identity.as_deref();
        let in_flight = stats.start();

        let upstreams = &self.context.upstreams;
        // The request timeout runs from here: connecting, sending, and the response head.
        let deadline = plan
            .timeout_ms
            .map(|ms| (tokio::time::Instant::now() + Duration::from_millis(ms), ms));
        // Opening a connection is boxed: its future (TCP connect, TLS handshake) is large.
        let connect = || {
            within(deadline, async {
                Box::pin(upstreams.connect(addr, identity, connect_timeout))
                    .await
                    .map_err(|e| Attempt::Failed(e.into()))
            })
        };
        let (mut peer, idle_for) = match upstreams.take_idle_stream(addr, identity) {
            Some(idle) => (
                Peer {
                    stream: idle.stream,
                    identity: idle.identity,
                    addr,
                },
                idle.idle_for,
            ),
            None => (
                Peer {
                    stream: connect().await?,
                    identity: identity.map(str::to_string),
                    addr,
                },
                Duration::ZERO,
            ),
        };
        // A pooled connection idle a while may have been closed by its peer just now (its FIN
        // not read yet): a request that can safely go twice goes once more on a new one.
        let mut may_replay = self.replayable && idle_for >= REPLAY_AFTER_IDLE;
        let mut head = loop {
            match within(deadline, self.send_and_read_head(&mut peer, app, buffers)).await {
                Ok(head) => break head,
                Err(Attempt::NoAnswer(_)) if may_replay => {
                    may_replay = false;
                    peer.stream = connect().await?;
                }
                Err(failed) => return Err(failed.into()),
            }
        };
        drop(in_flight);
        self.context
            .metrics
            .response(head.status, self.started.elapsed());
        app.write_all(&buffers.out)
            .await
            .map_err(|_| Failed::Broken)?;

        while !head.body_done {
            if buffers.from_peer.is_empty() {
                match read_more(&mut peer.stream, &mut buffers.from_peer).await {
                    Ok(0) if head.framing == Framing::UntilClose => break,
                    Ok(0) | Err(_) => return Err(Failed::Broken),
                    Ok(_) => {}
                }
            }
            let (take, done) = head
                .body_part(&buffers.from_peer)
                .map_err(|_| Failed::Broken)?;
            app.write_all(&buffers.from_peer[..take])
                .await
                .map_err(|_| Failed::Broken)?;
            buffers.from_peer.drain(..take);
            head.body_done = done;
        }
        // Anything the peer sent past the response is a protocol error: that connection ends.
        if head.reusable && buffers.from_peer.is_empty() {
            upstreams.return_idle_stream(addr, peer.identity, peer.stream);
        }
        buffers.from_peer.clear();
        Ok(!head.close)
    }

    /// Sends the request (`buffers.out`, then the rest of its body from the application) and
    /// reads the final response head, which it leaves in `buffers.out` with the body bytes that
    /// came with it. Interim (1xx) responses go to the application on the way.
    async fn send_and_read_head(
        &mut self,
        peer: &mut Peer,
        app: &mut TcpStream,
        buffers: &mut Buffers,
    ) -> Result<Head, Attempt> {
        let no_answer = |e: std::io::Error, peer: &Peer| Attempt::NoAnswer(peer.error(e));
        buffers.from_peer.clear();
        peer.stream
            .write_all(&buffers.out)
            .await
            .map_err(|e| no_answer(e, peer))?;
        while self.body_left > 0 {
            if buffers.from_app.is_empty() {
                match read_more(app, &mut buffers.from_app).await {
                    Ok(0) | Err(_) => return Err(Attempt::AppGone),
                    Ok(_) => {}
                }
            }
            let n = buffers.from_app.len().min(self.body_left as usize);
            peer.stream
                .write_all(&buffers.from_app[..n])
                .await
                .map_err(|e| no_answer(e, peer))?;
            buffers.from_app.drain(..n);
            self.body_left -= n as u64;
        }
        peer.stream.flush().await.map_err(|e| no_answer(e, peer))?;

        let mut answered = false;
        loop {
            let parsed = {
                let mut headers = [HEADER_SLOT; MAX_HEADERS];
                h1_message::parse_response(&buffers.from_peer, &mut headers, self.to_head).map(
                    |response| {
                        response.map(|r| {
                            let close = !self.keep_alive || r.framing == Framing::UntilClose;
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
                    },
                )
            };
            match parsed {
                Ok(Some((head_len, mut head))) => {
                    let rest = &buffers.from_peer[head_len..];
                    let (take, done) = head.body_part(rest).map_err(|e| peer_failed(peer, e))?;
                    buffers.out.extend_from_slice(&rest[..take]);
                    head.body_done = done;
                    buffers.from_peer.drain(..head_len + take);
                    if !(100..200).contains(&head.status) {
                        return Ok(head);
                    }
                    // Interim: passed on at once; the final response follows.
                    answered = true;
                    if app.write_all(&buffers.out).await.is_err() {
                        return Err(Attempt::AppGone);
                    }
                    continue;
                }
                Ok(None) => {}
                Err(bad) => return Err(peer_failed(peer, bad)),
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
                    Ok(0) | Err(_) => return Err(Attempt::AppGone),
                    Ok(_) => continue,
                },
            };
            match read {
                Ok(0) if nothing_yet => {
                    return Err(Attempt::NoAnswer(peer.error("closed before responding")));
                }
                Ok(0) => return Err(peer_failed(peer, "closed before the response head ended")),
                Ok(_) => {}
                Err(e) if nothing_yet => return Err(no_answer(e, peer)),
                Err(e) => return Err(peer_failed(peer, e)),
            }
        }
    }
}

impl From<Attempt> for Failed {
    fn from(attempt: Attempt) -> Self {
        match attempt {
            Attempt::NoAnswer(failure) | Attempt::Failed(failure) => Self::Answer(failure),
            Attempt::AppGone => Self::Broken,
        }
    }
}

/// `future`, or a timeout failure at `deadline` (with its milliseconds) if there is one.
async fn within<T>(
    deadline: Option<(tokio::time::Instant, u64)>,
    future: impl Future<Output = Result<T, Attempt>>,
) -> Result<T, Attempt> {
    match deadline {
        Some((at, ms)) => tokio::time::timeout_at(at, future)
            .await
            .unwrap_or(Err(Attempt::Failed(Failure::Timeout(ms)))),
        None => future.await,
    }
}

fn peer_failed(peer: &Peer, error: impl std::fmt::Display) -> Attempt {
    Attempt::Failed(peer.error(error))
}
