//! AWS Nitro Enclaves attestation documents signed under a test root.
//!
//! [`TestNitro`] makes a P-384 root, two intermediates and a leaf, shaped like the AWS chain
//! (root, zonal, instance and enclave certificates), and signs COSE_Sign1 documents with ES384
//! under the leaf.

use std::collections::BTreeMap;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use ciborium::Value;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384,
};
use time::OffsetDateTime;

/// Start of the test root's and intermediates' validity: 2020-01-01T00:00:00Z.
pub const CA_NOT_BEFORE: i64 = 1_577_836_800;
/// End of the test root's and intermediates' validity: 2049-12-31T00:00:00Z.
pub const CA_NOT_AFTER: i64 = 2_524_521_600;
/// Default start of the leaf's validity: 2026-01-01T00:00:00Z.
pub const LEAF_NOT_BEFORE: i64 = 1_767_225_600;
/// Default end of the leaf's validity: three hours later, as AWS issues them.
pub const LEAF_NOT_AFTER: i64 = LEAF_NOT_BEFORE + 3 * 3600;
/// A time inside every default validity window.
pub const NOW: i64 = LEAF_NOT_BEFORE + 60;
/// The default document timestamp, in milliseconds: [`NOW`].
pub const DEFAULT_TIMESTAMP_MS: u64 = NOW as u64 * 1000;
/// The COSE algorithm ES384.
pub const ALG_ES384: i64 = -35;

/// A test root, intermediates and leaf, and the leaf's private key.
pub struct TestNitro {
    root_der: Vec<u8>,
    /// Root first, as in a document's `cabundle`.
    cabundle: Vec<Vec<u8>>,
    leaf_der: Vec<u8>,
    leaf_key: EcdsaKeyPair,
}

/// Fields of a generated document. The certificate and cabundle come from the [`TestNitro`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentSpec {
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub timestamp_ms: u64,
    pub module_id: String,
    /// Wraps the COSE_Sign1 in CBOR tag 18. The NSM sends it untagged.
    pub tagged: bool,
    /// The PCR hash algorithm name. The NSM uses `SHA384`.
    pub digest: String,
}

impl Default for DocumentSpec {
    /// Sixteen 48-byte PCRs with PCR0 to PCR4 and PCR8 set (not a debug enclave), no user
    /// fields, the default timestamp, untagged.
    fn default() -> Self {
        let pcrs = (0u8..16)
            .map(|index| {
                let fill = if matches!(index, 0..=4 | 8) {
                    index + 1
                } else {
                    0
                };
                (index, vec![fill; 48])
            })
            .collect();
        Self {
            pcrs,
            user_data: None,
            nonce: None,
            public_key: None,
            timestamp_ms: DEFAULT_TIMESTAMP_MS,
            module_id: "i-0123456789abcdef0-enc0123456789abcdef".to_owned(),
            tagged: false,
            digest: "SHA384".to_owned(),
        }
    }
}

impl Default for TestNitro {
    fn default() -> Self {
        Self::new()
    }
}

impl TestNitro {
    /// Makes a chain with the default leaf validity, [`LEAF_NOT_BEFORE`] to [`LEAF_NOT_AFTER`].
    ///
    /// # Panics
    /// When key generation or certificate signing fails.
    pub fn new() -> TestNitro {
        Self::with_leaf_validity(LEAF_NOT_BEFORE, LEAF_NOT_AFTER)
    }

