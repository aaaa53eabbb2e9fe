//! [`FrameRewriter`] on seeded random input: arbitrary bytes never panic, and valid client
//! streams come out with the same frames and header fields, `:authority` aside.
//!
//! The seeds are fixed, so every run checks the same cases; the fuzz target in `fuzz/`
//! explores further.

use loona_hpack::{Decoder, Encoder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use twid_uds::{FrameRewriter, REPLACEMENT_AUTHORITY, RewriteError};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CASES: usize = 10_000;
/// Largest frame payload the rewriter writes (RFC 9113 minimum SETTINGS_MAX_FRAME_SIZE).
const MAX_OUTPUT_PAYLOAD: usize = 16_384;

const TYPE_DATA: u8 = 0x0;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One unit of a client stream as the server should receive it.
#[derive(Debug, PartialEq)]
enum Expected {
    /// A frame other than HEADERS or CONTINUATION, byte for byte.
    Raw(Vec<u8>),
    /// A header block, compared by its decoded fields.
    Block {
        stream_id: u32,
        end_stream: bool,
        priority: Option<[u8; 5]>,
        fields: Fields,
    },
}

fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("payload length fits in u32");
    assert!(length < 1 << 24, "payload too large for one frame");
    let mut out = length.to_be_bytes()[1..].to_vec();
    out.push(frame_type);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rng.fill(&mut bytes[..]);
    bytes
}

fn random_name(rng: &mut StdRng) -> Vec<u8> {
    // Repeated names let the client's dynamic table refer to earlier blocks.
    const POOL: [&str; 8] = [
        ":method",
        ":path",
        ":scheme",
        "te",
        "content-type",
        "workload.spiffe.io",
        "grpc-timeout",
        "user-agent",
    ];
    if rng.random_bool(0.7) {
        POOL[rng.random_range(0..POOL.len())].as_bytes().to_vec()
    } else {
        let len = rng.random_range(1..16);
        (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect()
    }
}

fn random_value(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..200) {
        // Large enough that the re-encoded block needs CONTINUATION frames.
        0 => {
            let len = rng.random_range(10_000..40_000);
            random_bytes(rng, len)
        }
        1..=50 => Vec::new(),
        _ => {
            let len = rng.random_range(1..48);
            random_bytes(rng, len)
        }
    }
}

fn random_fields(rng: &mut StdRng) -> Fields {
    let mut fields = Vec::new();
    if rng.random_bool(0.8) {
        let authority = match rng.random_range(0..3) {
            0 => b"%2Ftmp%2Fagent.sock".to_vec(),
            1 => b"/run/spire/sockets/agent.sock".to_vec(),
            _ => random_value(rng),
        };
        fields.push((b":authority".to_vec(), authority));
    }
    for _ in 0..rng.random_range(0..10) {
        fields.push((random_name(rng), random_value(rng)));
    }
    fields
}

/// Splits `block` into one HEADERS and zero or more CONTINUATION frames.
fn header_frames(
    rng: &mut StdRng,
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
) -> Vec<u8> {
    let mut cuts: Vec<usize> = (0..rng.random_range(0..4))
        .map(|_| rng.random_range(0..=block.len()))
        .collect();
    cuts.push(block.len());
    cuts.sort_unstable();

    let mut out = Vec::new();
    let mut start = 0;
    for (index, &end) in cuts.iter().enumerate() {
        let fragment = &block[start..end];
        start = end;
        let last = index + 1 == cuts.len();
        let mut flags = if last { FLAG_END_HEADERS } else { 0 };
        if index > 0 {
            out.extend(frame(TYPE_CONTINUATION, flags, stream_id, fragment));
            continue;
        }
        let mut payload = Vec::new();
        let pad_len = rng.random_bool(0.3).then(|| rng.random_range(0..=255_u8));
        if let Some(pad_len) = pad_len {
            flags |= FLAG_PADDED;
            payload.push(pad_len);
        }
        if let Some(priority) = priority {
            flags |= FLAG_PRIORITY;
            payload.extend_from_slice(&priority);
        }
        if end_stream {
            flags |= FLAG_END_STREAM;
        }
        payload.extend_from_slice(fragment);
        payload.extend(std::iter::repeat_n(0, usize::from(pad_len.unwrap_or(0))));
        out.extend(frame(TYPE_HEADERS, flags, stream_id, &payload));
    }
    out
}

/// Builds a valid client stream and what the server should receive for it.
fn random_stream(rng: &mut StdRng) -> (Vec<u8>, Vec<Expected>) {
    let mut encoder = Encoder::new();
    let mut input = PREFACE.to_vec();
    let mut expected = Vec::new();
    for _ in 0..rng.random_range(0..8) {
        let stream_id = rng.random_range(0..1_u32 << 31);
        if rng.random_bool(0.5) {
            // DATA, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, an unknown type.
            const TYPES: [u8; 8] = [TYPE_DATA, 0x2, 0x3, 0x4, 0x6, 0x7, 0x8, 0xa];
            let frame_type = TYPES[rng.random_range(0..TYPES.len())];
            let len = if rng.random_bool(0.01) {
                rng.random_range(16_000..70_000)
            } else {
                rng.random_range(0..300)
            };
            let payload = random_bytes(rng, len);
            let bytes = frame(frame_type, rng.random(), stream_id, &payload);
            input.extend_from_slice(&bytes);
            expected.push(Expected::Raw(bytes));
            continue;
        }

        let fields = random_fields(rng);
        let block = encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
        let end_stream = rng.random_bool(0.3);
        let priority = rng.random_bool(0.2).then(|| {
            let mut priority = [0; 5];
            rng.fill(&mut priority[..]);
            priority
        });
        input.extend(header_frames(rng, stream_id, end_stream, priority, &block));
        let fields = fields
            .into_iter()
            .map(|(name, value)| {
                if name == b":authority" {
                    (name, REPLACEMENT_AUTHORITY.to_vec())
                } else {
                    (name, value)
                }
            })
            .collect();
        expected.push(Expected::Block {
            stream_id,
            end_stream,
            priority,
            fields,
        });
    }
    (input, expected)
}

