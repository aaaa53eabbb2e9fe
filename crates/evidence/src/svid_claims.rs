//! A compact attestation result for SVIDs issued on verified evidence.
//!
//! [`AttestationClaims`] contains what a relying party needs to judge the workload behind an
//! SVID without the evidence itself. These are the TEE kind, its main measurements, the TCB
//! status, the policy version, the SHA-256 of the evidence, the attestation time and the end of
//! the evidence's validity. Two encodings carry the same value.
//!
//! # X.509 extension
//!
//! X.509-SVIDs carry it as a non-critical extension whose OID is [`EXTENSION_OID`], the EAT
//! profile arc [`EAT_PROFILE`](crate::result::EAT_PROFILE) plus `.1`. It is non-critical so that
//! TLS stacks that do not know it still accept the certificate. The extension value is the DER
//! encoding of:
//!
//! ```asn1
//! TwidAttestationClaims ::= SEQUENCE {
//!     version         INTEGER { v1(1) },
//!     kind            UTF8String,       -- "sgx-dcap", "tdx", "sgx-ias", "snp", "nitro", "tpm"
//!     measurements    SEQUENCE SIZE (0..32) OF Measurement,  -- sorted by name, names unique
//!     evidenceSha256  OCTET STRING (SIZE (32)),
//!     attestedAt      INTEGER,          -- Unix seconds
//!     tcbStatus       [0] IMPLICIT UTF8String OPTIONAL,       -- Intel PCS names, "UpToDate"
//!     policyVersion   [1] IMPLICIT INTEGER (0..18446744073709551615) OPTIONAL,
//!     validUntil      [2] IMPLICIT INTEGER OPTIONAL           -- Unix seconds
//! }
//!
//! Measurement ::= SEQUENCE {
//!     name   UTF8String (SIZE (1..32)),  -- a-z, 0-9 and "_", such as "mrtd" or "pcr0"
//!     value  OCTET STRING (SIZE (1..64))
//! }
//! ```
//!
//! Times are Unix seconds between 0 and 253402300799 (the end of year 9999).
//! [`AttestationClaims::from_der`] accepts only this canonical DER: minimal lengths and
//! integers, sorted measurements, version 1 and at most [`MAX_DER_LEN`] bytes. So two SVIDs
//! carry the same claims exactly when their extension values are equal.
//!
//! # JWT claim
//!
//! JWT-SVIDs and workload identity tokens carry the same value as one JSON object under the
//! claim name [`JWT_CLAIM`], which is the extension OID string. That makes it a public claim
//! name in the sense of RFC 7519 section 4.2: a Collision-Resistant Name, for which RFC 7515
//! section 2 lists OIDs and UUIDs. No IANA-registered claim name and no twid claim name has the
//! form of an OID. The object
//! has the members `kind`, `measurements` (name to lowercase hex), `tcb_status`,
//! `policy_version`, `evidence_sha256` (lowercase hex), `attested_at` and `valid_until`, with
//! absent optional values left out. The same limits as in DER apply, and unknown members are
//! rejected.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Claims, Kind, TcbStatus, Verified};

/// The OID of the X.509 extension, the EAT profile OID plus `.1`.
pub const EXTENSION_OID: &str = "2.25.227360298736076670704709277066504449269.1";

/// The content octets of the DER OBJECT IDENTIFIER of [`EXTENSION_OID`] (X.690 section
/// 8.19), for matching certificate extensions. Match on these bytes: x509-parser 0.18 prints
/// arcs over 64 bits as hex, so its dotted string never equals [`EXTENSION_OID`].
pub const EXTENSION_OID_CONTENT: &[u8] = &[
    0x69, 0x82, 0xd6, 0x8c, 0x80, 0x8c, 0xa4, 0xff, 0xda, 0x8e, 0xd5, 0x82, 0xc5, 0xe7, 0xe7, 0xa3,
    0x90, 0xd0, 0xd9, 0x75, 0x01,
];

/// The JWT claim name of the JSON form: the extension OID string.
pub const JWT_CLAIM: &str = EXTENSION_OID;

/// Upper bound on the DER encoding, in bytes. The largest valid value (32 measurements of 64
/// bytes with 32-character names) takes about 3,400 bytes.
pub const MAX_DER_LEN: usize = 4096;

/// Upper bound on the number of measurements.
pub const MAX_MEASUREMENTS: usize = 32;

/// Upper bound on a measurement name, in bytes.
pub const MAX_MEASUREMENT_NAME_LEN: usize = 32;

/// Upper bound on a measurement value, in bytes (before hex encoding).
pub const MAX_MEASUREMENT_LEN: usize = 64;

/// The latest time the claims may hold: 9999-12-31T23:59:59Z, the end of X.509's range.
const MAX_TIME: i64 = 253_402_300_799;

const VERSION: u64 = 1;

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_TCB_STATUS: u8 = 0x80;
const TAG_POLICY_VERSION: u8 = 0x81;
const TAG_VALID_UNTIL: u8 = 0x82;

