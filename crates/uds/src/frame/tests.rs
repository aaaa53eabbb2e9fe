use super::*;
use loona_hpack::Encoder;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, PartialEq)]
struct Frame {
    frame_type: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let head = FrameHead {
        length: payload.len(),
        frame_type,
        flags,
        stream_id,
    };
    write_frame_head(head, &mut out);
    out.extend_from_slice(payload);
    out
}

fn with_preface(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    for frame in frames {
        bytes.extend_from_slice(frame);
    }
    bytes
}

fn rewrite(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut out = Vec::new();
    FrameRewriter::new().push(input, &mut out)?;
    Ok(out)
}

fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
    assert_eq!(
        &bytes[..PREFACE.len()],
        PREFACE,
        "output must start with the preface"
    );
    let mut rest = &bytes[PREFACE.len()..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let head = FrameHead::parse(rest[..FRAME_HEADER_LEN].try_into().expect("9 bytes"));
        let end = FRAME_HEADER_LEN + head.length;
        frames.push(Frame {
            frame_type: head.frame_type,
            flags: head.flags,
            stream_id: head.stream_id,
            payload: rest[FRAME_HEADER_LEN..end].to_vec(),
        });
        rest = &rest[end..];
    }
    frames
}

fn request_fields(authority: &str) -> Fields {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
        (":authority", authority),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
        ("workload.spiffe.io", "true"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

fn encode(encoder: &mut Encoder<'_>, fields: &Fields) -> Vec<u8> {
    encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
}

fn authority_of(fields: &Fields) -> &[u8] {
    let (_, value) = fields
        .iter()
        .find(|(name, _)| name == b":authority")
        .expect(":authority must be present");
    value
}

#[test]
fn rewrites_percent_encoded_authority() {
    let fields = request_fields("%2Ftmp%2Fa.sock");
    let block = encode(&mut Encoder::new(), &fields);
    let input = with_preface(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block)]);

    let frames = parse_frames(&rewrite(&input).expect("rewrite must succeed"));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].frame_type, TYPE_HEADERS);
    assert_eq!(frames[0].flags, FLAG_END_HEADERS);
    assert_eq!(frames[0].stream_id, 1);

    let decoded = Decoder::new()
        .decode(&frames[0].payload)
        .expect("must decode");
    assert_eq!(authority_of(&decoded), b"localhost");
    let others: Fields = decoded
        .into_iter()
        .filter(|(n, _)| n != b":authority")
        .collect();
    let expected: Fields = fields
        .into_iter()
        .filter(|(n, _)| n != b":authority")
        .collect();
    assert_eq!(others, expected);
}

#[test]
fn joins_headers_and_continuation() {
    let fields = request_fields("/tmp/x.sock");
    let block = encode(&mut Encoder::new(), &fields);
    let (first, second) = block.split_at(block.len() / 2);
    let input = with_preface(&[
        frame(TYPE_HEADERS, FLAG_END_STREAM, 3, first),
        frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, second),
    ]);

    let frames = parse_frames(&rewrite(&input).expect("rewrite must succeed"));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].flags, FLAG_END_STREAM | FLAG_END_HEADERS);
    let decoded = Decoder::new()
        .decode(&frames[0].payload)
        .expect("must decode");
    assert_eq!(authority_of(&decoded), b"localhost");
}

#[test]
fn strips_padding_and_keeps_priority() {
    let block = encode(&mut Encoder::new(), &request_fields("%2Fa"));
    let priority = [0x80, 0, 0, 1, 42];
    let mut payload = vec![3];
    payload.extend_from_slice(&priority);
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0, 0, 0]);
    let flags = FLAG_PADDED | FLAG_PRIORITY | FLAG_END_HEADERS;
    let input = with_preface(&[frame(TYPE_HEADERS, flags, 5, &payload)]);

    let frames = parse_frames(&rewrite(&input).expect("rewrite must succeed"));
    assert_eq!(frames[0].flags, FLAG_PRIORITY | FLAG_END_HEADERS);
    assert_eq!(frames[0].payload[..PRIORITY_LEN], priority);
    let decoded = Decoder::new()
        .decode(&frames[0].payload[PRIORITY_LEN..])
        .expect("must decode");
    assert_eq!(authority_of(&decoded), b"localhost");
}

#[test]
fn follows_dynamic_table_across_requests() {
    let fields = request_fields("%2Ftmp%2Fa.sock");
    let mut client = Encoder::new();
    let first = encode(&mut client, &fields);
    let second = encode(&mut client, &fields);
    // Field names absent from the static table (`te`, `workload.spiffe.io`) are indexed.
    assert!(
        second.contains(&(0x80 | 62)),
        "second block must use the dynamic table"
    );
    assert!(second.len() < first.len());
    let input = with_preface(&[
        frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first),
        frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &second),
    ]);

    let frames = parse_frames(&rewrite(&input).expect("rewrite must succeed"));
    assert_eq!(frames.len(), 2);
    let mut server = Decoder::new();
    for frame in &frames {
        let decoded = server.decode(&frame.payload).expect("must decode");
        assert_eq!(authority_of(&decoded), b"localhost");
        assert_eq!(decoded.len(), fields.len());
    }
}

