//! A minimal DER reader for the few structures x509-parser does not decode for us: the Intel
//! SGX extension of PCK certificates and concatenated DER certificates in quote cert data.

use crate::VerifyError;

/// One DER element: its tag, its content bytes and the whole encoding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Element<'a> {
    pub(crate) tag: u8,
    pub(crate) content: &'a [u8],
    pub(crate) encoded: &'a [u8],
}

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// Reads one element from the front of `input` and returns it with the bytes after it.
/// Only single-byte tags and definite lengths of up to four bytes are accepted, which covers
/// every structure this module reads.
pub(crate) fn read_element<'a>(
    input: &'a [u8],
    context: &str,
) -> Result<(Element<'a>, &'a [u8]), VerifyError> {
    let truncated = || VerifyError::malformed(format!("{context}: truncated DER element"));
    let (&tag, rest) = input.split_first().ok_or_else(truncated)?;
    if tag & 0x1f == 0x1f {
        return Err(VerifyError::malformed(format!(
            "{context}: multi-byte DER tags are not supported"
        )));
    }
    let (&first, mut rest) = rest.split_first().ok_or_else(truncated)?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return Err(VerifyError::malformed(format!(
                "{context}: unsupported DER length form 0x{first:02x}"
            )));
        }
        let (digits, after) = rest.split_at_checked(count).ok_or_else(truncated)?;
        rest = after;
        digits
            .iter()
            .fold(0usize, |acc, digit| (acc << 8) | usize::from(*digit))
    };
    let (content, after) = rest.split_at_checked(length).ok_or_else(truncated)?;
    let header_len = input.len() - rest.len();
    let encoded = input.get(..header_len + length).ok_or_else(truncated)?;
    Ok((
        Element {
            tag,
            content,
            encoded,
        },
        after,
    ))
}

/// Reads one element and requires its tag.
pub(crate) fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    context: &str,
) -> Result<(Element<'a>, &'a [u8]), VerifyError> {
    let (element, rest) = read_element(input, context)?;
    if element.tag != tag {
        return Err(VerifyError::malformed(format!(
            "{context}: expected DER tag 0x{tag:02x}, found 0x{:02x}",
            element.tag
        )));
    }
    Ok((element, rest))
}

/// Decodes a non-negative INTEGER or ENUMERATED content of at most four significant bytes.
pub(crate) fn unsigned(content: &[u8], context: &str) -> Result<u32, VerifyError> {
    let first = content
        .first()
        .ok_or_else(|| VerifyError::malformed(format!("{context}: empty DER integer")))?;
    if first & 0x80 != 0 {
        return Err(VerifyError::malformed(format!(
            "{context}: negative DER integer"
        )));
    }
    let significant = match content.iter().position(|byte| *byte != 0) {
        Some(index) => &content[index..],
        None => &[],
    };
    if significant.len() > 4 {
        return Err(VerifyError::malformed(format!(
            "{context}: DER integer wider than 32 bits"
        )));
    }
    Ok(significant
        .iter()
        .fold(0u32, |acc, digit| (acc << 8) | u32::from(*digit)))
}

/// Splits concatenated DER SEQUENCEs (for example certificates) into their encodings.
pub(crate) fn split_sequences<'a>(
    mut input: &'a [u8],
    context: &str,
) -> Result<Vec<&'a [u8]>, VerifyError> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (element, rest) = expect(input, TAG_SEQUENCE, context)?;
        out.push(element.encoded);
        input = rest;
    }
    Ok(out)
}
