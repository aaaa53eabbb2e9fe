//! A minimal DER writer for what rcgen cannot emit in Intel's layout: certificate extensions
//! in Intel's order, Intel's SGX extension (OID 1.2.840.113741.1.13.1) in PCK certificates,
//! and CRLs with Intel's extension order.

const TAG_BOOLEAN: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_ENUMERATED: u8 = 0x0a;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
const TAG_SEQUENCE: u8 = 0x30;
/// `[0]` primitive: `AuthorityKeyIdentifier.keyIdentifier`.
const TAG_CONTEXT_0_PRIMITIVE: u8 = 0x80;
/// `[0]` constructed, used by `DistributionPoint.distributionPoint` and
/// `DistributionPointName.fullName`.
const TAG_CONTEXT_0_CONSTRUCTED: u8 = 0xa0;
/// `[6]` primitive: `GeneralName.uniformResourceIdentifier`.
const TAG_CONTEXT_6_PRIMITIVE: u8 = 0x86;

/// Intel's SGX extension arc, 1.2.840.113741.1.13.1.
const SGX_EXTENSION: [u64; 9] = [1, 2, 840, 113741, 1, 13, 1, 0, 0];
const SGX_EXTENSION_LEN: usize = 7;

/// OIDs of the standard extensions written as custom extensions.
pub(super) const OID_CRL_DISTRIBUTION_POINTS: &[u64] = &[2, 5, 29, 31];
pub(super) const OID_SUBJECT_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 14];
pub(super) const OID_KEY_USAGE: &[u64] = &[2, 5, 29, 15];
pub(super) const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
pub(super) const OID_SGX_EXTENSION: &[u64] = &[1, 2, 840, 113741, 1, 13, 1];
const OID_ECDSA_WITH_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
const OID_CRL_NUMBER: &[u64] = &[2, 5, 29, 20];
const OID_CRL_REASON: &[u64] = &[2, 5, 29, 21];
const OID_AUTHORITY_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 35];
/// CRLReason keyCompromise, the reason on every entry of Intel's PCK CRLs.
const REASON_KEY_COMPROMISE: u64 = 1;

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = &bytes[skip..];
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

pub(super) fn sequence(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(TAG_SEQUENCE, &parts.concat())
}

fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut content = Vec::new();
    if let [first, second, rest @ ..] = arcs {
        push_base128(&mut content, first * 40 + second);
        for arc in rest {
            push_base128(&mut content, *arc);
        }
    }
    tlv(TAG_OID, &content)
}

fn push_base128(out: &mut Vec<u8>, value: u64) {
    let mut groups = vec![(value & 0x7f) as u8];
    let mut rest = value >> 7;
    while rest > 0 {
        groups.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    groups.reverse();
    out.extend_from_slice(&groups);
}

/// Encodes a non-negative integer in minimal two's complement, so 128 becomes `00 80`.
fn unsigned_content(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    let mut content = bytes[skip..].to_vec();
    if content[0] & 0x80 != 0 {
        content.insert(0, 0);
    }
    content
}

fn integer(value: u64) -> Vec<u8> {
    tlv(TAG_INTEGER, &unsigned_content(value))
}

fn enumerated(value: u64) -> Vec<u8> {
    tlv(TAG_ENUMERATED, &unsigned_content(value))
}

fn boolean(value: bool) -> Vec<u8> {
    tlv(TAG_BOOLEAN, &[if value { 0xff } else { 0x00 }])
}

fn octet_string(bytes: &[u8]) -> Vec<u8> {
    tlv(TAG_OCTET_STRING, bytes)
}

/// Encodes big-endian bytes as a non-negative INTEGER the way X.509 serial numbers are encoded.
/// Leading zeros are dropped, and a zero byte is added when the top bit is set.
fn unsigned_integer_bytes(bytes: &[u8]) -> Vec<u8> {
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let mut content = bytes[skip..].to_vec();
    if content.first().is_none_or(|first| first & 0x80 != 0) {
        content.insert(0, 0);
    }
    tlv(TAG_INTEGER, &content)
}

pub(super) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = vec![0u8];
    content.extend_from_slice(bytes);
    tlv(TAG_BIT_STRING, &content)
}

pub(super) fn ecdsa_with_sha256() -> Vec<u8> {
    sequence(&[oid(OID_ECDSA_WITH_SHA256)])
}

/// Encodes a `Time` as UTCTime for the years 1950 to 2049 and GeneralizedTime otherwise
/// (RFC 5280 section 4.1.2.5).
fn time(moment: time::OffsetDateTime) -> Vec<u8> {
    let year = moment.year();
    let rest = format!(
        "{:02}{:02}{:02}{:02}{:02}Z",
        u8::from(moment.month()),
        moment.day(),
        moment.hour(),
        moment.minute(),
        moment.second()
    );
    if (1950..2050).contains(&year) {
        tlv(TAG_UTC_TIME, format!("{:02}{rest}", year % 100).as_bytes())
    } else {
        tlv(TAG_GENERALIZED_TIME, format!("{year:04}{rest}").as_bytes())
    }
}