struct Frame<'a> {
    frame_type: u8,
    flags: u8,
    stream_id: u32,
    bytes: &'a [u8],
    payload: &'a [u8],
}

fn parse_frames(mut rest: &[u8]) -> Vec<Frame<'_>> {
    let mut frames = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "truncated frame header in output");
        let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let end = 9 + length;
        assert!(rest.len() >= end, "truncated frame payload in output");
        frames.push(Frame {
            frame_type: rest[3],
            flags: rest[4],
            stream_id: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
            bytes: &rest[..end],
            payload: &rest[9..end],
        });
        rest = &rest[end..];
    }
    frames
}

/// Reads rewritten output back into the units a server receives, decoding header blocks with one
/// server-side HPACK decoder, as h2 would.
fn server_view(output: &[u8]) -> Vec<Expected> {
    assert_eq!(
        &output[..PREFACE.len()],
        PREFACE,
        "output must start with the preface"
    );
    let mut decoder = Decoder::new();
    let mut units = Vec::new();
    let mut frames = parse_frames(&output[PREFACE.len()..]).into_iter();
    while let Some(first) = frames.next() {
        if first.frame_type != TYPE_HEADERS {
            assert_ne!(
                first.frame_type, TYPE_CONTINUATION,
                "stray CONTINUATION in output"
            );
            units.push(Expected::Raw(first.bytes.to_vec()));
            continue;
        }
        assert_eq!(first.flags & FLAG_PADDED, 0, "output must not be padded");
        assert!(first.payload.len() <= MAX_OUTPUT_PAYLOAD);
        let mut block = first.payload.to_vec();
        let mut priority = None;
        if first.flags & FLAG_PRIORITY != 0 {
            priority = Some(block[..5].try_into().expect("5 priority bytes"));
            block.drain(..5);
        }
        let mut end_headers = first.flags & FLAG_END_HEADERS != 0;
        while !end_headers {
            let next = frames.next().expect("header block must end in the output");
            assert_eq!(next.frame_type, TYPE_CONTINUATION);
            assert_eq!(next.stream_id, first.stream_id);
            assert!(next.payload.len() <= MAX_OUTPUT_PAYLOAD);
            block.extend_from_slice(next.payload);
            end_headers = next.flags & FLAG_END_HEADERS != 0;
        }
        let fields = decoder.decode(&block).expect("rewritten block must decode");
        units.push(Expected::Block {
            stream_id: first.stream_id,
            end_stream: first.flags & FLAG_END_STREAM != 0,
            priority,
            fields,
        });
    }
    units
}

fn rewrite_whole(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut out = Vec::new();
    FrameRewriter::new().push(input, &mut out)?;
    Ok(out)
}

/// Feeds `input` in random pieces; stops at the first error like a connection would.
fn rewrite_in_pieces(rng: &mut StdRng, input: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut rewriter = FrameRewriter::new();
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let len = rng.random_range(1..=rest.len().min(4096));
        let (piece, tail) = rest.split_at(len);
        rewriter.push(piece, &mut out)?;
        rest = tail;
    }
    Ok(out)
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x7477_6964_0001);
    for case in 0..CASES {
        let mut input = Vec::new();
        // Most cases get past the preface, so the random bytes reach the frame parser.
        if rng.random_bool(0.9) {
            input.extend_from_slice(PREFACE);
        }
        let len = rng.random_range(0..512);
        input.extend(random_bytes(&mut rng, len));

        let whole = rewrite_whole(&input);
        let pieces = rewrite_in_pieces(&mut rng, &input);
        assert_eq!(whole.is_ok(), pieces.is_ok(), "case {case}: {input:02x?}");
        if let (Ok(whole), Ok(pieces)) = (whole, pieces) {
            assert_eq!(whole, pieces, "case {case}");
        }
    }
}

#[test]
fn valid_streams_round_trip() {
    let mut rng = StdRng::seed_from_u64(0x7477_6964_0002);
    for case in 0..CASES {
        let (input, expected) = random_stream(&mut rng);
        let output = rewrite_whole(&input)
            .unwrap_or_else(|err| panic!("case {case}: valid stream rejected: {err}"));
        assert_eq!(server_view(&output), expected, "case {case}");

        let pieces = rewrite_in_pieces(&mut rng, &input).expect("pieces must rewrite");
        assert_eq!(pieces, output, "case {case}: piecewise output differs");

        // The output is itself a valid client stream that needs no further change.
        let again = rewrite_whole(&output).expect("output must rewrite");
        assert_eq!(again, output, "case {case}: rewriting is not idempotent");
    }
}

#[test]
fn mutated_streams_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x7477_6964_0003);
    for _ in 0..CASES {
        let (mut input, _) = random_stream(&mut rng);
        if input.len() == PREFACE.len() {
            continue;
        }
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(PREFACE.len()..input.len());
            input[at] = rng.random();
        }
        if rng.random_bool(0.3) {
            let keep = rng.random_range(PREFACE.len()..=input.len());
            input.truncate(keep);
        }
        let _ = rewrite_whole(&input);
    }
}
