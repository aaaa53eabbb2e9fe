//! The client-to-server HTTP/2 byte stream rewriter behind [`AuthorityRepair`].
//!
//! [`FrameRewriter`] reads the connection preface and then frame by frame. Every frame except
//! HEADERS and CONTINUATION is forwarded byte for byte as it arrives, so DATA payloads are never
//! buffered. A header block (HEADERS plus any CONTINUATION frames up to END_HEADERS) is
//! buffered whole, decoded with the client's HPACK state, and written out again with
//! `:authority: localhost` by the table-free encoder in `hpack`.
//!
//! Invariant: the decoder sees every header block the client sent, in order, so its dynamic
//! table mirrors the client's encoder; the output never refers to the server's dynamic table.
//!
//! [`AuthorityRepair`]: crate::AuthorityRepair

use loona_hpack::Decoder;
use loona_hpack::decoder::DecoderError;

use crate::hpack::encode_field;

/// Maximum size of a header block, received or re-encoded, in bytes.
///
/// The rewriter buffers a whole block per connection, so this bounds the memory a local
/// client can pin per connection. A larger block fails the connection with
/// [`RewriteError::HeaderBlockTooLarge`].
// Limit: gRPC clients send a few KiB of metadata and commonly cap it at 8 to 16 KiB, so a
// legitimate client stays far below 64 KiB; h2's own 16 MiB header list limit never applies.
pub const MAX_HEADER_BLOCK_SIZE: usize = 64 * 1024;

/// Maximum dynamic table size a client may select with a table size update, in bytes.
// Limit: h2 (as tonic configures it) never advertises SETTINGS_HEADER_TABLE_SIZE, so clients
// stay at the default 4096. A server configured above 64 KiB would see its clients' larger
// table size updates rejected here.
pub const MAX_DYNAMIC_TABLE_SIZE: usize = 64 * 1024;

/// Value written into every `:authority` pseudo-header.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// Largest frame payload written; every peer must accept it (the minimum
/// SETTINGS_MAX_FRAME_SIZE of RFC 9113).
const MAX_OUTPUT_PAYLOAD: usize = 16_384;
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;

/// Errors that make the client-to-server stream unusable; the connection must be closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RewriteError {
    /// The first 24 bytes are not the HTTP/2 client connection preface.
    #[error("invalid HTTP/2 connection preface: byte {offset} is {byte:#04x}")]
    InvalidPreface {
        /// Offset of the first wrong byte.
        offset: usize,
        /// The byte received there.
        byte: u8,
    },
    /// A header block, received or re-encoded, is larger than [`MAX_HEADER_BLOCK_SIZE`].
    #[error("header block on stream {stream_id} exceeds {MAX_HEADER_BLOCK_SIZE} bytes")]
    HeaderBlockTooLarge {
        /// Stream the block belongs to.
        stream_id: u32,
    },
    /// A padded HEADERS frame is too short for its pad length and priority fields.
    #[error("invalid HEADERS frame on stream {stream_id}: payload of {payload_len} bytes")]
    InvalidHeadersPayload {
        /// Stream the frame belongs to.
        stream_id: u32,
        /// Length of the frame payload.
        payload_len: usize,
    },
    /// A frame other than CONTINUATION of the same stream arrived inside a header block.
    #[error(
        "frame type {frame_type:#04x} on stream {stream_id} interrupts the header block \
         of stream {block_stream_id}"
    )]
    InterruptedHeaderBlock {
        /// Type of the offending frame.
        frame_type: u8,
        /// Stream of the offending frame.
        stream_id: u32,
        /// Stream whose header block is open.
        block_stream_id: u32,
    },
    /// A CONTINUATION frame arrived without an open header block.
    #[error("CONTINUATION frame on stream {stream_id} without an open header block")]
    UnexpectedContinuation {
        /// Stream of the frame.
        stream_id: u32,
    },
    /// The header block is not valid HPACK for the decoder's state.
    #[error("invalid HPACK header block on stream {stream_id}: {source}")]
    Hpack {
        /// Stream the block belongs to.
        stream_id: u32,
        /// What the decoder rejected.
        #[source]
        source: DecoderError,
    },
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug)]
struct FrameHead {
    length: usize,
    frame_type: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHead {
    fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> Self {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        let stream_id = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        Self {
            length: length as usize,
            frame_type: bytes[3],
            flags: bytes[4],
            stream_id: stream_id & 0x7fff_ffff,
        }
    }
}

/// Where the rewriter is in the byte stream.
#[derive(Debug)]
enum State {
    /// Inside the connection preface, `matched` bytes of it seen.
    Preface { matched: usize },
    /// Collecting a 9-byte frame header.
    FrameHead,
    /// Forwarding the rest of a frame payload unchanged.
    Forward { remaining: usize },
    /// Buffering the payload of a HEADERS or CONTINUATION frame.
    HeaderPayload { head: FrameHead, remaining: usize },
}

/// A header block being assembled from HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

/// Rewrites the `:authority` of every header block in a client-to-server HTTP/2 byte stream.
///
/// Feed it the bytes in arrival order with [`push`](Self::push); it appends the bytes to hand
/// to the server. After an error the stream is unusable and the connection must be closed.
pub struct FrameRewriter {
    state: State,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    payload: Vec<u8>,
    block: Option<OpenBlock>,
    decoder: Decoder<'static>,
    header_block_seen: bool,
}

impl Default for FrameRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for FrameRewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameRewriter")
            .field("state", &self.state)
            .field("open_block", &self.block.as_ref().map(|b| b.stream_id))
            .finish_non_exhaustive()
    }
}