/// Encodes the OID 1.2.840.113741.1.13.1.`arc`, with `.sub_arc` appended when given.
fn sgx_oid(arc: u64, sub_arc: Option<u64>) -> Vec<u8> {
    let mut arcs = SGX_EXTENSION;
    arcs[SGX_EXTENSION_LEN] = arc;
    match sub_arc {
        Some(sub_arc) => {
            arcs[SGX_EXTENSION_LEN + 1] = sub_arc;
            oid(&arcs)
        }
        None => oid(&arcs[..=SGX_EXTENSION_LEN]),
    }
}

/// Encodes `CRLDistributionPoints` with one distribution point that has one URI.
pub(super) fn crl_distribution_points(uri: &str) -> Vec<u8> {
    let general_name = tlv(TAG_CONTEXT_6_PRIMITIVE, uri.as_bytes());
    let full_name = tlv(TAG_CONTEXT_0_CONSTRUCTED, &general_name);
    let distribution_point_name = tlv(TAG_CONTEXT_0_CONSTRUCTED, &full_name);
    sequence(&[sequence(&[distribution_point_name])])
}

/// Encodes `SubjectKeyIdentifier`.
pub(super) fn subject_key_identifier(key_id: &[u8]) -> Vec<u8> {
    octet_string(key_id)
}

/// Encodes `KeyUsage` with digitalSignature and nonRepudiation (bits 0 and 1), as in PCK leaf and TCB
/// signing certificates.
pub(super) fn key_usage_signing() -> Vec<u8> {
    tlv(TAG_BIT_STRING, &[0x06, 0xc0])
}

/// Encodes `KeyUsage` with keyCertSign and cRLSign (bits 5 and 6), as in Intel's CA certificates.
pub(super) fn key_usage_ca() -> Vec<u8> {
    tlv(TAG_BIT_STRING, &[0x01, 0x06])
}

/// Encodes `BasicConstraints`: an end entity when `path_len` is `None`, else a CA with that path length.
pub(super) fn basic_constraints(path_len: Option<u8>) -> Vec<u8> {
    match path_len {
        None => sequence(&[]),
        Some(path_len) => sequence(&[boolean(true), integer(u64::from(path_len))]),
    }
}

/// The to-be-signed part of a CRL in the layout of Intel's CRLs: version 2, ecdsa-with-SHA256,
/// entries revoked at `thisUpdate` with reason keyCompromise, and the CRL number before the
/// authority key identifier. The list of entries is left out when empty, as in Intel's root CA
/// CRL.
pub(super) struct CrlFields<'a> {
    /// The issuer's subject `Name`, DER, copied from its certificate.
    pub(super) issuer_name: &'a [u8],
    pub(super) issuer_key_id: &'a [u8],
    pub(super) this_update: time::OffsetDateTime,
    pub(super) next_update: time::OffsetDateTime,
    pub(super) revoked_serials: &'a [Vec<u8>],
}

pub(super) fn crl_tbs(fields: &CrlFields<'_>) -> Vec<u8> {
    let mut parts = vec![
        integer(1),
        ecdsa_with_sha256(),
        fields.issuer_name.to_vec(),
        time(fields.this_update),
        time(fields.next_update),
    ];
    if !fields.revoked_serials.is_empty() {
        let reason = sequence(&[
            oid(OID_CRL_REASON),
            octet_string(&enumerated(REASON_KEY_COMPROMISE)),
        ]);
        let entries: Vec<Vec<u8>> = fields
            .revoked_serials
            .iter()
            .map(|serial| {
                sequence(&[
                    unsigned_integer_bytes(serial),
                    time(fields.this_update),
                    sequence(std::slice::from_ref(&reason)),
                ])
            })
            .collect();
        parts.push(sequence(&entries));
    }
    let crl_number = sequence(&[oid(OID_CRL_NUMBER), octet_string(&integer(1))]);
    let authority_key_id = sequence(&[
        oid(OID_AUTHORITY_KEY_IDENTIFIER),
        octet_string(&sequence(&[tlv(
            TAG_CONTEXT_0_PRIMITIVE,
            fields.issuer_key_id,
        )])),
    ]);
    parts.push(tlv(
        TAG_CONTEXT_0_CONSTRUCTED,
        &sequence(&[crl_number, authority_key_id]),
    ));
    sequence(&parts)
}

