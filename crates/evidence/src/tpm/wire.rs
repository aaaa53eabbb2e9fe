//! Unmarshalling of the TPM 2.0 structures a quote carries (TPM 2.0 Library, Part 2):
//! TPMS_ATTEST, TPMT_SIGNATURE and TPMT_PUBLIC. TPM structures are big-endian.

use aws_lc_rs::digest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as X509PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::VerifyError;

/// TPM_GENERATED_VALUE: the first field of every structure the TPM signs itself.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

const TPM_ALG_RSA: u16 = 0x0001;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ALG_RSASSA: u16 = 0x0014;
const TPM_ALG_RSAPSS: u16 = 0x0016;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_ECDAA: u16 = 0x001a;
const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ECC_NIST_P256: u16 = 0x0003;
const TPM_ECC_NIST_P384: u16 = 0x0004;

/// TPMA_OBJECT bits an attestation key must have: `restricted` (the key signs only data the
/// TPM generated itself) and `sign`.
pub const TPMA_OBJECT_RESTRICTED: u32 = 0x0001_0000;
pub const TPMA_OBJECT_SIGN: u32 = 0x0004_0000;

/// Largest TPM2B_NAME: a 2-byte algorithm ID and a SHA-512 digest.
const MAX_NAME_LEN: usize = 2 + 64;
/// Largest TPM2B_DATA: sizeof(TPMT_HA) with SHA-512.
const MAX_EXTRA_DATA_LEN: usize = 2 + 64;
const MAX_DIGEST_LEN: usize = 64;
/// Largest RSA modulus or signature the TPM specification allows (RSA-4096).
const MAX_RSA_LEN: usize = 512;
const MAX_ECC_PARAMETER_LEN: usize = 66;
/// A TPML_PCR_SELECTION contains at most one selection per bank.
const MAX_PCR_SELECTIONS: u32 = 16;
/// sizeofSelect bytes cover 8 PCRs each. 8 bytes (64 PCRs) exceeds every TPM profile.
const MAX_SIZEOF_SELECT: u8 = 8;

/// A PCR bank hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// Maps a TPM_ALG_ID onto a hash, or `None` for other algorithms.
    pub fn from_tpm_id(id: u16) -> Option<Self> {
        match id {
            0x0004 => Some(Self::Sha1),
            0x000b => Some(Self::Sha256),
            0x000c => Some(Self::Sha384),
            0x000d => Some(Self::Sha512),
            _ => None,
        }
    }

    pub fn tpm_id(self) -> u16 {
        match self {
            Self::Sha1 => 0x0004,
            Self::Sha256 => 0x000b,
            Self::Sha384 => 0x000c,
            Self::Sha512 => 0x000d,
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// Returns the bank name as tpm2-tools spells it: `sha1`, `sha256`, `sha384` or `sha512`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    pub(crate) fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
            Self::Sha512 => &digest::SHA512,
        }
    }

    pub(crate) fn hash(self, parts: &[&[u8]]) -> Vec<u8> {
        let mut context = digest::Context::new(self.algorithm());
        for part in parts {
            context.update(part);
        }
        context.finish().as_ref().to_vec()
    }
}

fn hash_from_id(id: u16, field: &str) -> Result<HashAlg, VerifyError> {
    HashAlg::from_tpm_id(id).ok_or_else(|| {
        VerifyError::malformed(format!(
            "{field}: hash algorithm 0x{id:04x} is not supported; expected SHA-1, SHA-256, \
             SHA-384 or SHA-512"
        ))
    })
}

/// A cursor over TPM wire bytes that reports which structure ran short.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    structure: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], structure: &'static str) -> Self {
        Self {
            bytes,
            position: 0,
            structure,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.position)
    }

    pub(crate) fn take(&mut self, len: usize, field: &str) -> Result<&'a [u8], VerifyError> {
        let end = self
            .position
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(VerifyError::malformed(format!(
                "{} is truncated: {field} needs {len} bytes at offset {} but {} remain",
                self.structure,
                self.position,
                self.remaining()
            )));
        };
        let slice = self.bytes.get(self.position..end).unwrap_or_default();
        self.position = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], VerifyError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, VerifyError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16_be(&mut self, field: &str) -> Result<u16, VerifyError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32_be(&mut self, field: &str) -> Result<u32, VerifyError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64_be(&mut self, field: &str) -> Result<u64, VerifyError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u16_le(&mut self, field: &str) -> Result<u16, VerifyError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32_le(&mut self, field: &str) -> Result<u32, VerifyError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// Reads a TPM2B: a big-endian u16 size and that many bytes, at most `max`.
    pub(crate) fn tpm2b(&mut self, max: usize, field: &str) -> Result<&'a [u8], VerifyError> {
        let size = usize::from(self.u16_be(field)?);
        if size > max {
            return Err(VerifyError::malformed(format!(
                "{}: {field} is {size} bytes; the maximum is {max}",
                self.structure
            )));
        }
        self.take(size, field)
    }

    pub(crate) fn finish(&self) -> Result<(), VerifyError> {
        if self.remaining() != 0 {
            return Err(VerifyError::malformed(format!(
                "{} has {} trailing bytes",
                self.structure,
                self.remaining()
            )));
        }
        Ok(())
    }
}

