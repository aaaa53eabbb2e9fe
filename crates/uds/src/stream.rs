//! [`AuthorityRepair`]: an I/O wrapper that runs the client's bytes through [`FrameRewriter`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::frame::FrameRewriter;

/// Size of the scratch buffer for bytes that go through the rewriter.
const SCRATCH_SIZE: usize = 16 * 1024;

/// A server-side connection whose client-to-server HTTP/2 stream gets `:authority: localhost`.
///
/// Reads return the client's bytes rewritten by [`FrameRewriter`]: frame payloads other than
/// header blocks are read straight into the caller's buffer, and header blocks are re-encoded.
/// Writes (server to client) go to the inner stream unchanged. After a rewrite error every
/// read fails with [`io::ErrorKind::InvalidData`], so the HTTP/2 server closes the connection.
#[derive(Debug)]
pub struct AuthorityRepair<S> {
    inner: S,
    rewriter: FrameRewriter,
    scratch: Box<[u8]>,
    /// Rewritten bytes not yet returned to the reader, from `pending_pos` on.
    pending: Vec<u8>,
    pending_pos: usize,
    failure: Option<String>,
}

impl<S> AuthorityRepair<S> {
    /// Wraps the server side of a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: FrameRewriter::new(),
            scratch: vec![0; SCRATCH_SIZE].into_boxed_slice(),
            pending: Vec::new(),
            pending_pos: 0,
            failure: None,
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
        let message = self.failure.clone().unwrap_or_default();
        io::Error::new(io::ErrorKind::InvalidData, message)
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
            self.failure = Some(err.to_string());
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