/// An error from encoding or decoding attestation claims.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SvidClaimsError {
    /// The DER encoding is malformed, not canonical or too large.
    #[error("invalid attestation claims DER: {0}")]
    Der(String),
    /// The JSON form is malformed or has unknown members.
    #[error("invalid attestation claims JSON: {0}")]
    Json(String),
    /// A value breaks a limit of the encoding, such as a measurement name or a time range.
    #[error("invalid attestation claims: {0}")]
    Invalid(String),
}

/// A compact attestation result for an SVID: what the evidence showed and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationClaims {
    /// The evidence kind.
    pub kind: Kind,
    /// The main measurements by name, as lowercase hex: `mrenclave` and `mrsigner` for SGX,
    /// `mrtd` and `rtmr0` to `rtmr3` for TDX, `measurement` for SEV-SNP, `pcr0`, `pcr1`, `pcr2`
    /// and `pcr8` for Nitro, and `pcr_digest` for TPM.
    pub measurements: BTreeMap<String, String>,
    /// The TCB status, for kinds that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcb_status: Option<String>,
    /// The version of the policy that accepted the evidence, when the policy is versioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// SHA-256 of the evidence bytes as received.
    #[serde(with = "hex_array")]
    pub evidence_sha256: [u8; 32],
    /// When the evidence was verified, in Unix seconds.
    pub attested_at: i64,
    /// The end of the evidence's validity (certificates, CRLs and collateral), in Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<i64>,
}

impl AttestationClaims {
    /// Builds the claims of verified evidence. `attested_at` is the verification time in Unix
    /// seconds and `policy_version` the version of the policy that accepted the evidence.
    pub fn from_verified(
        verified: &Verified,
        attested_at: i64,
        policy_version: Option<u64>,
    ) -> Self {
        Self {
            kind: verified.kind,
            measurements: main_measurements(&verified.claims),
            tcb_status: verified.tcb_status.map(|status| status.as_str().to_owned()),
            policy_version,
            evidence_sha256: verified.evidence_sha256,
            attested_at,
            valid_until: verified.valid_until,
        }
    }

    /// Checks the limits that both encodings enforce.
    ///
    /// # Errors
    /// Returns [`SvidClaimsError::Invalid`] naming the first value out of its limits.
    pub fn validate(&self) -> Result<(), SvidClaimsError> {
        if self.measurements.len() > MAX_MEASUREMENTS {
            return Err(invalid(format!(
                "{} measurements, the maximum is {MAX_MEASUREMENTS}",
                self.measurements.len()
            )));
        }
        for (name, value) in &self.measurements {
            check_measurement_name(name)?;
            measurement_bytes(name, value)?;
        }
        if let Some(status) = &self.tcb_status {
            status
                .parse::<TcbStatus>()
                .map_err(|_| invalid(format!("unknown TCB status {status:?}")))?;
        }
        check_time("attested_at", self.attested_at)?;
        if let Some(until) = self.valid_until {
            check_time("valid_until", until)?;
        }
        Ok(())
    }

    /// Encodes the claims as the DER value of the X.509 extension.
    ///
    /// # Errors
    /// Returns [`SvidClaimsError::Invalid`] when [`validate`](Self::validate) fails.
    pub fn to_der(&self) -> Result<Vec<u8>, SvidClaimsError> {
        self.validate()?;
        let mut body = Vec::with_capacity(256);
        write_tlv(&mut body, TAG_INTEGER, &unsigned_content(VERSION));
        write_tlv(&mut body, TAG_UTF8_STRING, self.kind.as_str().as_bytes());

        let mut measurements = Vec::new();
        for (name, value) in &self.measurements {
            let mut entry = Vec::new();
            write_tlv(&mut entry, TAG_UTF8_STRING, name.as_bytes());
            write_tlv(
                &mut entry,
                TAG_OCTET_STRING,
                &measurement_bytes(name, value)?,
            );
            write_tlv(&mut measurements, TAG_SEQUENCE, &entry);
        }
        write_tlv(&mut body, TAG_SEQUENCE, &measurements);

        write_tlv(&mut body, TAG_OCTET_STRING, &self.evidence_sha256);
        write_tlv(&mut body, TAG_INTEGER, &signed_content(self.attested_at));
        if let Some(status) = &self.tcb_status {
            write_tlv(&mut body, TAG_TCB_STATUS, status.as_bytes());
        }
        if let Some(version) = self.policy_version {
            write_tlv(&mut body, TAG_POLICY_VERSION, &unsigned_content(version));
        }
        if let Some(until) = self.valid_until {
            write_tlv(&mut body, TAG_VALID_UNTIL, &signed_content(until));
        }
        let mut der = Vec::with_capacity(body.len() + 4);
        write_tlv(&mut der, TAG_SEQUENCE, &body);
        Ok(der)
    }