/// One bank's entry of a TPML_PCR_SELECTION.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrSelection {
    pub bank: HashAlg,
    /// Selected PCR indexes in ascending order.
    pub pcrs: Vec<u8>,
}

/// A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attest {
    /// The signing key's qualified name.
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (nonce).
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
    pub firmware_version: u64,
    pub pcr_selections: Vec<PcrSelection>,
    pub pcr_digest: Vec<u8>,
}

/// Parses a TPMS_ATTEST and checks that it is a quote the TPM generated (magic
/// TPM_GENERATED_VALUE, type TPM_ST_ATTEST_QUOTE). Never panics.
pub fn parse_attest(bytes: &[u8]) -> Result<Attest, VerifyError> {
    let mut reader = Reader::new(bytes, "TPMS_ATTEST");
    let magic = reader.u32_be("magic")?;
    if magic != TPM_GENERATED_VALUE {
        return Err(VerifyError::malformed(format!(
            "TPMS_ATTEST magic is 0x{magic:08x}; expected 0x{TPM_GENERATED_VALUE:08x} \
             (TPM_GENERATED_VALUE)"
        )));
    }

    let attest_type = reader.u16_be("type")?;
    if attest_type != TPM_ST_ATTEST_QUOTE {
        return Err(VerifyError::malformed(format!(
            "TPMS_ATTEST type is 0x{attest_type:04x}; expected 0x{TPM_ST_ATTEST_QUOTE:04x} \
             (TPM_ST_ATTEST_QUOTE)"
        )));
    }

    let qualified_signer = reader.tpm2b(MAX_NAME_LEN, "qualifiedSigner")?.to_vec();
    let extra_data = reader.tpm2b(MAX_EXTRA_DATA_LEN, "extraData")?.to_vec();
    let clock = reader.u64_be("clockInfo.clock")?;
    let reset_count = reader.u32_be("clockInfo.resetCount")?;
    let restart_count = reader.u32_be("clockInfo.restartCount")?;
    let safe = match reader.u8("clockInfo.safe")? {
        0 => false,
        1 => true,
        other => {
            return Err(VerifyError::malformed(format!(
                "TPMS_ATTEST clockInfo.safe is {other}; expected 0 or 1"
            )));
        }
    };

    let firmware_version = reader.u64_be("firmwareVersion")?;
    let pcr_selections = read_pcr_selections(&mut reader)?;
    let pcr_digest = reader.tpm2b(MAX_DIGEST_LEN, "pcrDigest")?.to_vec();
    reader.finish()?;
    Ok(Attest {
        qualified_signer,
        extra_data,
        clock,
        reset_count,
        restart_count,
        safe,
        firmware_version,
        pcr_selections,
        pcr_digest,
    })
}

fn read_pcr_selections(reader: &mut Reader<'_>) -> Result<Vec<PcrSelection>, VerifyError> {
    let count = reader.u32_be("pcrSelect.count")?;
    if count > MAX_PCR_SELECTIONS {
        return Err(VerifyError::malformed(format!(
            "TPMS_ATTEST pcrSelect.count is {count}; the maximum is {MAX_PCR_SELECTIONS}"
        )));
    }
    let mut selections = Vec::new();
    for _ in 0..count {
        let bank = hash_from_id(reader.u16_be("pcrSelect.hash")?, "TPMS_ATTEST pcrSelect")?;
        let size = reader.u8("pcrSelect.sizeofSelect")?;
        if size > MAX_SIZEOF_SELECT {
            return Err(VerifyError::malformed(format!(
                "TPMS_ATTEST pcrSelect.sizeofSelect is {size}; the maximum is \
                 {MAX_SIZEOF_SELECT}"
            )));
        }
        let bitmap = reader.take(usize::from(size), "pcrSelect.pcrSelect")?;
        let mut pcrs = Vec::new();
        for (byte_index, byte) in (0u8..).zip(bitmap) {
            for bit in 0..8u8 {
                if byte & (1 << bit) != 0 {
                    pcrs.push(byte_index * 8 + bit);
                }
            }
        }
        selections.push(PcrSelection { bank, pcrs });
    }
    Ok(selections)
}

