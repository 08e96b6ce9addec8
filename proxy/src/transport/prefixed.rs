//! A stream that first replays bytes already read from it (the ones protocol detection
//! consumed), and counts the bytes that pass in each direction.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, preceded by `prefix` on the read side.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    position: usize,
    inner: S,
    /// Bytes read (prefix included).
    pub received: u64,
    /// Bytes written.
    pub sent: u64,
}

impl<S> Prefixed<S> {
    /// Wraps `inner`, replaying `prefix` first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            position: 0,
            inner,
            received: 0,
            sent: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.position < this.prefix.len() {
            let rest = &this.prefix[this.position..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.position += n;
            this.received += n as u64;
            if this.position == this.prefix.len() {
                this.prefix = Vec::new();
                this.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.received += (buf.filled().len() - before) as u64;
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    super::write_through_inner!(|_: &mut Self| {});
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn replays_the_prefix_then_reads_on_and_counts_both_ways() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = Prefixed::new(b"GET ".to_vec(), near);
        far.write_all(b"/ HTTP/1.1").await.expect("write");
        drop(far);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "GET / HTTP/1.1");
        assert_eq!(stream.received, 14);
    }
}