    /// Decodes the DER value of the X.509 extension, accepting only the canonical encoding
    /// that [`to_der`](Self::to_der) writes.
    ///
    /// # Errors
    /// Returns [`SvidClaimsError::Der`] for malformed, non-canonical or oversized DER, an
    /// unknown version or kind, and trailing bytes, and [`SvidClaimsError::Invalid`] when a
    /// value breaks a limit.
    pub fn from_der(der: &[u8]) -> Result<Self, SvidClaimsError> {
        if der.len() > MAX_DER_LEN {
            return Err(der_error(format!(
                "{} bytes, the maximum is {MAX_DER_LEN}",
                der.len()
            )));
        }
        let mut outer = DerReader::new(der);
        let body = outer.expect(TAG_SEQUENCE, "TwidAttestationClaims")?;
        outer.finish("TwidAttestationClaims")?;

        let mut fields = DerReader::new(body);
        let version = read_unsigned(fields.expect(TAG_INTEGER, "version")?, "version")?;
        if version != VERSION {
            return Err(der_error(format!(
                "version {version} is not supported, expected {VERSION}"
            )));
        }
        let kind_text = utf8(fields.expect(TAG_UTF8_STRING, "kind")?, "kind")?;
        let kind = kind_text
            .parse::<Kind>()
            .map_err(|_| der_error(format!("unknown evidence kind {kind_text:?}")))?;
        let measurements = read_measurements(fields.expect(TAG_SEQUENCE, "measurements")?)?;
        let digest = fields.expect(TAG_OCTET_STRING, "evidenceSha256")?;
        let evidence_sha256: [u8; 32] = digest.try_into().map_err(|_| {
            der_error(format!(
                "evidenceSha256 has {} bytes, expected 32",
                digest.len()
            ))
        })?;
        let attested_at = read_signed(fields.expect(TAG_INTEGER, "attestedAt")?, "attestedAt")?;

        let tcb_status = fields
            .optional(TAG_TCB_STATUS)?
            .map(|content| utf8(content, "tcbStatus").map(str::to_owned))
            .transpose()?;
        let policy_version = fields
            .optional(TAG_POLICY_VERSION)?
            .map(|content| read_unsigned(content, "policyVersion"))
            .transpose()?;
        let valid_until = fields
            .optional(TAG_VALID_UNTIL)?
            .map(|content| read_signed(content, "validUntil"))
            .transpose()?;
        fields.finish("TwidAttestationClaims fields")?;

        let claims = Self {
            kind,
            measurements,
            tcb_status,
            policy_version,
            evidence_sha256,
            attested_at,
            valid_until,
        };
        claims.validate()?;
        Ok(claims)
    }

    /// Finds and decodes the extension in a DER certificate. Returns `None` when the
    /// certificate has no such extension.
    ///
    /// # Errors
    /// Returns [`SvidClaimsError::Der`] when the certificate does not parse or the extension
    /// is marked critical, and the errors of [`from_der`](Self::from_der).
    pub fn from_certificate(cert_der: &[u8]) -> Result<Option<Self>, SvidClaimsError> {
        use x509_parser::prelude::FromDer;

        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
            .map_err(|error| der_error(format!("certificate does not parse: {error}")))?;
        let Some(extension) = cert
            .extensions()
            .iter()
            .find(|extension| extension.oid.as_bytes() == EXTENSION_OID_CONTENT)
        else {
            return Ok(None);
        };
        if extension.critical {
            return Err(der_error(
                "the extension is marked critical; twid issues it as non-critical",
            ));
        }
        Self::from_der(extension.value).map(Some)
    }

    /// Encodes the claims as the JSON object of the JWT claim.
    ///
    /// # Errors
    /// Returns [`SvidClaimsError::Invalid`] when [`validate`](Self::validate) fails.
    pub fn to_json(&self) -> Result<Value, SvidClaimsError> {
        self.validate()?;
        serde_json::to_value(self).map_err(|error| SvidClaimsError::Json(error.to_string()))
    }

    /// Decodes the JSON object of the JWT claim.
    ///
    /// # Errors
    /// Returns [`SvidClaimsError::Json`] for a wrong shape or unknown member, and
    /// [`SvidClaimsError::Invalid`] when a value breaks a limit.
    pub fn from_json(value: &Value) -> Result<Self, SvidClaimsError> {
        let claims =
            Self::deserialize(value).map_err(|error| SvidClaimsError::Json(error.to_string()))?;
        claims.validate()?;
        Ok(claims)
    }

    /// Returns a claims set with the one member [`JWT_CLAIM`], ready to pass as the extra
    /// claims of a JWT-SVID.
    ///
    /// # Errors
    /// Returns [`SvidClaimsError::Invalid`] when [`validate`](Self::validate) fails.
    pub fn to_jwt_claims(&self) -> Result<Map<String, Value>, SvidClaimsError> {
        let mut claims = Map::new();
        claims.insert(JWT_CLAIM.to_owned(), self.to_json()?);
        Ok(claims)
    }

    /// Reads the [`JWT_CLAIM`] member of a JWT claims set. Returns `None` when it is absent.
    ///
    /// # Errors
    /// Returns the errors of [`from_json`](Self::from_json).
    pub fn from_jwt_claims(claims: &Map<String, Value>) -> Result<Option<Self>, SvidClaimsError> {
        claims.get(JWT_CLAIM).map(Self::from_json).transpose()
    }
}

