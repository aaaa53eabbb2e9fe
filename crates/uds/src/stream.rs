//! [`AuthorityRepair`]: an I/O wrapper that runs the client's bytes through [`FrameRewriter`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::frame::FrameRewriter;

/// Size of the scratch buffer for bytes that go through the rewriter.
const SCRATCH_SIZE: usize = 16 * 1024;

/// Time a client has, from the moment its connection is wrapped, to send the complete header
/// block of its first request.
///
/// Past it, reads fail with [`io::ErrorKind::TimedOut`] and the HTTP/2 server closes the
/// connection, so a client that opens connections and sends nothing, or only the preface and
/// control frames, cannot hold them open.
// Limit: a client that connects ahead of its first call and stays silent for 10 s loses the
// connection too; gRPC clients reconnect on their next call.
pub const FIRST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);

/// A server-side connection whose client-to-server HTTP/2 stream gets `:authority: localhost`.
///
/// Reads return the client's bytes rewritten by [`FrameRewriter`]: frame payloads other than
/// header blocks are read straight into the caller's buffer, and header blocks are re-encoded.
/// Writes (server to client) go to the inner stream unchanged. After a rewrite error every
/// read fails with [`io::ErrorKind::InvalidData`], so the HTTP/2 server closes the connection.
/// Without a complete header block within [`FIRST_HEADERS_TIMEOUT`] of [`new`](Self::new),
/// every read fails with [`io::ErrorKind::TimedOut`] instead.
#[derive(Debug)]
pub struct AuthorityRepair<S> {
    inner: S,
    rewriter: FrameRewriter,
    scratch: Box<[u8]>,
    /// Rewritten bytes not yet returned to the reader, from `pending_pos` on.
    pending: Vec<u8>,
    pending_pos: usize,
    failure: Option<(io::ErrorKind, String)>,
    /// When the first header block is due; `None` once it arrived.
    first_headers_deadline: Option<Instant>,
    /// Timer for `first_headers_deadline`, created on the first read, inside the runtime.
    first_headers_timer: Option<Pin<Box<Sleep>>>,
}

impl<S> AuthorityRepair<S> {
    /// Wraps the server side of a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        Self::with_first_headers_timeout(inner, FIRST_HEADERS_TIMEOUT)
    }

    pub(crate) fn with_first_headers_timeout(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            rewriter: FrameRewriter::new(),
            scratch: vec![0; SCRATCH_SIZE].into_boxed_slice(),
            pending: Vec::new(),
            pending_pos: 0,
            failure: None,
            first_headers_deadline: Some(Instant::now() + timeout),
            first_headers_timer: None,
        }
    }

    /// Returns the wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Copies as many pending rewritten bytes as fit into `buf`.
    fn drain_pending(&mut self, buf: &mut ReadBuf<'_>) {
        let available = &self.pending[self.pending_pos..];
        let count = available.len().min(buf.remaining());
        buf.put_slice(&available[..count]);
        self.pending_pos += count;
        if self.pending_pos == self.pending.len() {
            self.pending.clear();
            self.pending_pos = 0;
        }
    }

    fn has_pending(&self) -> bool {
        self.pending_pos < self.pending.len()
    }

    fn failed(&self) -> io::Error {
        match &self.failure {
            Some((kind, message)) => io::Error::new(*kind, message.clone()),
            None => io::Error::from(io::ErrorKind::InvalidData),
        }
    }

    /// Fails the connection once the first header block is overdue. While it is outstanding,
    /// registers `cx` with the timer, so an idle connection is woken to fail.
    fn check_first_headers(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(deadline) = self.first_headers_deadline else {
            return Ok(());
        };
        if self.rewriter.header_block_seen() {
            self.first_headers_deadline = None;
            self.first_headers_timer = None;
            return Ok(());
        }
        let timer = self
            .first_headers_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        let message = "timed out waiting for the first HTTP/2 request header block";
        tracing::debug!("closing HTTP/2 connection: {message}");
        self.failure = Some((io::ErrorKind::TimedOut, message.to_owned()));
        Err(self.failed())
    }
}

