//! Byte-level plumbing shared by both listeners: protocol detection ([`detect`]), a stream that
//! replays what detection read ([`prefixed`]), and the deadlines and counted copying of
//! connections ([`deadline`]).

pub mod deadline;
pub mod detect;
pub mod prefixed;

/// The write side of a wrapper whose stream is its `inner` field and which counts what it
/// writes in its `sent` field: `poll_write` through `inner` (then `$after(this, n)` for each
/// write that took bytes), `poll_flush` and `poll_shutdown` of `inner`.
macro_rules! write_through_inner {
    ($after:expr) => {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
            if let std::task::Poll::Ready(Ok(n)) = polled
                && n > 0
            {
                this.sent += n as u64;
                $after(this);
            }
            polled
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    };
}
pub(crate) use write_through_inner;