impl FrameRewriter {
    /// Creates a rewriter expecting the client connection preface.
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(MAX_DYNAMIC_TABLE_SIZE);
        Self {
            state: State::Preface { matched: 0 },
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            payload: Vec::new(),
            block: None,
            decoder,
            header_block_seen: false,
        }
    }

    /// Consumes `input` and appends the rewritten bytes to `out`.
    ///
    /// Bytes of an incomplete frame header or header block stay buffered until later input
    /// completes them.
    ///
    /// # Errors
    ///
    /// Returns a [`RewriteError`] when the stream is not valid HTTP/2 framing or HPACK, or a
    /// header block exceeds [`MAX_HEADER_BLOCK_SIZE`].
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while !input.is_empty() {
            let used = match self.state {
                State::Preface { matched } => self.read_preface(matched, input, out)?,
                State::FrameHead => self.read_frame_head(input, out)?,
                State::Forward { remaining } => {
                    let used = remaining.min(input.len());
                    out.extend_from_slice(&input[..used]);
                    self.skip_forwarded(used);
                    used
                }
                State::HeaderPayload { head, remaining } => {
                    self.read_header_payload(head, remaining, input, out)?
                }
            };
            input = &input[used..];
        }
        Ok(())
    }

    /// Returns how many of the next input bytes are forwarded unchanged.
    ///
    /// A caller may copy up to that many bytes to the server itself, without `push`, and then
    /// report them with [`skip_forwarded`](Self::skip_forwarded).
    pub fn forward_len(&self) -> usize {
        match self.state {
            State::Forward { remaining } => remaining,
            _ => 0,
        }
    }

    /// Records that the caller forwarded `count` bytes itself; `count` must not exceed
    /// [`forward_len`](Self::forward_len).
    pub fn skip_forwarded(&mut self, count: usize) {
        if let State::Forward { remaining } = self.state {
            debug_assert!(count <= remaining, "skipped more bytes than the frame has");
            let remaining = remaining.saturating_sub(count);
            self.state = if remaining == 0 {
                State::FrameHead
            } else {
                State::Forward { remaining }
            };
        }
    }

    /// Returns whether a complete header block has been rewritten.
    pub(crate) fn header_block_seen(&self) -> bool {
        self.header_block_seen
    }

    fn read_preface(
        &mut self,
        matched: usize,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, RewriteError> {
        let used = (PREFACE.len() - matched).min(input.len());
        for (i, &byte) in input[..used].iter().enumerate() {
            if byte != PREFACE[matched + i] {
                let offset = matched + i;
                return Err(RewriteError::InvalidPreface { offset, byte });
            }
        }
        out.extend_from_slice(&input[..used]);
        let matched = matched + used;
        self.state = if matched == PREFACE.len() {
            State::FrameHead
        } else {
            State::Preface { matched }
        };
        Ok(used)
    }

    fn read_frame_head(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, RewriteError> {
        let used = (FRAME_HEADER_LEN - self.head_len).min(input.len());
        self.head[self.head_len..self.head_len + used].copy_from_slice(&input[..used]);
        self.head_len += used;
        if self.head_len == FRAME_HEADER_LEN {
            self.head_len = 0;
            self.start_frame(FrameHead::parse(&self.head), out)?;
        }
        Ok(used)
    }

    fn start_frame(&mut self, head: FrameHead, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        self.check_block_order(head)?;
        let is_header_frame = matches!(head.frame_type, TYPE_HEADERS | TYPE_CONTINUATION);
        if !is_header_frame {
            out.extend_from_slice(&self.head);
            self.state = State::FrameHead;
            if head.length > 0 {
                self.state = State::Forward {
                    remaining: head.length,
                };
            }
            return Ok(());
        }
        let buffered = self.block.as_ref().map_or(0, |b| b.fragment.len());
        if buffered + head.length > MAX_HEADER_BLOCK_SIZE {
            let stream_id = head.stream_id;
            return Err(RewriteError::HeaderBlockTooLarge { stream_id });
        }
        self.payload.clear();
        if head.length == 0 {
            return self.finish_header_frame(head, out);
        }
        self.state = State::HeaderPayload {
            head,
            remaining: head.length,
        };
        Ok(())
    }

    /// Rejects any frame other than a CONTINUATION of the open block, and a CONTINUATION
    /// without one (RFC 9113 section 6.10).
    fn check_block_order(&self, head: FrameHead) -> Result<(), RewriteError> {
        match (&self.block, head.frame_type) {
            (Some(block), frame_type)
                if frame_type != TYPE_CONTINUATION || head.stream_id != block.stream_id =>
            {
                Err(RewriteError::InterruptedHeaderBlock {
                    frame_type,
                    stream_id: head.stream_id,
                    block_stream_id: block.stream_id,
                })
            }
            (None, TYPE_CONTINUATION) => Err(RewriteError::UnexpectedContinuation {
                stream_id: head.stream_id,
            }),
            _ => Ok(()),
        }
    }

    fn read_header_payload(
        &mut self,
        head: FrameHead,
        remaining: usize,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, RewriteError> {
        let used = remaining.min(input.len());
        self.payload.extend_from_slice(&input[..used]);
        if used == remaining {
            self.finish_header_frame(head, out)?;
        } else {
            self.state = State::HeaderPayload {
                head,
                remaining: remaining - used,
            };
        }
        Ok(used)
    }

    fn finish_header_frame(
        &mut self,
        head: FrameHead,
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        self.state = State::FrameHead;
        match self.block.as_mut() {
            Some(block) => block.fragment.extend_from_slice(&self.payload),
            None => self.block = Some(open_block(head, &self.payload)?),
        }
        if head.flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        match self.block.take() {
            Some(block) => self.emit_block(&block, out),
            None => Ok(()),
        }
    }

    /// Decodes a complete header block and writes it out re-encoded.
    fn emit_block(&mut self, block: &OpenBlock, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let stream_id = block.stream_id;
        let mut encoded = Vec::with_capacity(block.fragment.len() + 16);
        let mut too_large = false;
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            // Decoding must go on to the end even past the limit, because every field with
            // incremental indexing still updates the dynamic table the next block relies on.
            if too_large {
                return;
            }
            let value = if *name == b":authority"[..] {
                REPLACEMENT_AUTHORITY
            } else {
                &value
            };
            encode_field(&name, value, &mut encoded);
            too_large = encoded.len() > MAX_HEADER_BLOCK_SIZE;
        });
        decoded.map_err(|source| RewriteError::Hpack { stream_id, source })?;
        if too_large {
            return Err(RewriteError::HeaderBlockTooLarge { stream_id });
        }
        tracing::trace!(stream_id, len = encoded.len(), "rewrote header block");
        write_header_frames(block, &encoded, out);
        self.header_block_seen = true;
        Ok(())
    }
}