/// The SGX-specific values of a PCK certificate.
pub(super) struct SgxExtension<'a> {
    pub(super) ppid: &'a [u8; 16],
    /// CPUSVN component SVNs. The CPUSVN field repeats them byte for byte.
    pub(super) cpu_svn_components: &'a [u8; 16],
    pub(super) pce_svn: u16,
    pub(super) pce_id: &'a [u8; 2],
    pub(super) fmspc: &'a [u8; 6],
    /// Present for certificates issued by the PCK Platform CA (SGX type Scalable).
    pub(super) platform: Option<PlatformFields<'a>>,
}

/// The fields that only PCK Platform CA certificates carry.
pub(super) struct PlatformFields<'a> {
    pub(super) platform_instance_id: &'a [u8; 16],
    pub(super) dynamic_platform: bool,
    pub(super) cached_keys: bool,
    pub(super) smt_enabled: bool,
}

/// Encodes the SGX extension value in the order and with the types Intel's PCK certificates
/// use: PPID, TCB (16 component SVNs as INTEGER, PCESVN, CPUSVN), PCE-ID, FMSPC, SGX type, then
/// for Platform CA certificates PlatformInstanceID and Configuration.
pub(super) fn sgx_extension(fields: &SgxExtension<'_>) -> Vec<u8> {
    let mut tcb = Vec::with_capacity(18);
    for (index, svn) in (1u64..).zip(fields.cpu_svn_components) {
        tcb.push(sequence(&[
            sgx_oid(2, Some(index)),
            integer(u64::from(*svn)),
        ]));
    }
    tcb.push(sequence(&[
        sgx_oid(2, Some(17)),
        integer(u64::from(fields.pce_svn)),
    ]));
    tcb.push(sequence(&[
        sgx_oid(2, Some(18)),
        octet_string(fields.cpu_svn_components),
    ]));

    let mut entries = vec![
        sequence(&[sgx_oid(1, None), octet_string(fields.ppid)]),
        sequence(&[sgx_oid(2, None), sequence(&tcb)]),
        sequence(&[sgx_oid(3, None), octet_string(fields.pce_id)]),
        sequence(&[sgx_oid(4, None), octet_string(fields.fmspc)]),
    ];
    match &fields.platform {
        None => {
            // SGX type 0 is Standard, the type of Processor CA certificates.
            entries.push(sequence(&[sgx_oid(5, None), enumerated(0)]));
        }
        Some(platform) => {
            // SGX type 1 is Scalable, the type of Platform CA certificates.
            entries.push(sequence(&[sgx_oid(5, None), enumerated(1)]));
            entries.push(sequence(&[
                sgx_oid(6, None),
                octet_string(platform.platform_instance_id),
            ]));
            let configuration = sequence(&[
                sequence(&[sgx_oid(7, Some(1)), boolean(platform.dynamic_platform)]),
                sequence(&[sgx_oid(7, Some(2)), boolean(platform.cached_keys)]),
                sequence(&[sgx_oid(7, Some(3)), boolean(platform.smt_enabled)]),
            ]);
            entries.push(sequence(&[sgx_oid(7, None), configuration]));
        }
    }
    sequence(&entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_encodings_are_minimal() {
        assert_eq!(integer(0), [0x02, 0x01, 0x00]);
        assert_eq!(integer(11), [0x02, 0x01, 0x0b]);
        assert_eq!(integer(128), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(integer(255), [0x02, 0x02, 0x00, 0xff]);
        assert_eq!(integer(0x1234), [0x02, 0x02, 0x12, 0x34]);
    }

    #[test]
    fn sgx_oid_encodes_intel_arc() {
        // 1.2.840.113741.1.13.1.2.17, as it appears in Intel's PCK certificates.
        assert_eq!(
            hex::encode(sgx_oid(2, Some(17))),
            "060b2a864886f84d010d010211"
        );
        assert_eq!(hex::encode(sgx_oid(4, None)), "060a2a864886f84d010d0104");
    }

    #[test]
    fn serial_integers_stay_positive() {
        assert_eq!(unsigned_integer_bytes(&[0x00, 0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(
            unsigned_integer_bytes(&[0x80, 0x01]),
            [0x02, 0x03, 0x00, 0x80, 0x01]
        );
        assert_eq!(unsigned_integer_bytes(&[]), [0x02, 0x01, 0x00]);
    }

    #[test]
    fn times_switch_at_2050() {
        let moment = time::OffsetDateTime::from_unix_timestamp(2_524_607_999).expect("time");
        assert_eq!(time(moment), b"\x17\x0d491231235959Z");
        let moment = time::OffsetDateTime::from_unix_timestamp(2_524_608_000).expect("time");
        assert_eq!(time(moment), b"\x18\x0f20500101000000Z");
    }

    #[test]
    fn long_lengths_use_long_form() {
        let encoded = octet_string(&[0u8; 300]);
        assert_eq!(encoded[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(encoded.len(), 304);
    }
}
