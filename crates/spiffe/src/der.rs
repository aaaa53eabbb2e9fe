//! Minimal DER reading and writing: splitting concatenated certificates and building
//! SubjectPublicKeyInfo structures from JWK members.

/// A reason concatenated DER cannot be split into elements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DerError {
    /// An element does not start with the SEQUENCE tag (0x30).
    #[error("element at byte {offset} is not a DER SEQUENCE (tag {tag:#04x})")]
    NotSequence {
        /// Byte offset of the element.
        offset: usize,
        /// The tag byte found.
        tag: u8,
    },
    /// The length octets are indefinite, non-minimal or longer than four bytes.
    #[error("element at byte {offset} has an invalid DER length")]
    InvalidLength {
        /// Byte offset of the element.
        offset: usize,
    },
    /// The element claims more bytes than the input holds.
    #[error("element at byte {offset} is truncated")]
    Truncated {
        /// Byte offset of the element.
        offset: usize,
    },
}

/// Splits `input` into its top-level SEQUENCE elements, returning each element's bytes.
///
/// Empty input gives an empty list.
pub(crate) fn split_sequences(input: &[u8]) -> Result<Vec<&[u8]>, DerError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < input.len() {
        let len = element_len(&input[offset..]).map_err(|e| e.at(offset))?;
        out.push(&input[offset..offset + len]);
        offset += len;
    }
    Ok(out)
}

enum ElementFault {
    Tag(u8),
    Length,
    Truncated,
}

impl ElementFault {
    fn at(self, offset: usize) -> DerError {
        match self {
            Self::Tag(tag) => DerError::NotSequence { offset, tag },
            Self::Length => DerError::InvalidLength { offset },
            Self::Truncated => DerError::Truncated { offset },
        }
    }
}

/// Returns the total length (header and content) of the SEQUENCE at the start of `bytes`.
fn element_len(bytes: &[u8]) -> Result<usize, ElementFault> {
    let tag = bytes[0];
    if tag != 0x30 {
        return Err(ElementFault::Tag(tag));
    }
    let first = *bytes.get(1).ok_or(ElementFault::Truncated)?;
    let (header, content) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let count = usize::from(first & 0x7f);
        // 0x80 is the BER indefinite form; DER forbids it, and four length bytes cover 4 GiB.
        if count == 0 || count > 4 {
            return Err(ElementFault::Length);
        }
        let octets = bytes.get(2..2 + count).ok_or(ElementFault::Truncated)?;
        if octets[0] == 0 {
            return Err(ElementFault::Length);
        }
        let value = octets
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if value < 0x80 {
            return Err(ElementFault::Length);
        }
        (2 + count, value)
    };
    let total = header + content;
    if total > bytes.len() {
        return Err(ElementFault::Truncated);
    }
    Ok(total)
}

/// Encodes one DER element with the given tag and content.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Encodes a non-negative big-endian integer as a DER INTEGER.
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let trimmed = strip_leading_zeros(magnitude);
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(0x02, &content)
}

/// Removes leading zero bytes from a big-endian magnitude.
pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_short_and_long_forms() {
        let short = tlv(0x30, &[1, 2, 3]);
        let long = tlv(0x30, &[7; 300]);
        let joined = [short.clone(), long.clone()].concat();
        let parts = split_sequences(&joined).unwrap();
        assert_eq!(parts, vec![short.as_slice(), long.as_slice()]);
    }

    #[test]
    fn rejects_malformed_elements() {
        assert_eq!(
            split_sequences(&[0x31, 0]),
            Err(DerError::NotSequence {
                offset: 0,
                tag: 0x31
            })
        );
        assert_eq!(
            split_sequences(&[0x30, 0x80]),
            Err(DerError::InvalidLength { offset: 0 })
        );
        assert_eq!(
            split_sequences(&[0x30, 0x81, 0x05]),
            Err(DerError::InvalidLength { offset: 0 })
        );
        assert_eq!(
            split_sequences(&[0x30, 5, 1]),
            Err(DerError::Truncated { offset: 0 })
        );
        assert_eq!(
            split_sequences(&[0x30, 0, 0x30]),
            Err(DerError::Truncated { offset: 2 })
        );
        assert!(split_sequences(&[]).unwrap().is_empty());
    }

    #[test]
    fn integer_gets_sign_byte() {
        assert_eq!(unsigned_integer(&[0, 0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(unsigned_integer(&[1, 0]), vec![2, 2, 1, 0]);
        assert_eq!(unsigned_integer(&[]), vec![2, 1, 0]);
    }
}