/// A TPMT_SIGNATURE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    RsaSsa {
        hash: HashAlg,
        signature: Vec<u8>,
    },
    RsaPss {
        hash: HashAlg,
        signature: Vec<u8>,
    },
    Ecdsa {
        hash: HashAlg,
        r: Vec<u8>,
        s: Vec<u8>,
    },
}

impl Signature {
    pub fn hash(&self) -> HashAlg {
        match self {
            Self::RsaSsa { hash, .. } | Self::RsaPss { hash, .. } | Self::Ecdsa { hash, .. } => {
                *hash
            }
        }
    }
}

/// Parses a TPMT_SIGNATURE with an RSASSA, RSAPSS or ECDSA scheme. Never panics.
pub fn parse_signature(bytes: &[u8]) -> Result<Signature, VerifyError> {
    let mut reader = Reader::new(bytes, "TPMT_SIGNATURE");
    let scheme = reader.u16_be("sigAlg")?;
    let signature = match scheme {
        TPM_ALG_RSASSA | TPM_ALG_RSAPSS => {
            let hash = hash_from_id(reader.u16_be("hash")?, "TPMT_SIGNATURE")?;
            let signature = reader.tpm2b(MAX_RSA_LEN, "sig")?.to_vec();
            if scheme == TPM_ALG_RSASSA {
                Signature::RsaSsa { hash, signature }
            } else {
                Signature::RsaPss { hash, signature }
            }
        }
        TPM_ALG_ECDSA => {
            let hash = hash_from_id(reader.u16_be("hash")?, "TPMT_SIGNATURE")?;
            let r = reader.tpm2b(MAX_ECC_PARAMETER_LEN, "signatureR")?.to_vec();
            let s = reader.tpm2b(MAX_ECC_PARAMETER_LEN, "signatureS")?.to_vec();
            Signature::Ecdsa { hash, r, s }
        }
        other => {
            return Err(VerifyError::malformed(format!(
                "TPMT_SIGNATURE sigAlg 0x{other:04x} is not supported; expected RSASSA \
                 (0x0014), RSAPSS (0x0016) or ECDSA (0x0018)"
            )));
        }
    };
    reader.finish()?;
    Ok(signature)
}

/// A NIST curve a TPM ECC key can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EccCurve {
    P256,
    P384,
}

impl EccCurve {
    /// Coordinate length in bytes.
    pub fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    /// DER content bytes of the curve's object identifier.
    fn oid(self) -> &'static [u8] {
        match self {
            Self::P256 => OID_P256,
            Self::P384 => OID_P384,
        }
    }
}

/// The key material of an attestation key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyParams {
    /// Modulus and public exponent, big-endian with no leading zero bytes.
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    /// Affine coordinates, each left-padded to the curve's coordinate length.
    Ecc {
        curve: EccCurve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// An attestation key, from a TPMT_PUBLIC (or TPM2B_PUBLIC) or a DER SubjectPublicKeyInfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub params: KeyParams,
    /// TPMA_OBJECT, when the key came as a TPMT_PUBLIC.
    pub object_attributes: Option<u32>,
    /// The TPM_ALG_ID of the signing scheme fixed in a TPMT_PUBLIC (for example RSASSA
    /// 0x0014), or `None` for a NULL scheme or a DER key.
    pub scheme: Option<u16>,
    /// The key as a DER SubjectPublicKeyInfo: the input bytes when they were DER, else the
    /// encoding of the TPMT_PUBLIC's key.
    pub spki_der: Vec<u8>,
}

/// Parses an attestation key given as a DER SubjectPublicKeyInfo, a TPMT_PUBLIC or a
/// TPM2B_PUBLIC (a TPMT_PUBLIC with a size prefix). Only RSA and NIST P-256/P-384 keys are
/// accepted. Never panics.
pub fn parse_public(bytes: &[u8]) -> Result<PublicKey, VerifyError> {
    match bytes.first() {
        Some(0x30) => parse_spki(bytes),
        Some(_) => {
            let sized = bytes
                .get(..2)
                .map(|prefix| usize::from(u16::from_be_bytes([prefix[0], prefix[1]])))
                == Some(bytes.len().saturating_sub(2));
            let tpmt = if sized {
                bytes.get(2..).unwrap_or_default()
            } else {
                bytes
            };
            parse_tpmt_public(tpmt)
        }
        None => Err(VerifyError::malformed("the attestation key is empty")),
    }
}