#[test]
fn follows_table_size_update() {
    let mut block = vec![0x3f, 0xe1, 0x1f]; // dynamic table size update to 4096
    block.extend(encode(&mut Encoder::new(), &request_fields("%2Fa")));
    let input = with_preface(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block)]);
    let frames = parse_frames(&rewrite(&input).expect("rewrite must succeed"));
    let decoded = Decoder::new()
        .decode(&frames[0].payload)
        .expect("must decode");
    assert_eq!(authority_of(&decoded), b"localhost");
}

#[test]
fn rejects_table_size_over_limit() {
    let mut block = Vec::new();
    loona_hpack::encoder::encode_integer_into(MAX_DYNAMIC_TABLE_SIZE + 1, 5, 0x20, &mut block)
        .expect("vec write");
    block.push(0x82);
    let input = with_preface(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block)]);
    assert!(matches!(rewrite(&input), Err(RewriteError::Hpack { .. })));
}

#[test]
fn rejects_malformed_hpack() {
    // Index 70 refers to an empty dynamic table.
    let input = with_preface(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 70])]);
    let err = rewrite(&input).expect_err("must reject");
    assert!(
        matches!(err, RewriteError::Hpack { stream_id: 1, .. }),
        "{err}"
    );
}

#[test]
fn rejects_truncated_string() {
    let input = with_preface(&[frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS,
        1,
        &[0x00, 0x05, b'a'],
    )]);
    assert!(matches!(rewrite(&input), Err(RewriteError::Hpack { .. })));
}

#[test]
fn rejects_padding_longer_than_payload() {
    let input = with_preface(&[frame(
        TYPE_HEADERS,
        FLAG_PADDED | FLAG_END_HEADERS,
        1,
        &[9, 1],
    )]);
    let err = rewrite(&input).expect_err("must reject");
    assert!(
        matches!(err, RewriteError::InvalidHeadersPayload { .. }),
        "{err}"
    );
}

#[test]
fn rejects_invalid_preface() {
    let err = rewrite(b"GET / HTTP/1.1\r\n").expect_err("must reject");
    assert!(
        matches!(
            err,
            RewriteError::InvalidPreface {
                offset: 0,
                byte: b'G'
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_interrupted_block() {
    let block = encode(&mut Encoder::new(), &request_fields("a"));
    let input = with_preface(&[
        frame(TYPE_HEADERS, 0, 1, &block[..4]),
        frame(0x0, 0, 1, b"data"),
    ]);
    let err = rewrite(&input).expect_err("must reject");
    assert!(
        matches!(err, RewriteError::InterruptedHeaderBlock { .. }),
        "{err}"
    );
}

#[test]
fn rejects_continuation_without_headers() {
    let input = with_preface(&[frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82])]);
    let err = rewrite(&input).expect_err("must reject");
    assert!(
        matches!(err, RewriteError::UnexpectedContinuation { stream_id: 1 }),
        "{err}"
    );
}

#[test]
fn rejects_oversized_block_before_buffering() {
    let mut input = PREFACE.to_vec();
    let head = FrameHead {
        length: MAX_HEADER_BLOCK_SIZE + 1,
        frame_type: TYPE_HEADERS,
        flags: 0,
        stream_id: 1,
    };
    write_frame_head(head, &mut input);
    let err = rewrite(&input).expect_err("must reject");
    assert!(
        matches!(err, RewriteError::HeaderBlockTooLarge { stream_id: 1 }),
        "{err}"
    );
}

#[test]
fn rejects_block_that_expands_past_limit() {
    // One 4000-byte field in the dynamic table, then 300 one-byte references to it.
    let value = vec![b'v'; 4000];
    let mut client = Encoder::new();
    let mut block = client.encode([(&b"x-big"[..], &value[..])]);
    block.extend(std::iter::repeat_n(0x80 | 62, 300));
    let input = with_preface(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block)]);
    let err = rewrite(&input).expect_err("must reject");
    assert!(
        matches!(err, RewriteError::HeaderBlockTooLarge { .. }),
        "{err}"
    );
}

/// Builds a request whose header block carries `value_len` bytes of metadata, in HEADERS
/// plus CONTINUATION frames of at most `MAX_OUTPUT_PAYLOAD` bytes each.
fn request_with_metadata(value_len: usize) -> (Vec<u8>, usize) {
    let mut fields = request_fields("%2Fa");
    fields.push((b"x-large".to_vec(), vec![b'z'; value_len]));
    let block = encode(&mut Encoder::new(), &fields);
    let chunks: Vec<&[u8]> = block.chunks(MAX_OUTPUT_PAYLOAD).collect();
    let last = chunks.len() - 1;
    let frames: Vec<Vec<u8>> = chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let frame_type = if i == 0 {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            let flags = if i == last { FLAG_END_HEADERS } else { 0 };
            frame(frame_type, flags, 3, chunk)
        })
        .collect();
    (with_preface(&frames), block.len())
}