impl<S: AsyncRead + Unpin> AuthorityRepair<S> {
    /// Reads a verbatim frame payload from the inner stream straight into `buf`.
    fn poll_forward(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        limit: usize,
    ) -> Poll<io::Result<()>> {
        let room = buf.initialize_unfilled_to(limit.min(buf.remaining()));
        let mut direct = ReadBuf::new(room);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut direct))?;
        let count = direct.filled().len();
        buf.advance(count);
        self.rewriter.skip_forwarded(count);
        Poll::Ready(Ok(()))
    }

    /// Reads into the scratch buffer and runs the bytes through the rewriter.
    ///
    /// Returns `Ok(false)` at end of input.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut scratch = ReadBuf::new(&mut self.scratch);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut scratch))?;
        let input = scratch.filled();
        if input.is_empty() {
            return Poll::Ready(Ok(false));
        }
        if let Err(err) = self.rewriter.push(input, &mut self.pending) {
            tracing::debug!(error = %err, "closing HTTP/2 connection after rewrite error");
            self.failure = Some((io::ErrorKind::InvalidData, err.to_string()));
            return Poll::Ready(Err(self.failed()));
        }
        Poll::Ready(Ok(true))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRepair<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failure.is_some() {
            return Poll::Ready(Err(this.failed()));
        }
        this.check_first_headers(cx)?;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.has_pending() {
                this.drain_pending(buf);
                return Poll::Ready(Ok(()));
            }
            let forward_len = this.rewriter.forward_len();
            if forward_len > 0 {
                return this.poll_forward(cx, buf, forward_len);
            }
            // A read that only completes a frame header or part of a header block produces
            // no output yet, so read again until there is output, end of input or Pending.
            if !ready!(this.poll_rewrite(cx))? {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn data_frame(payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len())
            .expect("small payload")
            .to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], 0x0, 0x0, 0, 0, 0, 1];
        frame.extend_from_slice(payload);
        frame
    }

    #[tokio::test]
    async fn forwards_data_frames_unchanged() {
        let (mut client, server) = duplex(1024);
        let mut input = PREFACE.to_vec();
        input.extend(data_frame(&[7; 3000]));
        input.extend(data_frame(b"tail"));
        let expected = input.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&input).await.expect("write");
            client.shutdown().await.expect("shutdown");
        });

        let mut repaired = AuthorityRepair::new(server);
        let mut output = Vec::new();
        repaired.read_to_end(&mut output).await.expect("read");
        writer.await.expect("writer task");
        assert_eq!(output, expected);
    }

    #[tokio::test]
    async fn rewrites_authority_in_stream() {
        let (mut client, server) = duplex(64);
        let mut block = vec![0x82, 0x86, 0x84, 0x41, 15];
        block.extend_from_slice(b"%2Ftmp%2Fa.sock");
        let mut input = PREFACE.to_vec();
        let len = u8::try_from(block.len()).expect("small block");
        input.extend([0, 0, len, 0x1, 0x5, 0, 0, 0, 1]);
        input.extend(&block);
        tokio::spawn(async move {
            client.write_all(&input).await.expect("write");
            client.shutdown().await.expect("shutdown");
        });

        let mut output = Vec::new();
        AuthorityRepair::new(server)
            .read_to_end(&mut output)
            .await
            .expect("read");
        let fields = loona_hpack::Decoder::new()
            .decode(&output[PREFACE.len() + 9..])
            .expect("must decode");
        assert!(fields.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
        assert!(!output.windows(5).any(|w| w == b"%2Ftm"));
    }

    #[tokio::test]
    async fn malformed_block_fails_reads() {
        let (mut client, server) = duplex(1024);
        let mut input = PREFACE.to_vec();
        input.extend([0, 0, 1, 0x1, 0x4, 0, 0, 0, 1, 0x80 | 70]);
        client.write_all(&input).await.expect("write");

        let mut repaired = AuthorityRepair::new(server);
        let mut output = Vec::new();
        let err = repaired
            .read_to_end(&mut output)
            .await
            .expect_err("must fail");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut more = [0; 8];
        let again = repaired
            .read(&mut more)
            .await
            .expect_err("must keep failing");
        assert_eq!(again.kind(), io::ErrorKind::InvalidData);
    }

    fn request_headers(stream_id: u8) -> Vec<u8> {
        let block = [0x83, 0x86, 0x84, 0x41, 1, b'a'];
        let len = u8::try_from(block.len()).expect("small block");
        let mut frame = vec![0, 0, len, 0x1, 0x4, 0, 0, 0, stream_id];
        frame.extend_from_slice(&block);
        frame
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (mut client, server) = duplex(1024);
        // Preface and a SETTINGS frame, but never a request.
        let mut input = PREFACE.to_vec();
        input.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        client.write_all(&input).await.expect("write");

        let timeout = Duration::from_millis(200);
        let mut repaired = AuthorityRepair::with_first_headers_timeout(server, timeout);
        let started = std::time::Instant::now();
        let mut output = Vec::new();
        let err = tokio::time::timeout(Duration::from_secs(5), repaired.read_to_end(&mut output))
            .await
            .expect("the read must fail before the test's own timeout")
            .expect_err("must time out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= timeout);
        assert_eq!(output, input, "bytes before the deadline still pass");
        let again = repaired
            .read(&mut [0; 8])
            .await
            .expect_err("must keep failing");
        assert_eq!(again.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn client_with_request_outlives_timeout() {
        let (mut client, server) = duplex(1024);
        let mut first = PREFACE.to_vec();
        first.extend(request_headers(1));
        client.write_all(&first).await.expect("write");

        let timeout = Duration::from_millis(100);
        let mut repaired = AuthorityRepair::with_first_headers_timeout(server, timeout);
        let mut expected = Vec::new();
        FrameRewriter::new()
            .push(&first, &mut expected)
            .expect("valid request");
        let mut output = vec![0; expected.len()];
        repaired.read_exact(&mut output).await.expect("read");
        assert_eq!(output, expected);

        tokio::time::sleep(timeout * 3).await;
        let later = data_frame(b"late");
        client.write_all(&later).await.expect("write");
        let mut received = vec![0; later.len()];
        repaired
            .read_exact(&mut received)
            .await
            .expect("a connection past its first request must not time out");
        assert_eq!(received, later);
    }

    #[tokio::test]
    async fn default_first_headers_timeout_is_armed() {
        let (_client, server) = duplex(64);
        let mut repaired = AuthorityRepair::new(server);
        let mut buf = [0; 8];
        let pending = tokio::time::timeout(Duration::from_millis(50), repaired.read(&mut buf));
        assert!(
            pending.await.is_err(),
            "a silent client is not cut off early"
        );
        let deadline = repaired.first_headers_deadline.expect("deadline armed");
        let remaining = deadline - Instant::now();
        assert!(remaining > FIRST_HEADERS_TIMEOUT - Duration::from_secs(1));
        assert!(remaining <= FIRST_HEADERS_TIMEOUT);
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (mut client, server) = duplex(1024);
        let mut repaired = AuthorityRepair::new(server);
        repaired.write_all(b"server bytes").await.expect("write");
        let mut received = [0; 12];
        client.read_exact(&mut received).await.expect("read");
        assert_eq!(&received, b"server bytes");
    }
}