fn parse_tpmt_public(bytes: &[u8]) -> Result<PublicKey, VerifyError> {
    let mut reader = Reader::new(bytes, "TPMT_PUBLIC");
    let key_type = reader.u16_be("type")?;
    let _name_alg = reader.u16_be("nameAlg")?;
    let object_attributes = reader.u32_be("objectAttributes")?;
    reader.tpm2b(MAX_DIGEST_LEN, "authPolicy")?;
    skip_symmetric(&mut reader)?;
    let scheme;
    let params = match key_type {
        TPM_ALG_RSA => {
            scheme = read_scheme(&mut reader, "parameters.rsaDetail.scheme")?;
            let key_bits = reader.u16_be("parameters.rsaDetail.keyBits")?;
            let exponent = match reader.u32_be("parameters.rsaDetail.exponent")? {
                0 => 65537,
                exponent => exponent,
            };
            let modulus = reader.tpm2b(MAX_RSA_LEN, "unique.rsa")?;
            if modulus.len() * 8 != usize::from(key_bits) {
                return Err(VerifyError::malformed(format!(
                    "TPMT_PUBLIC RSA modulus is {} bytes but keyBits is {key_bits}",
                    modulus.len()
                )));
            }
            KeyParams::Rsa {
                modulus: strip_leading_zeros(modulus).to_vec(),
                exponent: strip_leading_zeros(&exponent.to_be_bytes()).to_vec(),
            }
        }
        TPM_ALG_ECC => {
            scheme = read_scheme(&mut reader, "parameters.eccDetail.scheme")?;
            let curve = match reader.u16_be("parameters.eccDetail.curveID")? {
                TPM_ECC_NIST_P256 => EccCurve::P256,
                TPM_ECC_NIST_P384 => EccCurve::P384,
                other => {
                    return Err(VerifyError::malformed(format!(
                        "TPMT_PUBLIC curveID 0x{other:04x} is not supported; expected NIST \
                         P-256 (0x0003) or P-384 (0x0004)"
                    )));
                }
            };
            // TPMT_KDF_SCHEME: a scheme ID, then a hash unless the scheme is TPM_ALG_NULL.
            if reader.u16_be("parameters.eccDetail.kdf")? != TPM_ALG_NULL {
                reader.u16_be("parameters.eccDetail.kdf.hashAlg")?;
            }
            let x = reader.tpm2b(MAX_ECC_PARAMETER_LEN, "unique.ecc.x")?;
            let y = reader.tpm2b(MAX_ECC_PARAMETER_LEN, "unique.ecc.y")?;
            KeyParams::Ecc {
                curve,
                x: left_pad(x, curve.coordinate_len(), "unique.ecc.x")?,
                y: left_pad(y, curve.coordinate_len(), "unique.ecc.y")?,
            }
        }
        other => {
            return Err(VerifyError::malformed(format!(
                "TPMT_PUBLIC type 0x{other:04x} is not supported; expected RSA (0x0001) or ECC \
                 (0x0023)"
            )));
        }
    };
    reader.finish()?;
    let spki_der = encode_spki(&params);
    Ok(PublicKey {
        params,
        object_attributes: Some(object_attributes),
        scheme,
        spki_der,
    })
}

/// Skips a TPMT_SYM_DEF_OBJECT: an algorithm, then key bits and mode unless it is NULL.
fn skip_symmetric(reader: &mut Reader<'_>) -> Result<(), VerifyError> {
    if reader.u16_be("parameters.symmetric.algorithm")? != TPM_ALG_NULL {
        reader.u16_be("parameters.symmetric.keyBits")?;
        reader.u16_be("parameters.symmetric.mode")?;
    }
    Ok(())
}

/// Reads a TPMT_RSA_SCHEME or TPMT_ECC_SCHEME: a scheme, then its hash unless it is NULL.
/// ECDAA details also carry a commit counter.
fn read_scheme(reader: &mut Reader<'_>, field: &str) -> Result<Option<u16>, VerifyError> {
    let scheme = reader.u16_be(field)?;
    if scheme == TPM_ALG_NULL {
        return Ok(None);
    }
    reader.u16_be(field)?;
    if scheme == TPM_ALG_ECDAA {
        reader.u16_be(field)?;
    }
    Ok(Some(scheme))
}

