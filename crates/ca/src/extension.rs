//! Extensions that callers add to X.509-SVIDs, such as twid's attestation claims.

use crate::CaError;

/// Upper bound on the number of caller extensions in one SVID.
pub const MAX_SVID_EXTENSIONS: usize = 8;

/// Upper bound on one extension value, in bytes.
pub const MAX_SVID_EXTENSION_LEN: usize = 8192;

/// Upper bound on the DER content of an extension OID, in bytes.
const MAX_OID_CONTENT_LEN: usize = 64;

const TAG_OID: u8 = 0x06;

/// A non-critical extension that the caller adds to an X.509-SVID.
///
/// The CA writes it after its own extensions and never marks it critical, so verifiers that
/// do not know the OID still accept the certificate (RFC 5280 section 4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvidExtension {
    /// The extension OID in dotted decimal, such as `2.25.1234.1`. OIDs under id-ce
    /// (2.5.29), which the CA sets itself or which constrain paths, are rejected.
    pub oid: String,
    /// The extension value: exactly one DER element, which the CA wraps in the
    /// `extnValue` OCTET STRING.
    pub value_der: Vec<u8>,
}

/// A checked extension: its OID as a complete DER element, and its value.
pub(crate) struct EncodedExtension<'a> {
    pub(crate) oid_der: Vec<u8>,
    pub(crate) value_der: &'a [u8],
}

/// Checks caller extensions and encodes their OIDs.
pub(crate) fn encode_extensions(
    extensions: &[SvidExtension],
) -> Result<Vec<EncodedExtension<'_>>, CaError> {
    if extensions.len() > MAX_SVID_EXTENSIONS {
        return Err(CaError::InvalidExtension {
            oid: extensions[MAX_SVID_EXTENSIONS].oid.clone(),
            reason: format!("an SVID takes at most {MAX_SVID_EXTENSIONS} extra extensions"),
        });
    }
    let mut encoded: Vec<EncodedExtension<'_>> = Vec::with_capacity(extensions.len());
    for extension in extensions {
        let invalid = |reason: String| CaError::InvalidExtension {
            oid: extension.oid.clone(),
            reason,
        };
        let arcs = parse_oid(&extension.oid).map_err(invalid)?;
        if arcs.starts_with(&[2, 5, 29]) {
            return Err(invalid(
                "OIDs under id-ce (2.5.29) are reserved for the extensions the CA sets".to_owned(),
            ));
        }
        let oid_der = oid_der(&arcs).map_err(invalid)?;
        if encoded.iter().any(|other| other.oid_der == oid_der) {
            return Err(invalid(
                "the extension appears twice; RFC 5280 allows each OID once".to_owned(),
            ));
        }
        check_single_element(&extension.value_der).map_err(invalid)?;
        encoded.push(EncodedExtension {
            oid_der,
            value_der: &extension.value_der,
        });
    }
    Ok(encoded)
}

/// Parses a dotted-decimal OID: at least two arcs, the first 0, 1 or 2, the second below
/// 40 unless the first is 2, and no leading zeros.
fn parse_oid(text: &str) -> Result<Vec<u128>, String> {
    let mut arcs = Vec::new();
    for arc in text.split('.') {
        let digits_only = !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit());
        if !digits_only || (arc.len() > 1 && arc.starts_with('0')) {
            return Err(format!(
                "arc {arc:?} is not a decimal number without leading zeros"
            ));
        }
        let value = arc
            .parse::<u128>()
            .map_err(|_| format!("arc {arc} does not fit in 128 bits"))?;
        arcs.push(value);
    }
    match arcs.as_slice() {
        [first, second, ..] if *first <= 2 && (*first == 2 || *second < 40) => Ok(arcs),
        [_, _, ..] => Err(
            "the first arc must be 0, 1 or 2, and the second below 40 unless the first is 2"
                .to_owned(),
        ),
        _ => Err("an OID needs at least two arcs".to_owned()),
    }
}

/// Encodes OID arcs as a complete DER OBJECT IDENTIFIER (X.690 section 8.19).
fn oid_der(arcs: &[u128]) -> Result<Vec<u8>, String> {
    let first = arcs[0]
        .checked_mul(40)
        .and_then(|value| value.checked_add(arcs[1]))
        .ok_or_else(|| "the first two arcs do not fit in 128 bits".to_owned())?;
    let mut content = Vec::new();
    for arc in std::iter::once(first).chain(arcs[2..].iter().copied()) {
        push_base128(&mut content, arc);
    }
    if content.len() > MAX_OID_CONTENT_LEN {
        return Err(format!(
            "the OID takes {} bytes, the maximum is {MAX_OID_CONTENT_LEN}",
            content.len()
        ));
    }
    let mut der = Vec::with_capacity(content.len() + 2);
    der.push(TAG_OID);
    // MAX_OID_CONTENT_LEN keeps the length in one octet.
    der.push(content.len() as u8);
    der.extend_from_slice(&content);
    Ok(der)
}

