//! A small DER writer for the certificate structures this crate builds, and the constant
//! encodings (OIDs, algorithm identifiers) it uses.

/// Appends DER elements to a buffer; nested elements get their length filled in afterwards.
pub(crate) struct DerWriter {
    buf: Vec<u8>,
}

pub(crate) const TAG_BOOLEAN: u8 = 0x01;
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_UTF8_STRING: u8 = 0x0c;
pub(crate) const TAG_PRINTABLE_STRING: u8 = 0x13;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;
/// `[0]` constructed, explicit tagging.
pub(crate) const TAG_CONTEXT_0: u8 = 0xa0;
/// `[3]` constructed, explicit tagging.
pub(crate) const TAG_CONTEXT_3: u8 = 0xa3;
/// `[0]` primitive, implicit tagging (AuthorityKeyIdentifier keyIdentifier).
pub(crate) const TAG_IMPLICIT_0: u8 = 0x80;
/// GeneralName dNSName, `[2]` IA5String.
pub(crate) const TAG_DNS_NAME: u8 = 0x82;
/// GeneralName uniformResourceIdentifier, `[6]` IA5String.
pub(crate) const TAG_URI: u8 = 0x86;

impl DerWriter {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Returns the bytes written from `start` on.
    pub(crate) fn bytes_from(&self, start: usize) -> &[u8] {
        &self.buf[start..]
    }

    /// Appends bytes that are already DER.
    pub(crate) fn raw(&mut self, der: &[u8]) {
        self.buf.extend_from_slice(der);
    }

    /// Appends one element with primitive content.
    pub(crate) fn tlv(&mut self, tag: u8, content: &[u8]) {
        self.buf.push(tag);
        push_length(&mut self.buf, content.len());
        self.buf.extend_from_slice(content);
    }

    /// Appends one constructed element whose content `body` writes.
    pub(crate) fn nested(&mut self, tag: u8, body: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.buf.push(tag);
        // One length byte is reserved; longer lengths are inserted after the body is known.
        self.buf.push(0);
        let content_start = self.buf.len();
        body(self);
        let content_len = self.buf.len() - content_start;
        if content_len < 0x80 {
            self.buf[start + 1] = content_len as u8;
        } else {
            let mut length = Vec::with_capacity(5);
            push_length(&mut length, content_len);
            self.buf.splice(start + 1..start + 2, length);
        }
    }

    /// Appends a non-negative INTEGER from big-endian magnitude bytes.
    pub(crate) fn unsigned_integer(&mut self, magnitude: &[u8]) {
        let first_nonzero = magnitude.iter().position(|&b| b != 0);
        let trimmed = first_nonzero.map_or(&[0u8][..], |i| &magnitude[i..]);
        let pad = trimmed[0] & 0x80 != 0;
        self.buf.push(TAG_INTEGER);
        push_length(&mut self.buf, trimmed.len() + usize::from(pad));
        if pad {
            self.buf.push(0);
        }
        self.buf.extend_from_slice(trimmed);
    }

    /// Appends a BIT STRING with no unused bits.
    pub(crate) fn bit_string(&mut self, bytes: &[u8]) {
        self.buf.push(TAG_BIT_STRING);
        push_length(&mut self.buf, bytes.len() + 1);
        self.buf.push(0);
        self.buf.extend_from_slice(bytes);
    }

    /// Appends one X.509 Extension: its OID, the critical flag when set, and `value` wrapped
    /// in an OCTET STRING.
    pub(crate) fn extension(&mut self, oid: &[u8], critical: bool, value: impl FnOnce(&mut Self)) {
        self.nested(TAG_SEQUENCE, |w| {
            w.raw(oid);
            if critical {
                w.tlv(TAG_BOOLEAN, &[0xff]);
            }
            w.nested(TAG_OCTET_STRING, value);
        });
    }
}

fn push_length(buf: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        buf.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    buf.push(0x80 | (bytes.len() - skip) as u8);
    buf.extend_from_slice(&bytes[skip..]);
}