#[test]
fn rejects_block_over_64_kib() {
    let (input, block_len) = request_with_metadata(70_000);
    assert!(block_len > 64 * 1024);
    assert!(block_len < 1 << 20);
    let err = rewrite(&input).expect_err("must reject");
    assert!(
        matches!(err, RewriteError::HeaderBlockTooLarge { stream_id: 3 }),
        "{err}"
    );
}

#[test]
fn accepts_block_just_under_64_kib() {
    let (input, block_len) = request_with_metadata(60_000);
    assert!(block_len <= MAX_HEADER_BLOCK_SIZE);
    let frames = parse_frames(&rewrite(&input).expect("rewrite must succeed"));
    let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload.clone()).collect();
    let decoded = Decoder::new().decode(&joined).expect("must decode");
    assert_eq!(authority_of(&decoded), b"localhost");
}

#[test]
fn splits_large_block_into_continuations() {
    let value = vec![b'z'; 40_000];
    let mut fields = request_fields("%2Fa");
    fields.push((b"x-large".to_vec(), value));
    let block = encode(&mut Encoder::new(), &fields);
    let (first, rest) = block.split_at(MAX_OUTPUT_PAYLOAD);
    let (second, third) = rest.split_at(MAX_OUTPUT_PAYLOAD);
    let input = with_preface(&[
        frame(TYPE_HEADERS, FLAG_END_STREAM, 7, first),
        frame(TYPE_CONTINUATION, 0, 7, second),
        frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 7, third),
    ]);

    let frames = parse_frames(&rewrite(&input).expect("rewrite must succeed"));
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].frame_type, TYPE_HEADERS);
    assert_eq!(frames[0].flags, FLAG_END_STREAM);
    assert_eq!(frames[1].frame_type, TYPE_CONTINUATION);
    assert_eq!(frames[1].flags, 0);
    assert_eq!(frames[2].frame_type, TYPE_CONTINUATION);
    assert_eq!(frames[2].flags, FLAG_END_HEADERS);
    assert!(frames.iter().all(|f| f.payload.len() <= MAX_OUTPUT_PAYLOAD));
    assert!(frames.iter().all(|f| f.stream_id == 7));

    let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload.clone()).collect();
    let decoded = Decoder::new().decode(&joined).expect("must decode");
    assert_eq!(authority_of(&decoded), b"localhost");
    assert_eq!(decoded.last(), fields.last());
}

#[test]
fn passes_data_and_settings_unchanged() {
    let input = with_preface(&[
        frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]),
        frame(0x4, 0x1, 0, &[]),
        frame(0x0, 0, 1, &[0, 0, 0, 0, 2, 8, 1]),
        frame(0x0, 0x1, 1, &[]),
        frame(0x6, 0, 0, b"pingpong"),
    ]);
    assert_eq!(rewrite(&input).expect("rewrite must succeed"), input);
}

#[test]
fn passes_push_promise_unchanged() {
    let input = with_preface(&[frame(0x5, FLAG_END_HEADERS, 1, &[0, 0, 0, 2, 0x82])]);
    assert_eq!(rewrite(&input).expect("rewrite must succeed"), input);
}

#[test]
fn byte_at_a_time_matches_whole_input() {
    let mut client = Encoder::new();
    let fields = request_fields("%2Fx");
    let first = encode(&mut client, &fields);
    let second = encode(&mut client, &fields);
    let input = with_preface(&[
        frame(0x4, 0, 0, &[]),
        frame(TYPE_HEADERS, 0, 1, &first[..5]),
        frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &first[5..]),
        frame(0x0, 0x1, 1, b"payload"),
        frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &second),
    ]);
    let whole = rewrite(&input).expect("rewrite must succeed");

    let mut rewriter = FrameRewriter::new();
    let mut pieces = Vec::new();
    for byte in &input {
        rewriter
            .push(&[*byte], &mut pieces)
            .expect("rewrite must succeed");
    }
    assert_eq!(pieces, whole);
}

#[test]
fn forward_len_covers_data_payload() {
    let mut rewriter = FrameRewriter::new();
    let mut out = Vec::new();
    let input = with_preface(&[frame(0x0, 0, 1, &[])]);
    rewriter
        .push(&input, &mut out)
        .expect("rewrite must succeed");
    assert_eq!(rewriter.forward_len(), 0);

    let mut head = Vec::new();
    write_frame_head(
        FrameHead {
            length: 100,
            frame_type: 0x0,
            flags: 0,
            stream_id: 1,
        },
        &mut head,
    );
    rewriter
        .push(&head, &mut out)
        .expect("rewrite must succeed");
    assert_eq!(rewriter.forward_len(), 100);
    rewriter.skip_forwarded(60);
    assert_eq!(rewriter.forward_len(), 40);
    rewriter.skip_forwarded(40);
    assert_eq!(rewriter.forward_len(), 0);
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A small deterministic generator; the fuzz target covers this space far more widely.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2000 {
        let mut input = PREFACE.to_vec();
        let len = (seed % 200) as usize;
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            input.push(seed as u8);
        }
        let _ = rewrite(&input);
    }
}