/// Appends `value` in base 128, most significant group first, with the high bit set on every
/// octet but the last.
fn push_base128(out: &mut Vec<u8>, value: u128) {
    let mut groups = vec![(value & 0x7f) as u8];
    let mut rest = value >> 7;
    while rest > 0 {
        groups.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.extend(groups.iter().rev());
}

fn check_single_element(value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_SVID_EXTENSION_LEN {
        return Err(format!(
            "the value has {} bytes, the maximum is {MAX_SVID_EXTENSION_LEN}",
            value.len()
        ));
    }
    match x509_parser::der_parser::der::parse_der(value) {
        Ok(([], _)) => Ok(()),
        Ok((rest, _)) => Err(format!(
            "the value has {} bytes after its DER element",
            rest.len()
        )),
        Err(error) => Err(format!("the value is not one DER element: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_encoding_matches_known_values() {
        let cases: [(&str, &[u8]); 4] = [
            ("2.5.29.17", &[0x06, 0x03, 0x55, 0x1d, 0x11]),
            (
                "1.3.6.1.5.5.7.3.1",
                &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01],
            ),
            ("2.999.3", &[0x06, 0x03, 0x88, 0x37, 0x03]),
            (
                "1.2.840.113549",
                &[0x06, 0x06, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d],
            ),
        ];
        for (text, expected) in cases {
            let arcs = parse_oid(text).unwrap();
            assert_eq!(oid_der(&arcs).unwrap(), expected, "{text}");
        }
    }

    /// x509-parser prints arcs over 64 bits as hex, so the expected bytes come from X.690
    /// by hand: 2.25 is 0x69, then each arc in base 128.
    #[test]
    fn uuid_arc_oid_encodes() {
        let text = "2.25.227360298736076670704709277066504449269.1";
        let expected = [
            0x06, 0x15, 0x69, 0x82, 0xd6, 0x8c, 0x80, 0x8c, 0xa4, 0xff, 0xda, 0x8e, 0xd5, 0x82,
            0xc5, 0xe7, 0xe7, 0xa3, 0x90, 0xd0, 0xd9, 0x75, 0x01,
        ];
        assert_eq!(oid_der(&parse_oid(text).unwrap()).unwrap(), expected);
    }

    #[test]
    fn oid_parser_rejects_bad_syntax() {
        for text in [
            "",
            "1",
            "3.1",
            "1.40",
            "1..2",
            "1.2.",
            ".1.2",
            "1.02",
            "1.a",
            "1.-2",
            "2.340282366920938463463374607431768211456",
        ] {
            assert!(parse_oid(text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn extensions_reject_bad_values() {
        let good_value = vec![0x05, 0x00];
        let extension = |oid: &str, value: &[u8]| SvidExtension {
            oid: oid.to_owned(),
            value_der: value.to_vec(),
        };
        let cases = [
            ("id-ce OID", vec![extension("2.5.29.17", &good_value)]),
            (
                "repeated OID",
                vec![
                    extension("1.3.9999.1", &good_value),
                    extension("1.3.9999.1", &good_value),
                ],
            ),
            ("empty value", vec![extension("1.3.9999.1", &[])]),
            (
                "two elements",
                vec![extension("1.3.9999.1", &[0x05, 0x00, 0x05, 0x00])],
            ),
            (
                "truncated value",
                vec![extension("1.3.9999.1", &[0x04, 0x05, 0x00])],
            ),
            (
                "oversized value",
                vec![extension(
                    "1.3.9999.1",
                    &vec![0; MAX_SVID_EXTENSION_LEN + 1],
                )],
            ),
            (
                "too many",
                (0..=MAX_SVID_EXTENSIONS)
                    .map(|index| extension(&format!("1.3.9999.{index}"), &good_value))
                    .collect(),
            ),
        ];
        for (name, extensions) in cases {
            let error = encode_extensions(&extensions).err();
            assert!(
                matches!(error, Some(CaError::InvalidExtension { .. })),
                "{name}: {error:?}"
            );
        }
        assert!(encode_extensions(&[extension("1.3.9999.1", &good_value)]).is_ok());
    }
}