/// Opens a header block from a HEADERS payload: strips the padding, keeps the priority.
fn open_block(head: FrameHead, payload: &[u8]) -> Result<OpenBlock, RewriteError> {
    let invalid = || RewriteError::InvalidHeadersPayload {
        stream_id: head.stream_id,
        payload_len: payload.len(),
    };
    let mut start = 0;
    let mut pad_len = 0;
    if head.flags & FLAG_PADDED != 0 {
        pad_len = usize::from(*payload.first().ok_or_else(invalid)?);
        start = 1;
    }
    let mut priority = None;
    if head.flags & FLAG_PRIORITY != 0 {
        let fields = payload
            .get(start..start + PRIORITY_LEN)
            .ok_or_else(invalid)?;
        priority = Some(fields.try_into().map_err(|_| invalid())?);
        start += PRIORITY_LEN;
    }
    let end = payload.len().checked_sub(pad_len).ok_or_else(invalid)?;
    let fragment = payload.get(start..end).ok_or_else(invalid)?;
    Ok(OpenBlock {
        stream_id: head.stream_id,
        end_stream: head.flags & FLAG_END_STREAM != 0,
        priority,
        fragment: fragment.to_vec(),
    })
}

/// Writes `encoded` as one HEADERS frame and as many CONTINUATION frames as needed.
fn write_header_frames(block: &OpenBlock, encoded: &[u8], out: &mut Vec<u8>) {
    let priority_len = block.priority.map_or(0, |_| PRIORITY_LEN);
    let first_len = encoded.len().min(MAX_OUTPUT_PAYLOAD - priority_len);
    let (first, rest) = encoded.split_at(first_len);

    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let head = FrameHead {
        length: priority_len + first.len(),
        frame_type: TYPE_HEADERS,
        flags,
        stream_id: block.stream_id,
    };
    write_frame_head(head, out);
    if let Some(priority) = &block.priority {
        out.extend_from_slice(priority);
    }
    out.extend_from_slice(first);

    let mut chunks = rest.chunks(MAX_OUTPUT_PAYLOAD).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let head = FrameHead {
            length: chunk.len(),
            frame_type: TYPE_CONTINUATION,
            flags: if last { FLAG_END_HEADERS } else { 0 },
            stream_id: block.stream_id,
        };
        write_frame_head(head, out);
        out.extend_from_slice(chunk);
    }
}

fn write_frame_head(head: FrameHead, out: &mut Vec<u8>) {
    // Output payloads are at most MAX_OUTPUT_PAYLOAD bytes, so the length fits in 24 bits.
    let length = u32::try_from(head.length).expect("output frame length must fit in 24 bits");
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(head.frame_type);
    out.push(head.flags);
    out.extend_from_slice(&head.stream_id.to_be_bytes());
}

#[cfg(test)]
mod tests;