/// Picks the measurements that identify the attested code or image for each kind.
fn main_measurements(claims: &Claims) -> BTreeMap<String, String> {
    let mut measurements = BTreeMap::new();
    let mut add = |name: &str, value: &[u8]| {
        measurements.insert(name.to_owned(), hex::encode(value));
    };
    match claims {
        Claims::Sgx(c) => {
            add("mrenclave", &c.mr_enclave);
            add("mrsigner", &c.mr_signer);
        }
        Claims::Tdx(c) => {
            add("mrtd", &c.mr_td);
            for (index, rtmr) in c.rtmr.iter().enumerate() {
                add(&format!("rtmr{index}"), rtmr);
            }
        }
        Claims::Snp(c) => add("measurement", &c.measurement),
        Claims::Nitro(c) => {
            // PCR0-2 measure the enclave image, kernel and application, and PCR8 the signing
            // certificate of the image.
            for index in [0u8, 1, 2, 8] {
                if let Some(pcr) = c.pcrs.get(&index).filter(|pcr| !pcr.is_empty()) {
                    add(&format!("pcr{index}"), pcr);
                }
            }
        }
        Claims::Tpm(c) => {
            if !c.pcr_digest.is_empty() {
                add("pcr_digest", &c.pcr_digest);
            }
        }
    }
    measurements
}

fn invalid(message: String) -> SvidClaimsError {
    SvidClaimsError::Invalid(message)
}

fn der_error(message: impl Into<String>) -> SvidClaimsError {
    SvidClaimsError::Der(message.into())
}

fn check_measurement_name(name: &str) -> Result<(), SvidClaimsError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_MEASUREMENT_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid measurement name {name:?}: expected 1 to {MAX_MEASUREMENT_NAME_LEN} \
             characters from a-z, 0-9 and `_`"
        )))
    }
}

/// Decodes a measurement's lowercase hex, which must hold 1 to 64 bytes.
fn measurement_bytes(name: &str, value: &str) -> Result<Vec<u8>, SvidClaimsError> {
    let lowercase = !value.bytes().any(|b| b.is_ascii_uppercase());
    let bytes = hex::decode(value)
        .ok()
        .filter(|bytes| lowercase && !bytes.is_empty() && bytes.len() <= MAX_MEASUREMENT_LEN);
    bytes.ok_or_else(|| {
        invalid(format!(
            "measurement {name:?} is not 1 to {MAX_MEASUREMENT_LEN} bytes of lowercase hex"
        ))
    })
}

fn check_time(field: &str, seconds: i64) -> Result<(), SvidClaimsError> {
    if (0..=MAX_TIME).contains(&seconds) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} {seconds} is outside 0..={MAX_TIME} Unix seconds"
        )))
    }
}

fn read_measurements(content: &[u8]) -> Result<BTreeMap<String, String>, SvidClaimsError> {
    let mut reader = DerReader::new(content);
    let mut measurements = BTreeMap::new();
    let mut previous: Option<&str> = None;
    while !reader.is_empty() {
        if measurements.len() == MAX_MEASUREMENTS {
            return Err(der_error(format!(
                "more than {MAX_MEASUREMENTS} measurements"
            )));
        }
        let mut entry = DerReader::new(reader.expect(TAG_SEQUENCE, "Measurement")?);
        let name = utf8(entry.expect(TAG_UTF8_STRING, "Measurement name")?, "name")?;
        let value = entry.expect(TAG_OCTET_STRING, "Measurement value")?;
        entry.finish("Measurement")?;
        // Sorted, unique names make the encoding canonical: one value, one DER.
        if previous.is_some_and(|previous| previous >= name) {
            return Err(der_error(format!(
                "measurement {name:?} is out of order or repeated; names must be sorted and unique"
            )));
        }
        previous = Some(name);
        measurements.insert(name.to_owned(), hex::encode(value));
    }
    Ok(measurements)
}

fn utf8<'a>(content: &'a [u8], field: &str) -> Result<&'a str, SvidClaimsError> {
    std::str::from_utf8(content).map_err(|_| der_error(format!("{field} is not valid UTF-8")))
}

/// Checks that INTEGER content octets are present and minimal, as DER requires.
fn check_integer(content: &[u8], field: &str) -> Result<(), SvidClaimsError> {
    let minimal = match content {
        [] => false,
        [0x00, next, ..] => next & 0x80 != 0,
        [0xff, next, ..] => next & 0x80 == 0,
        _ => true,
    };
    if minimal {
        Ok(())
    } else {
        Err(der_error(format!("{field} is not a minimal DER INTEGER")))
    }
}

fn read_signed(content: &[u8], field: &str) -> Result<i64, SvidClaimsError> {
    check_integer(content, field)?;
    if content.len() > 8 {
        return Err(der_error(format!("{field} does not fit in 64 bits")));
    }
    let fill = if content[0] & 0x80 != 0 { 0xff } else { 0x00 };
    let mut bytes = [fill; 8];
    bytes[8 - content.len()..].copy_from_slice(content);
    Ok(i64::from_be_bytes(bytes))
}

fn read_unsigned(content: &[u8], field: &str) -> Result<u64, SvidClaimsError> {
    check_integer(content, field)?;
    if content[0] & 0x80 != 0 {
        return Err(der_error(format!("{field} is negative")));
    }
    let magnitude = content.strip_prefix(&[0x00]).unwrap_or(content);
    if magnitude.len() > 8 {
        return Err(der_error(format!("{field} does not fit in 64 bits")));
    }
    let mut bytes = [0u8; 8];
    bytes[8 - magnitude.len()..].copy_from_slice(magnitude);
    Ok(u64::from_be_bytes(bytes))
}

