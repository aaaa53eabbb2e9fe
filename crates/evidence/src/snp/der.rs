//! A minimal DER reader for the structures that x509-parser leaves as raw bytes here: the
//! RSASSA-PSS parameters and the values of AMD's VCEK and VLEK extensions.
//!
//! It reads single-byte tags and definite lengths of up to four bytes, and rejects every other
//! encoding, so a malformed input yields `None` instead of a panic.

/// One tag-length-value element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) content: &'a [u8],
}

/// A cursor over a sequence of DER elements.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.input.first().copied()
    }

    /// Reads the next element, or returns `None` when the input is empty or malformed.
    pub(crate) fn read(&mut self) -> Option<Tlv<'a>> {
        let (&tag, rest) = self.input.split_first()?;
        // Tag number 31 announces a multi-byte tag, which no structure read here uses.
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let length = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return None;
            }
            let (bytes, after) = rest.split_at_checked(count)?;
            rest = after;
            let mut length = 0usize;
            for &byte in bytes {
                length = length.checked_mul(256)?.checked_add(usize::from(byte))?;
            }
            // DER requires the shortest length encoding.
            if length < 0x80 || bytes.first() == Some(&0) {
                return None;
            }
            length
        };
        let (content, after) = rest.split_at_checked(length)?;
        self.input = after;
        Some(Tlv { tag, content })
    }

    /// Reads the next element and returns its content if its tag is `tag`.
    pub(crate) fn read_tagged(&mut self, tag: u8) -> Option<&'a [u8]> {
        let tlv = self.read()?;
        (tlv.tag == tag).then_some(tlv.content)
    }
}

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_IA5_STRING: u8 = 0x16;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// Decodes the whole of `input` as one DER INTEGER in 0..=255. AMD encodes each security patch
/// level this way, with a leading zero byte for values of 128 and above.
pub(crate) fn small_unsigned(input: &[u8]) -> Option<u8> {
    let mut reader = Reader::new(input);
    let content = reader.read_tagged(TAG_INTEGER)?;
    if !reader.is_empty() {
        return None;
    }
    match content {
        [value] if *value < 0x80 => Some(*value),
        [0, value] if *value >= 0x80 => Some(*value),
        _ => None,
    }
}

/// Decodes the whole of `input` as one DER IA5String.
pub(crate) fn ia5_string(input: &[u8]) -> Option<&str> {
    let mut reader = Reader::new(input);
    let content = reader.read_tagged(TAG_IA5_STRING)?;
    if !reader.is_empty() || !content.is_ascii() {
        return None;
    }
    std::str::from_utf8(content).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_short_and_long_lengths() {
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend_from_slice(&[7u8; 0x80]);
        let mut reader = Reader::new(&long);
        let tlv = reader.read().expect("long form");
        assert_eq!(tlv.tag, 0x04);
        assert_eq!(tlv.content.len(), 0x80);
        assert!(reader.is_empty());
    }

    #[test]
    fn rejects_non_minimal_lengths() {
        assert_eq!(Reader::new(&[0x04, 0x81, 0x01, 0x00]).read(), None);
        assert_eq!(Reader::new(&[0x04, 0x82, 0x00, 0x80]).read(), None);
        assert_eq!(Reader::new(&[0x04, 0x80]).read(), None);
        assert_eq!(Reader::new(&[0x04, 0x85, 1, 1, 1, 1, 1]).read(), None);
    }

    #[test]
    fn rejects_truncated_content() {
        assert_eq!(Reader::new(&[0x04, 0x05, 1, 2]).read(), None);
        assert_eq!(Reader::new(&[0x04]).read(), None);
        assert_eq!(Reader::new(&[]).read(), None);
    }

    #[test]
    fn decodes_patch_levels() {
        assert_eq!(small_unsigned(&[0x02, 0x01, 0x73]), Some(115));
        assert_eq!(small_unsigned(&[0x02, 0x02, 0x00, 0xd9]), Some(217));
        assert_eq!(small_unsigned(&[0x02, 0x01, 0x80]), None);
        assert_eq!(small_unsigned(&[0x02, 0x02, 0x00, 0x05]), None);
        assert_eq!(small_unsigned(&[0x02, 0x01, 0x01, 0x00]), None);
        assert_eq!(small_unsigned(&[0x04, 0x01, 0x01]), None);
    }

    #[test]
    fn decodes_ia5_strings() {
        assert_eq!(ia5_string(b"\x16\x05Milan"), Some("Milan"));
        assert_eq!(ia5_string(b"\x0c\x05Milan"), None);
        assert_eq!(ia5_string(b"\x16\x01\xff"), None);
    }
}