fn parse_spki(bytes: &[u8]) -> Result<PublicKey, VerifyError> {
    let (rest, spki) = SubjectPublicKeyInfo::from_der(bytes).map_err(|error| {
        VerifyError::malformed(format!(
            "the attestation key is not a valid DER SubjectPublicKeyInfo: {error}"
        ))
    })?;
    if !rest.is_empty() {
        return Err(VerifyError::malformed(format!(
            "the attestation key's SubjectPublicKeyInfo has {} trailing bytes",
            rest.len()
        )));
    }
    let parsed = spki.parsed().map_err(|error| {
        VerifyError::malformed(format!(
            "the attestation key's public key is invalid: {error}"
        ))
    })?;
    let params = match parsed {
        X509PublicKey::RSA(rsa) => KeyParams::Rsa {
            modulus: strip_leading_zeros(rsa.modulus).to_vec(),
            exponent: strip_leading_zeros(rsa.exponent).to_vec(),
        },
        X509PublicKey::EC(point) => {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|parameters| parameters.as_oid().ok());
            let curve = match curve_oid.as_ref().map(|oid| oid.as_bytes()) {
                Some(OID_P256) => EccCurve::P256,
                Some(OID_P384) => EccCurve::P384,
                _ => {
                    return Err(VerifyError::malformed(
                        "the attestation key's curve is not NIST P-256 or P-384",
                    ));
                }
            };
            let data = point.data();
            let len = curve.coordinate_len();
            if data.len() != 1 + 2 * len || data.first() != Some(&0x04) {
                return Err(VerifyError::malformed(
                    "the attestation key's EC point is not an uncompressed point on its curve",
                ));
            }
            KeyParams::Ecc {
                curve,
                x: data.get(1..1 + len).unwrap_or_default().to_vec(),
                y: data.get(1 + len..).unwrap_or_default().to_vec(),
            }
        }
        _ => {
            return Err(VerifyError::malformed(
                "the attestation key is neither an RSA nor an EC key",
            ));
        }
    };
    Ok(PublicKey {
        params,
        object_attributes: None,
        scheme: None,
        spki_der: bytes.to_vec(),
    })
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

fn left_pad(bytes: &[u8], len: usize, field: &str) -> Result<Vec<u8>, VerifyError> {
    let bytes = if bytes.len() > len {
        strip_leading_zeros(bytes)
    } else {
        bytes
    };
    if bytes.len() > len {
        return Err(VerifyError::malformed(format!(
            "TPMT_PUBLIC {field} is {} bytes; the curve's coordinates are {len} bytes",
            bytes.len()
        )));
    }
    let mut out = vec![0u8; len - bytes.len()];
    out.extend_from_slice(bytes);
    Ok(out)
}

const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// Encodes a DER SubjectPublicKeyInfo (RFC 5280; RFC 3279 for RSA, RFC 5480 for EC keys).
pub(crate) fn encode_spki(params: &KeyParams) -> Vec<u8> {
    match params {
        KeyParams::Rsa { modulus, exponent } => {
            let algorithm = der(
                0x30,
                &[der(0x06, OID_RSA_ENCRYPTION), der(0x05, &[])].concat(),
            );
            let key = der(
                0x30,
                &[der_integer(modulus), der_integer(exponent)].concat(),
            );
            der(0x30, &[algorithm, der_bit_string(&key)].concat())
        }
        KeyParams::Ecc { curve, x, y } => {
            let algorithm = der(
                0x30,
                &[der(0x06, OID_EC_PUBLIC_KEY), der(0x06, curve.oid())].concat(),
            );
            let point = [&[0x04][..], x, y].concat();
            der(0x30, &[algorithm, der_bit_string(&point)].concat())
        }
    }
}

/// Encodes one DER element with a definite length.
pub(crate) fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let len_bytes = len.to_be_bytes();
        let significant = strip_leading_zeros(&len_bytes);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// Encodes a non-negative big-endian integer as a DER INTEGER.
pub(crate) fn der_integer(unsigned: &[u8]) -> Vec<u8> {
    let trimmed = strip_leading_zeros(unsigned);
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|byte| byte & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    der(0x02, &content)
}

fn der_bit_string(bytes: &[u8]) -> Vec<u8> {
    der(0x03, &[&[0u8][..], bytes].concat())
}