/// Returns the minimal two's-complement content octets of a signed integer.
fn signed_content(value: i64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let redundant = (bytes[start] == 0x00 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    bytes[start..].to_vec()
}

/// Returns the minimal content octets of a non-negative integer.
fn unsigned_content(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    let mut content = Vec::with_capacity(9);
    if bytes[start] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(&bytes[start..]);
    content
}

fn write_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

/// A reader of consecutive DER elements with one-byte tags and definite, minimal lengths.
struct DerReader<'a> {
    rest: &'a [u8],
}

impl<'a> DerReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads the next element, which must have `tag`, and returns its content.
    fn expect(&mut self, tag: u8, field: &str) -> Result<&'a [u8], SvidClaimsError> {
        match self.peek_tag() {
            None => Err(der_error(format!("{field} is missing"))),
            Some(found) if found != tag => Err(der_error(format!(
                "{field} has tag 0x{found:02x}, expected 0x{tag:02x}"
            ))),
            Some(_) => self.read_content(field),
        }
    }

    /// Reads the next element when it has `tag`.
    fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, SvidClaimsError> {
        if self.peek_tag() == Some(tag) {
            self.read_content("optional field").map(Some)
        } else {
            Ok(None)
        }
    }

    fn finish(&self, field: &str) -> Result<(), SvidClaimsError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(der_error(format!(
                "{} unexpected bytes after {field}",
                self.rest.len()
            )))
        }
    }

    fn read_content(&mut self, field: &str) -> Result<&'a [u8], SvidClaimsError> {
        let truncated = || der_error(format!("{field} is truncated"));
        let (&first, after_tag) = self
            .rest
            .get(1..)
            .and_then(|after| after.first().map(|b| (b, after)))
            .ok_or_else(truncated)?;
        let (len, header_rest) = if first < 0x80 {
            (usize::from(first), &after_tag[1..])
        } else {
            // Two length octets cover MAX_DER_LEN, so longer forms cannot occur in valid input.
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 2 {
                return Err(der_error(format!("{field} has an unsupported length form")));
            }
            let octets = after_tag.get(1..1 + count).ok_or_else(truncated)?;
            let len = octets
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b));
            if octets[0] == 0 || len < 0x80 {
                return Err(der_error(format!("{field} has a non-minimal length")));
            }
            (len, &after_tag[1 + count..])
        };
        if header_rest.len() < len {
            return Err(truncated());
        }
        let (content, rest) = header_rest.split_at(len);
        self.rest = rest;
        Ok(content)
    }
}

