//! Fuzzes `FrameRewriter` with arbitrary client byte streams.
//!
//! The first input byte sets the size of the pieces the rest is pushed in. The rest follows
//! the HTTP/2 connection preface, so most inputs reach the frame parser. Besides the absence
//! of panics, the target checks that piecewise and whole input give the same result, and that
//! a successful output is a valid client stream that rewrites to itself.
//!
//! Run with `cargo +nightly fuzz run frame_rewriter` from `crates/uds`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use twid_uds::{FrameRewriter, RewriteError};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn rewrite_in_pieces(input: &[u8], piece_len: usize) -> Result<Vec<u8>, RewriteError> {
    let mut rewriter = FrameRewriter::new();
    let mut out = Vec::new();
    for piece in input.chunks(piece_len) {
        rewriter.push(piece, &mut out)?;
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece_len, rest)) = data.split_first() else {
        return;
    };
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(rest);

    let whole = rewrite_in_pieces(&input, input.len());
    let pieces = rewrite_in_pieces(&input, usize::from(piece_len).max(1));
    match (whole, pieces) {
        (Ok(whole), Ok(pieces)) => {
            assert_eq!(whole, pieces, "piecewise output differs");
            match rewrite_in_pieces(&whole, whole.len()) {
                Ok(again) => assert_eq!(again, whole, "rewriting the output changed it"),
                // The size check counts a frame's priority fields too, so a block re-encoded
                // to just under the limit plus 5 priority bytes is rejected on a second pass.
                Err(RewriteError::HeaderBlockTooLarge { .. }) => {}
                Err(err) => panic!("output must rewrite: {err}"),
            }
        }
        (Err(_), Err(_)) => {}
        (whole, pieces) => panic!("whole input gave {whole:?}, pieces gave {pieces:?}"),
    }
});