/// Complete DER encodings (tag, length, value) of the object identifiers in use.
pub(crate) mod oid {
    /// id-at-countryName, 2.5.4.6.
    pub(crate) const COUNTRY_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x06];
    /// id-at-organizationName, 2.5.4.10.
    pub(crate) const ORGANIZATION_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x0a];
    /// id-at-commonName, 2.5.4.3.
    pub(crate) const COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    /// id-ce-subjectKeyIdentifier, 2.5.29.14.
    pub(crate) const SUBJECT_KEY_IDENTIFIER: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x0e];
    /// id-ce-keyUsage, 2.5.29.15.
    pub(crate) const KEY_USAGE: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x0f];
    /// id-ce-subjectAltName, 2.5.29.17.
    pub(crate) const SUBJECT_ALT_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
    /// id-ce-basicConstraints, 2.5.29.19.
    pub(crate) const BASIC_CONSTRAINTS: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x13];
    /// id-ce-authorityKeyIdentifier, 2.5.29.35.
    pub(crate) const AUTHORITY_KEY_IDENTIFIER: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x23];
    /// id-ce-extKeyUsage, 2.5.29.37.
    pub(crate) const EXT_KEY_USAGE: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x25];
    /// id-kp-serverAuth, 1.3.6.1.5.5.7.3.1.
    pub(crate) const SERVER_AUTH: &[u8] =
        &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    /// id-kp-clientAuth, 1.3.6.1.5.5.7.3.2.
    pub(crate) const CLIENT_AUTH: &[u8] =
        &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
}

/// Complete DER AlgorithmIdentifier encodings of the certificate signature algorithms.
pub(crate) mod signature_algorithm {
    /// ecdsa-with-SHA256 (RFC 5758), no parameters.
    pub(crate) const ECDSA_SHA256: &[u8] = &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];
    /// ecdsa-with-SHA384 (RFC 5758), no parameters.
    pub(crate) const ECDSA_SHA384: &[u8] = &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
    ];
    /// sha256WithRSAEncryption (RFC 4055) with NULL parameters.
    pub(crate) const RSA_PKCS1_SHA256: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
    ];
    /// sha384WithRSAEncryption (RFC 4055) with NULL parameters.
    pub(crate) const RSA_PKCS1_SHA384: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c, 0x05, 0x00,
    ];
    /// sha512WithRSAEncryption (RFC 4055) with NULL parameters.
    pub(crate) const RSA_PKCS1_SHA512: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d, 0x05, 0x00,
    ];
}

/// Complete DER AlgorithmIdentifier encodings of public key algorithms.
pub(crate) mod key_algorithm {
    /// id-ecPublicKey with the namedCurve secp256r1 (P-256).
    pub(crate) const EC_P256: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    /// id-ecPublicKey with the namedCurve secp384r1 (P-384).
    pub(crate) const EC_P384: &[u8] = &[
        0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81,
        0x04, 0x00, 0x22,
    ];
    /// rsaEncryption with NULL parameters.
    pub(crate) const RSA: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_short_length() {
        let mut w = DerWriter::with_capacity(8);
        w.nested(TAG_SEQUENCE, |w| w.tlv(TAG_OCTET_STRING, &[1, 2, 3]));
        assert_eq!(w.into_vec(), [0x30, 0x05, 0x04, 0x03, 1, 2, 3]);
    }

    #[test]
    fn nested_long_lengths() {
        for content_len in [0x7f_usize, 0x80, 0xff, 0x100, 0x1_0000] {
            let mut w = DerWriter::with_capacity(8);
            // An OCTET STRING keeps the parser from reading the filler as nested elements.
            w.nested(TAG_OCTET_STRING, |w| w.raw(&vec![0xab; content_len]));
            let der = w.into_vec();
            let (rest, parsed) = x509_parser::der_parser::der::parse_der(&der).unwrap();
            assert!(rest.is_empty(), "trailing bytes for length {content_len}");
            assert_eq!(parsed.as_slice().unwrap().len(), content_len);
        }
    }

    #[test]
    fn unsigned_integer_is_minimal_and_positive() {
        let cases: [(&[u8], &[u8]); 5] = [
            (&[0x00, 0x00, 0x01], &[0x02, 0x01, 0x01]),
            (&[0x80], &[0x02, 0x02, 0x00, 0x80]),
            (&[0x00, 0xff, 0x01], &[0x02, 0x03, 0x00, 0xff, 0x01]),
            (&[0x7f, 0x00], &[0x02, 0x02, 0x7f, 0x00]),
            (&[0x00, 0x00], &[0x02, 0x01, 0x00]),
        ];
        for (magnitude, expected) in cases {
            let mut w = DerWriter::with_capacity(8);
            w.unsigned_integer(magnitude);
            assert_eq!(w.into_vec(), expected, "magnitude {magnitude:02x?}");
        }
    }

    #[test]
    fn extension_marks_critical() {
        let mut w = DerWriter::with_capacity(16);
        w.extension(oid::BASIC_CONSTRAINTS, true, |w| {
            w.nested(TAG_SEQUENCE, |_| {})
        });
        assert_eq!(
            w.into_vec(),
            [
                0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00
            ]
        );
    }
}