/// Serde for a 32-byte array as lowercase hex.
mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &[u8; 32],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(value))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(
                "evidence_sha256 must be lowercase hex",
            ));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&text, &mut bytes)
            .map_err(|_| serde::de::Error::custom("evidence_sha256 must be 64 hex characters"))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::claims::{
        NitroClaims, SgxClaims, SnpClaims, SnpSigningKey, SnpTcb, TdxClaims, TpmClaims,
    };

    fn verified(kind: Kind, claims: Claims, tcb_status: Option<TcbStatus>) -> Verified {
        Verified {
            kind,
            claims,
            tcb_status,
            advisory_ids: Vec::new(),
            collateral_issued_at: None,
            valid_until: Some(1_800_000_000),
            evidence_sha256: [0x5a; 32],
        }
    }

    fn sgx() -> Verified {
        let claims = Claims::Sgx(SgxClaims {
            mr_enclave: [0x11; 32],
            mr_signer: [0x22; 32],
            isv_prod_id: 1,
            isv_svn: 2,
            attributes: [0; 16],
            cpu_svn: [0; 16],
            report_data: [0; 64],
            debug: false,
            platform: None,
        });
        verified(Kind::SgxDcap, claims, Some(TcbStatus::SWHardeningNeeded))
    }

    fn tdx() -> Verified {
        let claims = Claims::Tdx(TdxClaims {
            tee_tcb_svn: [0; 16],
            mr_seam: [0; 48],
            mr_signer_seam: [0; 48],
            seam_attributes: [0; 8],
            td_attributes: [0; 8],
            xfam: [0; 8],
            mr_td: [0x33; 48],
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            rtmr: [[0x40; 48], [0x41; 48], [0x42; 48], [0x43; 48]],
            report_data: [0; 64],
            tee_tcb_svn2: None,
            mr_service_td: None,
            debug: false,
            platform: None,
        });
        verified(Kind::Tdx, claims, Some(TcbStatus::UpToDate))
    }

    fn snp() -> Verified {
        let tcb = SnpTcb {
            bootloader: 1,
            tee: 2,
            snp: 3,
            microcode: 4,
            fmc: None,
        };
        let claims = Claims::Snp(SnpClaims {
            version: 3,
            guest_svn: 1,
            policy: 0x30000,
            debug: false,
            vmpl: 0,
            family_id: [0; 16],
            image_id: [0; 16],
            measurement: [0x44; 48],
            host_data: [0; 32],
            id_key_digest: [0; 48],
            report_data: [0; 64],
            chip_id: [0; 64],
            report_id: [0; 32],
            reported_tcb: tcb,
            committed_tcb: tcb,
            launch_tcb: tcb,
            current_tcb: tcb,
            signing_key: SnpSigningKey::Vcek,
            product: "Genoa".to_owned(),
        });
        verified(Kind::Snp, claims, None)
    }

    fn nitro() -> Verified {
        let pcrs: BTreeMap<u8, Vec<u8>> = (0u8..16).map(|index| (index, vec![index; 48])).collect();
        let claims = Claims::Nitro(NitroClaims {
            module_id: "i-0-enc0".to_owned(),
            digest: "SHA384".to_owned(),
            timestamp_ms: 1_700_000_000_000,
            pcrs,
            public_key: None,
            user_data: None,
            nonce: None,
            debug: false,
        });
        verified(Kind::Nitro, claims, None)
    }

    fn tpm() -> Verified {
        let claims = Claims::Tpm(TpmClaims {
            pcr_bank: "sha256".to_owned(),
            pcrs: BTreeMap::from([(0, vec![0x01; 32])]),
            extra_data: vec![0; 32],
            pcr_digest: vec![0x66; 32],
            clock: 1,
            reset_count: 0,
            restart_count: 0,
            safe: true,
            firmware_version: 1,
            ak_sha256: [0; 32],
            replayed_pcrs: Vec::new(),
        });
        verified(Kind::Tpm, claims, None)
    }

    fn sample() -> AttestationClaims {
        AttestationClaims::from_verified(&tdx(), 1_750_000_000, Some(7))
    }

    #[test]
    fn extension_oid_extends_eat_profile() {
        assert_eq!(EXTENSION_OID, format!("{}.1", crate::result::EAT_PROFILE));
        assert_eq!(JWT_CLAIM, EXTENSION_OID);
    }

    /// Encodes the dotted OID independently: the first two arcs as 40 * 2 + 25, then every
    /// arc in base 128 with the high bit on all but its last octet.
    #[test]
    fn extension_oid_content_matches_dotted() {
        let arcs: Vec<u128> = EXTENSION_OID
            .split('.')
            .map(|arc| arc.parse().unwrap())
            .collect();
        let mut content: Vec<u8> = Vec::new();
        for arc in std::iter::once(arcs[0] * 40 + arcs[1]).chain(arcs[2..].iter().copied()) {
            let mut groups = vec![(arc & 0x7f) as u8];
            let mut rest = arc >> 7;
            while rest > 0 {
                groups.push(0x80 | (rest & 0x7f) as u8);
                rest >>= 7;
            }
            content.extend(groups.iter().rev());
        }
        assert_eq!(content, EXTENSION_OID_CONTENT);
    }

    #[test]
    fn from_verified_picks_main_measurements() {
        let cases: [(Verified, &[&str]); 5] = [
            (sgx(), &["mrenclave", "mrsigner"]),
            (tdx(), &["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"]),
            (snp(), &["measurement"]),
            (nitro(), &["pcr0", "pcr1", "pcr2", "pcr8"]),
            (tpm(), &["pcr_digest"]),
        ];
        for (verified, names) in cases {
            let claims = AttestationClaims::from_verified(&verified, 1_750_000_000, None);
            let found: Vec<&str> = claims.measurements.keys().map(String::as_str).collect();
            assert_eq!(found, names, "kind {}", verified.kind);
            assert_eq!(claims.kind, verified.kind);
            assert_eq!(claims.evidence_sha256, verified.evidence_sha256);
            assert_eq!(claims.valid_until, verified.valid_until);
            assert_eq!(claims.attested_at, 1_750_000_000);
        }
        let sgx = AttestationClaims::from_verified(&sgx(), 0, Some(3));
        assert_eq!(sgx.measurements["mrenclave"], "11".repeat(32));
        assert_eq!(sgx.tcb_status.as_deref(), Some("SWHardeningNeeded"));
        assert_eq!(sgx.policy_version, Some(3));
        let nitro = AttestationClaims::from_verified(&nitro(), 0, None);
        assert_eq!(nitro.measurements["pcr8"], "08".repeat(48));
        assert_eq!(nitro.tcb_status, None);
    }

    #[test]
    fn der_round_trips_every_kind() {
        for verified in [sgx(), tdx(), snp(), nitro(), tpm()] {
            for policy_version in [None, Some(0), Some(127), Some(128), Some(u64::MAX)] {
                let claims =
                    AttestationClaims::from_verified(&verified, 1_750_000_000, policy_version);
                let der = claims.to_der().unwrap();
                assert!(der.len() <= MAX_DER_LEN);
                assert_eq!(AttestationClaims::from_der(&der).unwrap(), claims);
            }
        }
    }

    #[test]
    fn der_matches_known_encoding() {
        let claims = AttestationClaims {
            kind: Kind::Snp,
            measurements: BTreeMap::from([("measurement".to_owned(), "abcd".to_owned())]),
            tcb_status: Some("UpToDate".to_owned()),
            policy_version: Some(200),
            evidence_sha256: [0x01; 32],
            attested_at: 1,
            valid_until: None,
        };
        let mut expected = vec![0x30, 0x50, 0x02, 0x01, 0x01, 0x0c, 0x03, b's', b'n', b'p'];
        expected.extend([0x30, 0x13, 0x30, 0x11, 0x0c, 0x0b]);
        expected.extend(b"measurement");
        expected.extend([0x04, 0x02, 0xab, 0xcd]);
        expected.extend([0x04, 0x20]);
        expected.extend([0x01; 32]);
        expected.extend([0x02, 0x01, 0x01]);
        expected.extend([0x80, 0x08]);
        expected.extend(b"UpToDate");
        expected.extend([0x81, 0x02, 0x00, 0xc8]);
        assert_eq!(claims.to_der().unwrap(), expected);
    }

    #[test]
    fn der_all_optional_fields_absent() {
        let mut claims = sample();
        claims.tcb_status = None;
        claims.policy_version = None;
        claims.valid_until = None;
        claims.measurements.clear();
        let der = claims.to_der().unwrap();
        assert_eq!(AttestationClaims::from_der(&der).unwrap(), claims);
    }

    #[test]
    fn der_largest_value_fits_limit() {
        let mut claims = sample();
        claims.measurements = (0..MAX_MEASUREMENTS)
            .map(|index| (format!("{index:0>32}"), "ff".repeat(MAX_MEASUREMENT_LEN)))
            .collect();
        let der = claims.to_der().unwrap();
        assert!(der.len() <= MAX_DER_LEN, "{} bytes", der.len());
        assert_eq!(AttestationClaims::from_der(&der).unwrap(), claims);
    }

    #[test]
    fn der_rejects_every_truncation() {
        let der = sample().to_der().unwrap();
        for len in 0..der.len() {
            assert!(
                AttestationClaims::from_der(&der[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
    }

    #[test]
    fn der_rejects_trailing_bytes() {
        let mut der = sample().to_der().unwrap();
        der.push(0);
        let error = AttestationClaims::from_der(&der).unwrap_err();
        assert!(matches!(error, SvidClaimsError::Der(_)), "{error}");
    }

    #[test]
    fn der_bit_flips_never_panic() {
        let der = sample().to_der().unwrap();
        for index in 0..der.len() {
            for bit in 0..8 {
                let mut mutated = der.clone();
                mutated[index] ^= 1 << bit;
                // A flip inside a measurement or the digest can still decode. Any decoded
                // result must then re-encode to the same bytes.
                if let Ok(claims) = AttestationClaims::from_der(&mutated) {
                    assert_eq!(claims.to_der().unwrap(), mutated);
                }
            }
        }
    }

    /// Re-encodes the sample with `edit` applied to its field list, for malformed inputs.
    fn sample_with_fields(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let der = sample().to_der().unwrap();
        let mut reader = DerReader::new(&der);
        let mut body = reader.expect(TAG_SEQUENCE, "outer").unwrap().to_vec();
        edit(&mut body);
        let mut out = Vec::new();
        write_tlv(&mut out, TAG_SEQUENCE, &body);
        out
    }

    #[test]
    fn der_rejects_noncanonical_forms() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("version 2", sample_with_fields(|body| body[2] = 0x02)),
            (
                "non-minimal version",
                sample_with_fields(|body| {
                    body.splice(0..3, [0x02, 0x02, 0x00, 0x01]);
                }),
            ),
            (
                "long-form short length",
                sample_with_fields(|body| {
                    body.splice(0..3, [0x02, 0x81, 0x01, 0x01]);
                }),
            ),
            (
                "unknown kind",
                sample_with_fields(|body| body[5..8].copy_from_slice(b"tdy")),
            ),
        ];
        for (name, der) in cases {
            assert!(
                AttestationClaims::from_der(&der).is_err(),
                "{name} accepted"
            );
        }
    }

    #[test]
    fn der_rejects_unsorted_measurements() {
        let mut body = Vec::new();
        write_tlv(&mut body, TAG_INTEGER, &[1]);
        write_tlv(&mut body, TAG_UTF8_STRING, b"tdx");
        let mut measurements = Vec::new();
        for name in [&b"rtmr0"[..], b"mrtd"] {
            let mut entry = Vec::new();
            write_tlv(&mut entry, TAG_UTF8_STRING, name);
            write_tlv(&mut entry, TAG_OCTET_STRING, &[1]);
            write_tlv(&mut measurements, TAG_SEQUENCE, &entry);
        }
        write_tlv(&mut body, TAG_SEQUENCE, &measurements);
        write_tlv(&mut body, TAG_OCTET_STRING, &[0; 32]);
        write_tlv(&mut body, TAG_INTEGER, &[1]);
        let mut der = Vec::new();
        write_tlv(&mut der, TAG_SEQUENCE, &body);
        let error = AttestationClaims::from_der(&der).unwrap_err();
        assert!(error.to_string().contains("sorted"), "{error}");
    }

    #[test]
    fn der_rejects_oversized_input() {
        let der = vec![0u8; MAX_DER_LEN + 1];
        let error = AttestationClaims::from_der(&der).unwrap_err();
        assert!(error.to_string().contains("maximum"), "{error}");
    }

    #[test]
    fn integers_encode_minimally() {
        for value in [
            0i64,
            1,
            127,
            128,
            255,
            256,
            -1,
            -128,
            -129,
            i64::MAX,
            i64::MIN,
        ] {
            let content = signed_content(value);
            check_integer(&content, "value").unwrap();
            assert_eq!(read_signed(&content, "value").unwrap(), value);
        }
        for value in [0u64, 127, 128, 65_535, u64::MAX] {
            let content = unsigned_content(value);
            check_integer(&content, "value").unwrap();
            assert_eq!(read_unsigned(&content, "value").unwrap(), value);
        }
        assert!(read_unsigned(&[0xff], "value").is_err());
        assert!(read_signed(&[0x00, 0x01], "value").is_err());
        assert!(read_signed(&[0xff, 0xff], "value").is_err());
        assert!(read_signed(&[], "value").is_err());
    }

    #[test]
    fn validate_rejects_out_of_limit_values() {
        let mut bad_name = sample();
        bad_name
            .measurements
            .insert("MRTD".to_owned(), "00".to_owned());
        let mut long_name = sample();
        long_name
            .measurements
            .insert("a".repeat(MAX_MEASUREMENT_NAME_LEN + 1), "00".to_owned());
        let mut uppercase_hex = sample();
        uppercase_hex
            .measurements
            .insert("x".to_owned(), "AB".to_owned());
        let mut empty_value = sample();
        empty_value
            .measurements
            .insert("x".to_owned(), String::new());
        let mut long_value = sample();
        long_value
            .measurements
            .insert("x".to_owned(), "00".repeat(MAX_MEASUREMENT_LEN + 1));
        let mut too_many = sample();
        too_many.measurements = (0..=MAX_MEASUREMENTS)
            .map(|index| (format!("m{index}"), "00".to_owned()))
            .collect();
        let mut status = sample();
        status.tcb_status = Some("Fine".to_owned());
        let mut negative_time = sample();
        negative_time.attested_at = -1;
        let mut late_until = sample();
        late_until.valid_until = Some(MAX_TIME + 1);
        for (name, claims) in [
            ("uppercase name", bad_name),
            ("long name", long_name),
            ("uppercase hex", uppercase_hex),
            ("empty value", empty_value),
            ("long value", long_value),
            ("too many", too_many),
            ("unknown TCB status", status),
            ("negative time", negative_time),
            ("late valid_until", late_until),
        ] {
            let error = claims.to_der().unwrap_err();
            assert!(
                matches!(error, SvidClaimsError::Invalid(_)),
                "{name}: {error}"
            );
            assert!(claims.to_json().is_err(), "{name} encoded as JSON");
        }
    }

    #[test]
    fn json_round_trips_under_claim_name() {
        let claims = sample();
        let jwt_claims = claims.to_jwt_claims().unwrap();
        assert_eq!(jwt_claims.len(), 1);
        let value = &jwt_claims[JWT_CLAIM];
        assert_eq!(value["kind"], "tdx");
        assert_eq!(value["tcb_status"], "UpToDate");
        assert_eq!(value["policy_version"], 7);
        assert_eq!(value["attested_at"], 1_750_000_000);
        assert_eq!(value["valid_until"], 1_800_000_000);
        assert_eq!(value["evidence_sha256"], "5a".repeat(32));
        assert_eq!(value["measurements"]["mrtd"], "33".repeat(48));
        assert_eq!(
            AttestationClaims::from_jwt_claims(&jwt_claims).unwrap(),
            Some(claims)
        );
        assert_eq!(
            AttestationClaims::from_jwt_claims(&Map::new()).unwrap(),
            None
        );
    }

    #[test]
    fn json_omits_absent_optionals() {
        let mut claims = sample();
        claims.tcb_status = None;
        claims.policy_version = None;
        claims.valid_until = None;
        let value = claims.to_json().unwrap();
        let object = value.as_object().unwrap();
        for member in ["tcb_status", "policy_version", "valid_until"] {
            assert!(!object.contains_key(member), "{member} present");
        }
        assert_eq!(AttestationClaims::from_json(&value).unwrap(), claims);
    }

    #[test]
    fn json_rejects_bad_shapes() {
        let good = sample().to_json().unwrap();
        let mut unknown = good.clone();
        unknown["extra"] = json!(1);
        let mut short_digest = good.clone();
        short_digest["evidence_sha256"] = json!("00");
        let mut upper_digest = good.clone();
        upper_digest["evidence_sha256"] = json!("5A".repeat(32));
        let mut bad_kind = good.clone();
        bad_kind["kind"] = json!("sgx");
        let mut string_time = good.clone();
        string_time["attested_at"] = json!("1750000000");
        let mut bad_measurement = good.clone();
        bad_measurement["measurements"]["mrtd"] = json!("xyz");
        for (name, value) in [
            ("unknown member", unknown),
            ("short digest", short_digest),
            ("uppercase digest", upper_digest),
            ("unknown kind", bad_kind),
            ("string time", string_time),
            ("bad measurement", bad_measurement),
            ("not an object", json!("tdx")),
        ] {
            assert!(
                AttestationClaims::from_json(&value).is_err(),
                "{name} accepted"
            );
        }
    }
}
