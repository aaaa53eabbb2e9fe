//! HPACK encoding toward the server: every field is written without touching the dynamic table.
//!
//! The encoder emits only three representations (RFC 7541 section 6): an indexed field for an
//! exact static-table match, a literal without indexing with a static-table name, and a literal
//! without indexing with a literal name. None of them inserts into or refers to the server's
//! dynamic table, so the output decodes identically whatever dynamic table size the server
//! advertised, and no table size update is ever needed.

use loona_hpack::encoder::encode_integer_into;

/// The HPACK static table (RFC 7541 Appendix A); entry `i` has index `i + 1`.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Where a field sits in the static table.
enum StaticMatch {
    /// Name and value match the entry with this index.
    Field(usize),
    /// Only the name matches the entry with this index.
    Name(usize),
    /// The name is not in the static table.
    None,
}

fn find_static(name: &[u8], value: &[u8]) -> StaticMatch {
    let mut name_index = None;
    for (position, (entry_name, entry_value)) in STATIC_TABLE.iter().enumerate() {
        if *entry_name != name {
            continue;
        }
        // Entries with an empty value stand for the name alone, so they never match a field
        // exactly, even one whose value is empty: that case is cheap as a literal anyway.
        if !entry_value.is_empty() && *entry_value == value {
            return StaticMatch::Field(position + 1);
        }
        name_index.get_or_insert(position + 1);
    }
    name_index.map_or(StaticMatch::None, StaticMatch::Name)
}

/// Appends one header field to `out` without indexing it.
pub(crate) fn encode_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    match find_static(name, value) {
        StaticMatch::Field(index) => write_integer(index, 7, 0x80, out),
        StaticMatch::Name(index) => {
            write_integer(index, 4, 0x00, out);
            write_string(value, out);
        }
        StaticMatch::None => {
            out.push(0x00);
            write_string(name, out);
            write_string(value, out);
        }
    }
}

/// Appends a string literal without Huffman coding (RFC 7541 section 5.2).
fn write_string(bytes: &[u8], out: &mut Vec<u8>) {
    write_integer(bytes.len(), 7, 0x00, out);
    out.extend_from_slice(bytes);
}

fn write_integer(value: usize, prefix_bits: u8, leading_bits: u8, out: &mut Vec<u8>) {
    encode_integer_into(value, prefix_bits, leading_bits, out)
        .expect("writing to a Vec must not fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Decoder;

    fn round_trip(fields: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut block = Vec::new();
        for (name, value) in fields {
            encode_field(name, value, &mut block);
        }
        Decoder::new().decode(&block).expect("block must decode")
    }

    #[test]
    fn static_table_matches_rfc_indices() {
        assert_eq!(STATIC_TABLE[0].0, b":authority");
        assert_eq!(STATIC_TABLE[1], (&b":method"[..], &b"GET"[..]));
        assert_eq!(STATIC_TABLE[30].0, b"content-type");
        assert_eq!(STATIC_TABLE[60].0, b"www-authenticate");
    }

    #[test]
    fn fields_round_trip() {
        let fields: [(&[u8], &[u8]); 5] = [
            (b":method", b"POST"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", b"localhost"),
            (b"te", b"trailers"),
            (b"content-type", b""),
        ];
        let decoded = round_trip(&fields);
        let expected: Vec<_> = fields
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn exact_static_match_is_one_byte() {
        let mut block = Vec::new();
        encode_field(b":method", b"POST", &mut block);
        assert_eq!(block, [0x83]);
    }

    #[test]
    fn never_emits_indexing_representation() {
        let mut block = Vec::new();
        encode_field(b"x-custom", b"v", &mut block);
        encode_field(b":path", b"/a", &mut block);
        // 0x40 marks "literal with incremental indexing", 0x20 a table size update.
        assert_eq!(block[0] & 0xe0, 0x00);
        assert_eq!(block[12] & 0xf0, 0x00);
        let mut decoder = Decoder::new();
        decoder.decode(&block).expect("block must decode");
        let again = decoder.decode(&[0x80 | 62]);
        assert!(again.is_err(), "dynamic table must stay empty");
    }
}