    /// Makes a chain whose leaf is valid from `not_before` to `not_after` (Unix seconds).
    ///
    /// # Panics
    /// As [`TestNitro::new`].
    pub fn with_leaf_validity(not_before: i64, not_after: i64) -> TestNitro {
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("generate root key");
        let root_params = ca_params("twid test nitro root");
        let root_der = root_params
            .self_signed(&root_key)
            .expect("sign test root")
            .der()
            .to_vec();
        let mut issuer = Issuer::new(root_params, root_key);
        let mut cabundle = vec![root_der.clone()];
        for name in ["twid test nitro zone", "twid test nitro instance"] {
            let key =
                KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("generate intermediate key");
            let params = ca_params(name);
            let der = params
                .signed_by(&key, &issuer)
                .expect("sign test intermediate")
                .der()
                .to_vec();
            cabundle.push(der);
            issuer = Issuer::new(params, key);
        }

        let leaf_key =
            EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).expect("generate leaf key");
        let leaf_pkcs8 = leaf_key.to_pkcs8v1().expect("export leaf key");
        let leaf_rcgen_key = KeyPair::try_from(leaf_pkcs8.as_ref()).expect("import leaf key");
        let mut leaf_params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        leaf_params.distinguished_name.push(
            DnType::CommonName,
            "i-0123456789abcdef0-enc0123456789abcdef",
        );
        leaf_params.not_before = datetime(not_before);
        leaf_params.not_after = datetime(not_after);
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf_der = leaf_params
            .signed_by(&leaf_rcgen_key, &issuer)
            .expect("sign test leaf")
            .der()
            .to_vec();
        TestNitro {
            root_der,
            cabundle,
            leaf_der,
            leaf_key,
        }
    }

    /// Returns the self-signed root, to trust with `TrustAnchors::add_certificate`.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// Returns the document-signing certificate.
    pub fn leaf_der(&self) -> &[u8] {
        &self.leaf_der
    }

    /// Returns the issuing chain, root first.
    pub fn cabundle(&self) -> &[Vec<u8>] {
        &self.cabundle
    }

    /// Writes a document for `spec` and signs it.
    pub fn document(&self, spec: &DocumentSpec) -> Vec<u8> {
        let payload = encode(&Value::Map(self.payload(spec)));
        self.sign_payload(&payload, ALG_ES384, spec.tagged)
    }

    /// Builds the payload map for `spec` in the NSM's field order, for tests that change or
    /// drop fields before [`TestNitro::sign_payload`].
    pub fn payload(&self, spec: &DocumentSpec) -> Vec<(Value, Value)> {
        let optional = |bytes: &Option<Vec<u8>>| match bytes {
            Some(bytes) => Value::Bytes(bytes.clone()),
            None => Value::Null,
        };
        let pcrs = spec
            .pcrs
            .iter()
            .map(|(index, value)| (Value::from(*index), Value::Bytes(value.clone())))
            .collect();
        let cabundle = self
            .cabundle
            .iter()
            .map(|der| Value::Bytes(der.clone()))
            .collect();
        vec![
            text_entry("module_id", Value::Text(spec.module_id.clone())),
            text_entry("digest", Value::Text(spec.digest.clone())),
            text_entry("timestamp", Value::from(spec.timestamp_ms)),
            text_entry("pcrs", Value::Map(pcrs)),
            text_entry("certificate", Value::Bytes(self.leaf_der.clone())),
            text_entry("cabundle", Value::Array(cabundle)),
            text_entry("public_key", optional(&spec.public_key)),
            text_entry("user_data", optional(&spec.user_data)),
            text_entry("nonce", optional(&spec.nonce)),
        ]
    }

    /// Wraps `payload` in a COSE_Sign1 whose protected header names `alg`, and signs it with
    /// the leaf key (always ES384, whatever `alg` names).
    ///
    /// # Panics
    /// When signing fails.
    pub fn sign_payload(&self, payload: &[u8], alg: i64, tagged: bool) -> Vec<u8> {
        let protected = encode(&Value::Map(vec![(Value::from(1), Value::from(alg))]));
        let to_sign = encode(&Value::Array(vec![
            Value::Text("Signature1".to_owned()),
            Value::Bytes(protected.clone()),
            Value::Bytes(Vec::new()),
            Value::Bytes(payload.to_vec()),
        ]));
        let signature = self
            .leaf_key
            .sign(&SystemRandom::new(), &to_sign)
            .expect("sign test document");
        let sign1 = Value::Array(vec![
            Value::Bytes(protected),
            Value::Map(Vec::new()),
            Value::Bytes(payload.to_vec()),
            Value::Bytes(signature.as_ref().to_vec()),
        ]);
        if tagged {
            encode(&Value::Tag(18, Box::new(sign1)))
        } else {
            encode(&sign1)
        }
    }
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.not_before = datetime(CA_NOT_BEFORE);
    params.not_after = datetime(CA_NOT_AFTER);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn datetime(unix_seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix_seconds).expect("test time in range")
}

fn text_entry(key: &str, value: Value) -> (Value, Value) {
    (Value::Text(key.to_owned()), value)
}

/// Serializes a CBOR value.
///
/// # Panics
/// When serialization fails, which writing to a `Vec` does not.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).expect("CBOR serialization to a Vec");
    out
}
