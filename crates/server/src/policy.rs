//! Signed, versioned appraisal policy documents.
//!
//! A policy document (JSON, see `docs/policy.md`) contains the reference values of each evidence
//! attestor and names its owners, the P-256 keys that may sign the next version. It is applied
//! as a compact JWS (ES256, `typ` [`POLICY_JWS_TYPE`], `kid` = the signer's RFC 7638
//! thumbprint) whose payload is the document.
//!
//! Version N+1 is accepted only when an owner named in version N signed it and its number is
//! exactly N+1; every version is kept. Version 1 must be signed by a key of the server's
//! `policy_owner_keys`, or, when that setting is absent, by an owner it names itself (trust on
//! first use). A document names the trust domain it is for, and a server rejects a document
//! for another trust domain. Once a version exists, its attestor policies replace the
//! `plugin_data` policies, and evidence for an attestor that it does not name is rejected.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    ParsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use tonic::Status;
use twid_config::{DocumentPolicy, ServerConfig};
use twid_datastore::{Datastore, DatastoreError, PolicyVersion};
use twid_evidence::policy::Policy;
use twid_proto::admin as pb;
use twid_spiffe::TrustDomain;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::{ServerError, Shared};

/// The `typ` header of a signed policy document.
pub const POLICY_JWS_TYPE: &str = "twid-policy+jws";

/// Upper bound on a signed policy document, so that a request cannot make the server parse
/// and store an arbitrarily large value.
pub const MAX_POLICY_JWS_BYTES: usize = 1024 * 1024;

/// Members a policy document may have.
const DOCUMENT_MEMBERS: [&str; 5] = ["version", "trust_domain", "owners", "attestors", "comment"];

/// A malformed policy document, JWS or key. The message names the value and what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The document is not a valid policy document.
    #[error("invalid policy document: {0}")]
    Document(String),
    /// An attestor policy of the document has an unknown key or an invalid value.
    #[error("invalid policy document: {0}")]
    AttestorPolicy(#[from] twid_config::ConfigError),
    /// The signed document is not a compact ES256 JWS of the expected type.
    #[error("invalid signed policy: {0}")]
    Jws(String),
    /// A key is not a usable P-256 key.
    #[error("invalid owner key: {0}")]
    Key(String),
}

/// An owner key: an EC P-256 public key, named by its RFC 7638 thumbprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerKey {
    kid: String,
    /// The uncompressed point, `04 || x || y`.
    point: Vec<u8>,
}

impl OwnerKey {
    /// Builds an owner key from an uncompressed P-256 point.
    ///
    /// # Errors
    /// Returns [`PolicyError::Key`] when the bytes are not a point on P-256.
    pub fn from_point(point: &[u8]) -> Result<Self, PolicyError> {
        if point.len() != 65 || point[0] != 0x04 {
            return Err(PolicyError::Key(format!(
                "the public key is {} bytes, expected an uncompressed P-256 point of 65 bytes",
                point.len()
            )));
        }
        ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).map_err(|_| {
            PolicyError::Key("the public key is not a point on the P-256 curve".to_owned())
        })?;
        let members = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..])
        );
        Ok(Self {
            kid: URL_SAFE_NO_PAD.encode(digest(&SHA256, members.as_bytes())),
            point: point.to_vec(),
        })
    }

    /// Reads a DER SubjectPublicKeyInfo of an EC P-256 key.
    ///
    /// # Errors
    /// Returns [`PolicyError::Key`] for another key type or curve, or malformed DER.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, PolicyError> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|error| {
            PolicyError::Key(format!("malformed SubjectPublicKeyInfo: {error}"))
        })?;
        if !rest.is_empty() {
            return Err(PolicyError::Key(
                "trailing bytes after the SubjectPublicKeyInfo".to_owned(),
            ));
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|parameters| parameters.as_oid().ok());
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
            return Err(PolicyError::Key(format!(
                "the key is of algorithm {} (curve {}), expected an EC P-256 key; create one \
                 with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`",
                spki.algorithm.algorithm,
                curve.map_or_else(|| "none".to_owned(), |curve| curve.to_string())
            )));
        }
        Self::from_point(&spki.subject_public_key.data)
    }

    /// Reads an owner JWK: `kty` EC, `crv` P-256, `x`, `y`, and optionally `kid` (which must
    /// be the thumbprint), `alg` ES256 and `use` sig.
    ///
    /// # Errors
    /// Returns [`PolicyError::Document`] naming the member at fault.
    pub fn from_jwk(jwk: &Value) -> Result<Self, PolicyError> {
        let invalid = |reason: String| PolicyError::Document(reason);
        let object = jwk
            .as_object()
            .ok_or_else(|| invalid(format!("{jwk} is not a JWK object")))?;
        if object.contains_key("d") {
            return Err(invalid(
                "the JWK contains a private key (member d); list only public keys, as \
                 `twid policy thumbprint` prints them"
                    .to_owned(),
            ));
        }
        for (member, value) in object {
            let allowed = match member.as_str() {
                "kty" => value == "EC",
                "crv" => value == "P-256",
                "alg" => value == "ES256",
                "use" => value == "sig",
                "x" | "y" | "kid" => value.is_string(),
                _ => false,
            };
            if !allowed {
                return Err(invalid(format!(
                    "JWK member {member} = {value} is not allowed; an owner JWK has kty \"EC\", \
                     crv \"P-256\", x, y, and optionally kid, alg \"ES256\" and use \"sig\""
                )));
            }
        }
        if object.get("kty").is_none() || object.get("crv").is_none() {
            return Err(invalid(
                "the JWK needs kty \"EC\" and crv \"P-256\"".to_owned(),
            ));
        }
        let coordinate = |name: &str| -> Result<Vec<u8>, PolicyError> {
            let text = object
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("the JWK has no member {name}")))?;
            let bytes = URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| invalid(format!("JWK member {name} = {text:?} is not base64url")))?;
            if bytes.len() != 32 {
                return Err(invalid(format!(
                    "JWK member {name} is {} bytes, expected 32",
                    bytes.len()
                )));
            }
            Ok(bytes)
        };
        let mut point = vec![0x04];
        point.extend(coordinate("x")?);
        point.extend(coordinate("y")?);
        let key = Self::from_point(&point)?;
        if let Some(kid) = object.get("kid").and_then(Value::as_str)
            && kid != key.kid
        {
            return Err(invalid(format!(
                "JWK kid {kid:?} is not the RFC 7638 thumbprint of its key, {:?}; set kid to \
                 the thumbprint or leave it out",
                key.kid
            )));
        }
        Ok(key)
    }

    /// Returns the RFC 7638 SHA-256 thumbprint, base64url: the key's `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Returns the public JWK with its `kid`, in the form of the document's `owners` list.
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&self.point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&self.point[33..]),
            "kid": self.kid,
        })
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        aws_lc_rs::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.point)
            .verify(message, signature)
            .is_ok()
    }
}

/// A parsed policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    /// The version number, from 1.
    pub version: u64,
    /// The trust domain of the servers that may apply the document.
    pub trust_domain: TrustDomain,
    /// The keys that may sign the next version.
    pub owners: Vec<OwnerKey>,
    /// The policy of each attestor the document names.
    pub attestors: Vec<DocumentPolicy>,
    /// Free text for the operators.
    pub comment: Option<String>,
}

impl PolicyDocument {
    /// Parses and checks a policy document: JSON with `version` (an integer from 1),
    /// `trust_domain` (the name of the trust domain it is for), `owners` (a non-empty list of
    /// P-256 JWKs), `attestors` (optional, one object per evidence attestor with the keys of its
    /// `plugin_data` policy) and `comment` (optional text). Whitespace around the JSON value is
    /// allowed.
    ///
    /// # Errors
    /// Returns an error naming the member, attestor, key or value at fault.
    pub fn parse(bytes: &[u8]) -> Result<Self, PolicyError> {
        let invalid = |reason: String| PolicyError::Document(reason);
        let text = std::str::from_utf8(bytes)
            .map_err(|_| invalid("the document is not UTF-8 text".to_owned()))?;
        let value: Value = serde_json::from_str(text)
            .map_err(|error| invalid(format!("the document is not JSON: {error}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| invalid("the document is not a JSON object".to_owned()))?;
        if let Some(member) = object
            .keys()
            .find(|member| !DOCUMENT_MEMBERS.contains(&member.as_str()))
        {
            return Err(invalid(format!(
                "unknown member {member:?}; a policy document has {}",
                DOCUMENT_MEMBERS.join(", ")
            )));
        }
        let version = match object.get("version") {
            Some(value) => value
                .as_u64()
                .filter(|version| *version >= 1)
                .ok_or_else(|| {
                    invalid(format!(
                        "version = {value}: expected an integer of at least 1"
                    ))
                })?,
            None => return Err(invalid("the document has no version".to_owned())),
        };
        let trust_domain = match object.get("trust_domain") {
            Some(Value::String(name)) => TrustDomain::new(name).map_err(|error| {
                invalid(format!(
                    "trust_domain = {name:?} is not a valid trust domain name ({error}); set \
                     it to the server's trust_domain, such as \"example.org\""
                ))
            })?,
            Some(other) => {
                return Err(invalid(format!(
                    "trust_domain = {other}: expected the server's trust domain name as a \
                     string, such as \"example.org\""
                )));
            }
            None => {
                return Err(invalid(
                    "the document has no trust_domain; add \"trust_domain\": \"<the server's \
                     trust_domain>\" so that it applies only to that deployment"
                        .to_owned(),
                ));
            }
        };
        let owners = owners(object)?;
        if !matches!(object.get("attestors"), None | Some(Value::Object(_))) {
            return Err(invalid(
                "attestors must be an object with one member per attestor name, such as \
                 {\"tdx\": {...}}"
                    .to_owned(),
            ));
        }
        let attestors = twid_config::document_policies(&format!("policy version {version}"), text)?;
        let comment = match object.get("comment") {
            None => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => return Err(invalid(format!("comment = {other}: expected a string"))),
        };
        Ok(Self {
            version,
            trust_domain,
            owners,
            attestors,
            comment,
        })
    }

    /// Returns the owner with `kid`.
    pub fn owner(&self, kid: &str) -> Option<&OwnerKey> {
        self.owners.iter().find(|owner| owner.kid == kid)
    }

    fn owner_kids(&self) -> Vec<&str> {
        self.owners.iter().map(OwnerKey::kid).collect()
    }
}

fn owners(object: &Map<String, Value>) -> Result<Vec<OwnerKey>, PolicyError> {
    let Some(Value::Array(list)) = object.get("owners") else {
        return Err(PolicyError::Document(
            "owners must be a non-empty list of owner JWKs; print one with `twid policy \
             thumbprint KEY.pem`"
                .to_owned(),
        ));
    };
    if list.is_empty() {
        return Err(PolicyError::Document(
            "owners is empty, so no key could sign the next version; name at least one owner"
                .to_owned(),
        ));
    }
    let mut owners: Vec<OwnerKey> = Vec::with_capacity(list.len());
    for (index, jwk) in list.iter().enumerate() {
        let owner = OwnerKey::from_jwk(jwk).map_err(|error| match error {
            PolicyError::Document(reason) | PolicyError::Key(reason) => {
                PolicyError::Document(format!("owners[{index}]: {reason}"))
            }
            other => other,
        })?;
        if owners.contains(&owner) {
            return Err(PolicyError::Document(format!(
                "owners[{index}] repeats the key {}",
                owner.kid
            )));
        }
        owners.push(owner);
    }
    Ok(owners)
}

/// A decoded signed policy document whose signature is not yet checked.
#[derive(Debug, Clone)]
pub struct SignedPolicy {
    /// The `kid` header: the thumbprint of the signing key.
    pub kid: String,
    /// The parsed payload.
    pub document: PolicyDocument,
    /// The payload bytes.
    pub payload: Vec<u8>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

impl SignedPolicy {
    /// Decodes a compact JWS and parses its payload as a policy document.
    ///
    /// # Errors
    /// Returns [`PolicyError::Jws`] for a malformed JWS, another `alg` than ES256, another
    /// `typ` than [`POLICY_JWS_TYPE`], a missing `kid` or a `crit` header, and the document's
    /// error for an invalid payload.
    pub fn decode(jws: &str) -> Result<Self, PolicyError> {
        let invalid = |reason: String| PolicyError::Jws(reason);
        let jws = jws.trim();
        if jws.len() > MAX_POLICY_JWS_BYTES {
            return Err(invalid(format!(
                "the signed document is {} bytes, over the limit of {MAX_POLICY_JWS_BYTES}",
                jws.len()
            )));
        }
        let parts: Vec<&str> = jws.split('.').collect();
        let [header, payload, signature] = parts.as_slice() else {
            return Err(invalid(format!(
                "expected a compact JWS of three base64url parts separated by '.', found {} \
                 parts; create it with `twid policy sign`",
                parts.len()
            )));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| invalid(format!("the {what} is not base64url without padding")))
        };
        let header_json: Value = serde_json::from_slice(&decode(header, "header")?)
            .map_err(|error| invalid(format!("the header is not JSON: {error}")))?;
        let header_object = header_json
            .as_object()
            .ok_or_else(|| invalid("the header is not a JSON object".to_owned()))?;
        if header_object.contains_key("crit") {
            return Err(invalid(
                "the header has crit, whose extensions this server does not implement".to_owned(),
            ));
        }
        let member = |name: &str| header_object.get(name).and_then(Value::as_str);
        if member("alg") != Some("ES256") {
            return Err(invalid(format!(
                "alg is {}, expected \"ES256\"",
                header_object.get("alg").unwrap_or(&Value::Null)
            )));
        }
        if member("typ") != Some(POLICY_JWS_TYPE) {
            return Err(invalid(format!(
                "typ is {}, expected {POLICY_JWS_TYPE:?}",
                header_object.get("typ").unwrap_or(&Value::Null)
            )));
        }
        let kid = member("kid")
            .filter(|kid| !kid.is_empty())
            .ok_or_else(|| {
                invalid("the header has no kid naming the signing owner key".to_owned())
            })?
            .to_owned();
        let payload_bytes = decode(payload, "payload")?;
        let signature_bytes = decode(signature, "signature")?;
        if signature_bytes.len() != 64 {
            return Err(invalid(format!(
                "the signature is {} bytes, expected 64 (ES256, r || s)",
                signature_bytes.len()
            )));
        }
        let document = PolicyDocument::parse(&payload_bytes)?;
        Ok(Self {
            kid,
            document,
            payload: payload_bytes,
            signing_input: format!("{header}.{payload}").into_bytes(),
            signature: signature_bytes,
        })
    }

    /// Tells whether `key` made the signature.
    pub fn verifies_with(&self, key: &OwnerKey) -> bool {
        key.kid == self.kid && key.verifies(&self.signing_input, &self.signature)
    }
}

/// Signs a policy document with a PKCS#8 P-256 private key (DER), after checking that the
/// document parses. Returns the compact JWS and the signer's `kid`.
///
/// # Errors
/// Returns [`PolicyError::Key`] for a key that is not PKCS#8 P-256, or the document's error.
pub fn sign_document(pkcs8_der: &[u8], document: &[u8]) -> Result<(String, String), PolicyError> {
    PolicyDocument::parse(document)?;
    let key_pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8_der).map_err(|error| {
            PolicyError::Key(format!(
                "the private key is not a PKCS#8 EC P-256 key ({error}); convert a SEC1 key \
                 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8.pem`"
            ))
        })?;
    let owner = OwnerKey::from_point(key_pair.public_key().as_ref())?;
    let header = json!({ "alg": "ES256", "typ": POLICY_JWS_TYPE, "kid": owner.kid });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(document)
    );
    let signature = key_pair
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .map_err(|_| PolicyError::Key("signing with the private key failed".to_owned()))?;
    Ok((
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ),
        owner.kid,
    ))
}

/// The rule under which a signed document was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Signed by an owner of the current version.
    Owner,
    /// Version 1 signed by a key of `policy_owner_keys`.
    ConfiguredGenesis,
    /// Version 1 signed by an owner it names itself, with no `policy_owner_keys`.
    TrustOnFirstUse,
}

/// Decides whether `signed` may follow `current`. The version number must be the next one, and
/// the signer must be an owner of the current version with a valid signature. For version 1
/// the signer must be a genesis key, or without genesis keys an owner the document names.
pub(crate) fn check_next(
    current: Option<&PolicyDocument>,
    genesis_owners: &[OwnerKey],
    signed: &SignedPolicy,
) -> Result<Admission, Status> {
    let version = signed.document.version;
    let kid = &signed.kid;
    let expected = current.map_or(1, |current| current.version.saturating_add(1));
    if version != expected {
        let message = match current {
            None => format!(
                "no policy version exists yet, so the first one must be version 1, but the \
                 document has version {version}; set \"version\": 1 and sign it again"
            ),
            Some(current) if version <= current.version => format!(
                "policy version {version} is not newer than the current version {}; versions \
                 are never replaced or rolled back, so write version {expected} with the \
                 content you want and sign it again",
                current.version
            ),
            Some(current) => format!(
                "policy version {version} skips versions: the current version is {}, so the \
                 next must be {expected}; set \"version\": {expected} and sign it again",
                current.version
            ),
        };
        return Err(Status::failed_precondition(format!(
            "{message} (the document is signed by key {kid})"
        )));
    }
    let (signer, admission) = match current {
        Some(current) => (current.owner(kid), Admission::Owner),
        None if !genesis_owners.is_empty() => (
            genesis_owners.iter().find(|owner| owner.kid == *kid),
            Admission::ConfiguredGenesis,
        ),
        None => (signed.document.owner(kid), Admission::TrustOnFirstUse),
    };
    let Some(signer) = signer else {
        let (owners, whose): (Vec<&str>, String) = match (current, admission) {
            (Some(current), _) => (
                current.owner_kids(),
                format!("an owner named in the current version {}", current.version),
            ),
            (None, Admission::ConfiguredGenesis) => (
                genesis_owners.iter().map(OwnerKey::kid).collect(),
                "a key of the server's policy_owner_keys".to_owned(),
            ),
            (None, _) => (
                signed.document.owner_kids(),
                "an owner the document names (no policy_owner_keys is configured)".to_owned(),
            ),
        };
        return Err(Status::permission_denied(format!(
            "policy version {version} is signed by key {kid}, which is not {whose}; sign it \
             with one of [{}]",
            owners.join(", ")
        )));
    };
    if !signed.verifies_with(signer) {
        return Err(Status::permission_denied(format!(
            "the signature of policy version {version} does not verify under owner key {kid}; \
             the document was changed after signing or signed with another key; sign it again \
             with `twid policy sign`"
        )));
    }
    Ok(admission)
}

/// Rejects a document for another trust domain than the server's, so that a version signed
/// for one deployment cannot be applied to another that trusts the same owner keys.
fn check_trust_domain(document: &PolicyDocument, trust_domain: &TrustDomain) -> Result<(), Status> {
    if document.trust_domain == *trust_domain {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "policy version {} is for trust domain {:?}, but this server is in trust domain {:?}; \
         sign a document with \"trust_domain\": {:?} for this deployment",
        document.version,
        document.trust_domain.name(),
        trust_domain.name(),
        trust_domain.name()
    )))
}

/// Verifies the stored versions from version 1 up to `version` as `apply` admitted them, and
/// returns the document of `version`. Each row's JWS must verify under an owner of the version
/// before it (for version 1, a `policy_owner_keys` key or, without one, an owner it names
/// itself), its payload must equal the stored document, and it must name `trust_domain`. So a
/// row written into the database directly, without an owner's signature, does not change the
/// policy.
fn verify_stored_chain(
    stored: &[PolicyVersion],
    genesis_owners: &[OwnerKey],
    trust_domain: &TrustDomain,
    version: u64,
) -> Result<PolicyDocument, String> {
    let mut current: Option<PolicyDocument> = None;
    for row in stored.iter().take_while(|row| row.version <= version) {
        let signed = SignedPolicy::decode(&row.jws)
            .map_err(|error| format!("version {}: {error}", row.version))?;
        if signed.document.version != row.version {
            return Err(format!(
                "the row of version {} holds a document of version {}",
                row.version, signed.document.version
            ));
        }
        if signed.payload != row.document.as_bytes() {
            return Err(format!(
                "the stored document of version {} differs from its signed payload",
                row.version
            ));
        }
        check_next(current.as_ref(), genesis_owners, &signed)
            .and_then(|_| check_trust_domain(&signed.document, trust_domain))
            .map_err(|status| format!("version {}: {}", row.version, status.message()))?;
        current = Some(signed.document);
    }
    match current {
        Some(document) if document.version == version => Ok(document),
        _ => Err(format!(
            "version {version} is missing from the stored chain"
        )),
    }
}

/// The policy an attestation is appraised with, and its document version (`None` while no
/// document has been applied and the `plugin_data` policy applies).
#[derive(Debug, Clone)]
pub(crate) struct AppliedPolicy {
    pub(crate) policy: Arc<Policy>,
    pub(crate) version: Option<u64>,
}

/// The attestor policies of one stored version.
#[derive(Debug)]
struct Loaded {
    version: u64,
    policies: HashMap<String, Arc<Policy>>,
}

/// The server's view of the policy versions in the datastore.
#[derive(Debug)]
pub(crate) struct PolicyStore {
    genesis_owners: Vec<OwnerKey>,
    /// The server's trust domain, which every document must name.
    trust_domain: TrustDomain,
    /// The last version read, reused while the datastore's current version number equals it.
    cache: Mutex<Option<Arc<Loaded>>>,
}

/// An apply failure: a rejection for the caller, or a datastore failure.
enum ApplyError {
    Refused(Status),
    Store(DatastoreError),
}

impl From<DatastoreError> for ApplyError {
    fn from(error: DatastoreError) -> Self {
        Self::Store(error)
    }
}

impl PolicyStore {
    /// Reads the `policy_owner_keys` files.
    pub(crate) fn load(config: &ServerConfig) -> Result<Self, ServerError> {
        let mut genesis_owners = Vec::new();
        for path in &config.policy_owner_keys {
            let owner = read_owner_key(path)?;
            tracing::info!(path = %path.display(), kid = %owner.kid, "policy owner key loaded");
            genesis_owners.push(owner);
        }
        Ok(Self {
            genesis_owners,
            trust_domain: config.trust_domain.clone(),
            cache: Mutex::new(None),
        })
    }

    /// Checks and stores a signed policy document; returns the document. The check and the
    /// insert run in one datastore transaction.
    pub(crate) async fn apply(
        &self,
        datastore: &Datastore,
        jws: &str,
        now: i64,
    ) -> Result<PolicyDocument, Status> {
        let signed = SignedPolicy::decode(jws)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let version = signed.document.version;
        if let Err(status) = check_trust_domain(&signed.document, &self.trust_domain) {
            tracing::info!(
                version,
                signer_kid = %signed.kid,
                reason = status.message(),
                "policy version rejected"
            );
            return Err(status);
        }
        let document = String::from_utf8(signed.payload.clone())
            .map_err(|_| Status::invalid_argument("the policy document is not UTF-8 text"))?;
        let new = PolicyVersion {
            version,
            jws: jws.trim().to_owned(),
            document,
            signer_kid: signed.kid.clone(),
            applied_at: now,
        };
        let mut admission = None;
        let result = datastore
            .append_policy_version(&new, |current: Option<&PolicyVersion>| {
                let current = current
                    .map(|stored| {
                        PolicyDocument::parse(stored.document.as_bytes()).map_err(|error| {
                            ApplyError::Store(DatastoreError::Corrupt(format!(
                                "stored policy version {}: {error}",
                                stored.version
                            )))
                        })
                    })
                    .transpose()?;
                admission = Some(
                    check_next(current.as_ref(), &self.genesis_owners, &signed)
                        .map_err(ApplyError::Refused)?,
                );
                Ok::<(), ApplyError>(())
            })
            .await;
        match result {
            Ok(()) => {}
            Err(ApplyError::Refused(status)) => {
                tracing::info!(
                    version,
                    signer_kid = %signed.kid,
                    reason = status.message(),
                    "policy version rejected"
                );
                return Err(status);
            }
            Err(ApplyError::Store(DatastoreError::AlreadyExists(_))) => {
                return Err(Status::failed_precondition(format!(
                    "policy version {version} was applied by another request at the same time; \
                     run `twid policy list` and sign the next version"
                )));
            }
            Err(ApplyError::Store(error)) => return Err(crate::node_api::internal(error.into())),
        }
        if admission == Some(Admission::TrustOnFirstUse) {
            tracing::warn!(
                version,
                signer_kid = %signed.kid,
                "policy version 1 accepted on trust on first use: it is signed by an owner it \
                 names itself, because policy_owner_keys is not set"
            );
        }
        tracing::info!(
            version,
            signer_kid = %signed.kid,
            attestors = ?signed
                .document
                .attestors
                .iter()
                .map(|entry| entry.attestor.as_str())
                .collect::<Vec<_>>(),
            "policy version applied"
        );
        Ok(signed.document)
    }

    /// Returns the policy for attestor `name`: the current version's, or `configured` while no
    /// version exists. Reads the current version number from the datastore on every call, so a
    /// version applied on another server takes effect here too.
    ///
    /// # Errors
    /// PermissionDenied when the current version has no object for `name`, so that a version
    /// that leaves an attestor out does not lift its `plugin_data` rules. Unavailable or
    /// Internal when the stored versions cannot be read or fail verification.
    pub(crate) async fn applied(
        &self,
        datastore: &Datastore,
        name: &str,
        configured: &Policy,
    ) -> Result<AppliedPolicy, Status> {
        let unavailable = |error: DatastoreError| {
            tracing::error!(%error, "reading the current policy version failed");
            Status::unavailable("the policy store cannot be read; retry in a few seconds")
        };
        let Some(version) = datastore
            .current_policy_version()
            .await
            .map_err(unavailable)?
        else {
            return Ok(AppliedPolicy {
                policy: Arc::new(configured.clone()),
                version: None,
            });
        };
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|loaded| loaded.version == version);
        let loaded = match cached {
            Some(loaded) => loaded,
            None => {
                let stored = datastore
                    .list_policy_versions()
                    .await
                    .map_err(unavailable)?;
                let document =
                    verify_stored_chain(&stored, &self.genesis_owners, &self.trust_domain, version)
                        .map_err(|error| {
                            crate::node_api::internal(ServerError::Corrupt(format!(
                                "the stored policy versions failed verification, so evidence \
                                 is rejected until the policy_versions table is restored: {error}"
                            )))
                        })?;
                let loaded = Arc::new(Loaded {
                    version,
                    policies: document
                        .attestors
                        .into_iter()
                        .map(|entry| (entry.attestor, Arc::new(entry.policy)))
                        .collect(),
                });
                tracing::info!(version, "policy version loaded");
                *self.cache.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::clone(&loaded));
                loaded
            }
        };
        let Some(policy) = loaded.policies.get(name) else {
            tracing::info!(
                attestor = name,
                version,
                "evidence rejected: the current policy version has no object for the attestor"
            );
            return Err(Status::permission_denied(format!(
                "policy version {version} has no object for attestor {name}; sign a version \
                 that names it"
            )));
        };
        Ok(AppliedPolicy {
            policy: Arc::clone(policy),
            version: Some(version),
        })
    }

    /// Returns the version this server last read, for rejection records. It may lag a version
    /// another server applied a moment ago.
    pub(crate) fn last_read_version(&self) -> Option<u64> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|loaded| loaded.version)
    }
}

/// Returns the policy that appraises evidence for the evidence attestor `name`; see
/// [`PolicyStore::applied`]. An unknown name gets `Policy::default()` as its configured policy
/// while no version exists.
pub(crate) async fn applied_for(shared: &Shared, name: &str) -> Result<AppliedPolicy, Status> {
    let default = Policy::default();
    let configured = shared
        .evidence
        .get(name)
        .map_or(&default, |attestor| &attestor.config.policy);
    shared
        .policies
        .applied(&shared.datastore, name, configured)
        .await
}

/// Handles the admin API's `ApplyPolicy`.
pub(crate) async fn apply_request(
    shared: &Shared,
    request: pb::ApplyPolicyRequest,
) -> Result<pb::ApplyPolicyResponse, Status> {
    let now = crate::convert::unix_now();
    let document = shared
        .policies
        .apply(&shared.datastore, &request.jws, now)
        .await?;
    let omitted_attestors = omitted_attestors(&document, &shared.evidence.names());
    if !omitted_attestors.is_empty() {
        tracing::warn!(
            version = document.version,
            omitted = ?omitted_attestors,
            "the applied policy version has no object for these configured evidence attestors, \
             so their evidence is rejected until a version names them"
        );
    }
    Ok(pb::ApplyPolicyResponse {
        version: document.version,
        omitted_attestors,
    })
}

/// Returns the names among `configured` that `document` has no attestor object for, in the
/// order of `configured`.
fn omitted_attestors(document: &PolicyDocument, configured: &[&str]) -> Vec<String> {
    configured
        .iter()
        .filter(|name| {
            !document
                .attestors
                .iter()
                .any(|entry| entry.attestor == **name)
        })
        .map(|name| (*name).to_owned())
        .collect()
}

/// Handles the admin API's `ListPolicies`: every version without its document.
pub(crate) async fn list_request(shared: &Shared) -> Result<pb::ListPoliciesResponse, Status> {
    let versions = shared
        .datastore
        .list_policy_versions()
        .await
        .map_err(|error| crate::node_api::internal(error.into()))?;
    Ok(pb::ListPoliciesResponse {
        versions: versions
            .iter()
            .map(|stored| pb::PolicyVersion {
                document: String::new(),
                jws: String::new(),
                ..version_to_pb(stored)
            })
            .collect(),
    })
}

/// Handles the admin API's `GetPolicy`; version 0 selects the current one.
pub(crate) async fn get_request(
    shared: &Shared,
    request: pb::GetPolicyRequest,
) -> Result<pb::PolicyVersion, Status> {
    let datastore = &shared.datastore;
    let stored = if request.version == 0 {
        datastore.current_policy().await
    } else {
        datastore.get_policy_version(request.version).await
    }
    .map_err(|error| crate::node_api::internal(error.into()))?;
    let stored = stored.ok_or_else(|| match request.version {
        0 => Status::not_found(
            "no policy version has been applied; sign one with `twid policy sign` and apply it \
             with `twid policy apply`",
        ),
        version => Status::not_found(format!(
            "policy version {version} does not exist; `twid policy list` shows the versions"
        )),
    })?;
    Ok(version_to_pb(&stored))
}

fn version_to_pb(stored: &PolicyVersion) -> pb::PolicyVersion {
    let comment = serde_json::from_str::<Value>(&stored.document)
        .ok()
        .and_then(|document| document.get("comment")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    pb::PolicyVersion {
        version: stored.version,
        signer_kid: stored.signer_kid.clone(),
        applied_at: stored.applied_at,
        document: stored.document.clone(),
        jws: stored.jws.clone(),
        comment,
    }
}

/// Reads one `policy_owner_keys` file: a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of P-256.
fn read_owner_key(path: &Path) -> Result<OwnerKey, ServerError> {
    use rustls_pki_types::pem::PemObject as _;
    let invalid = |reason: String| ServerError::PolicyOwnerKey {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|error| invalid(error.to_string()))?;
    let der =
        rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(&bytes).map_err(|error| {
            invalid(format!(
                "no PEM PUBLIC KEY block ({error}); export one with `openssl pkey -in OWNER.pem \
             -pubout`"
            ))
        })?;
    OwnerKey::from_spki_der(der.as_ref()).map_err(|error| invalid(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDatastore;
    use aws_lc_rs::signature::EcdsaKeyPair;

    const TRUST_DOMAIN: &str = "example.org";

    fn trust_domain() -> TrustDomain {
        TrustDomain::new(TRUST_DOMAIN).expect("trust domain")
    }

    fn new_key() -> Vec<u8> {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("generate key")
            .as_ref()
            .to_vec()
    }

    fn owner(pkcs8: &[u8]) -> OwnerKey {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).expect("key");
        OwnerKey::from_point(pair.public_key().as_ref()).expect("point")
    }

    fn document(version: u64, owners: &[&OwnerKey], mrtd: u8) -> Vec<u8> {
        let owners: Vec<Value> = owners.iter().map(|owner| owner.jwk()).collect();
        json!({
            "version": version,
            "trust_domain": TRUST_DOMAIN,
            "owners": owners,
            "attestors": {"tdx": {"allowed_measurements": [hex::encode([mrtd; 48])]}},
            "comment": "test",
        })
        .to_string()
        .into_bytes()
    }

    fn signed(key: &[u8], document: &[u8]) -> SignedPolicy {
        let (jws, _) = sign_document(key, document).expect("sign");
        SignedPolicy::decode(&jws).expect("decode")
    }

    fn parsed(document: &[u8]) -> PolicyDocument {
        PolicyDocument::parse(document).expect("parse")
    }

    #[test]
    fn thumbprint_matches_rfc7638_example_shape() {
        // RFC 7638 computes the thumbprint over the required members in lexicographic order
        // without whitespace; check against an independent computation.
        let key = owner(&new_key());
        let jwk = key.jwk();
        let members = format!(
            "{{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"{}\",\"y\":\"{}\"}}",
            jwk["x"].as_str().expect("x"),
            jwk["y"].as_str().expect("y")
        );
        let expected = URL_SAFE_NO_PAD.encode(digest(&SHA256, members.as_bytes()));
        assert_eq!(key.kid(), expected);
        assert_eq!(jwk["kid"], expected);
        assert_eq!(OwnerKey::from_jwk(&jwk).expect("round trip"), key);
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let key = new_key();
        let owner = owner(&key);
        let document = document(1, &[&owner], 1);
        let (jws, kid) = sign_document(&key, &document).expect("sign");
        assert_eq!(kid, owner.kid());
        let signed = SignedPolicy::decode(&jws).expect("decode");
        assert_eq!(signed.kid, owner.kid());
        assert_eq!(signed.payload, document);
        assert_eq!(signed.document.version, 1);
        assert_eq!(signed.document.comment.as_deref(), Some("test"));
        assert!(signed.verifies_with(&owner));
        let other = self::owner(&new_key());
        assert!(!signed.verifies_with(&other));
    }

    #[test]
    fn tampered_payload_does_not_verify() {
        let key = new_key();
        let owner = owner(&key);
        let (jws, _) = sign_document(&key, &document(1, &[&owner], 1)).expect("sign");
        let parts: Vec<&str> = jws.split('.').collect();
        let changed = URL_SAFE_NO_PAD.encode(document(1, &[&owner], 2));
        let forged = format!("{}.{changed}.{}", parts[0], parts[2]);
        let signed = SignedPolicy::decode(&forged).expect("decode");
        assert!(!signed.verifies_with(&owner));
        let status = check_next(None, &[], &signed).expect_err("forged");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("does not verify"), "{status:?}");
    }

    #[test]
    fn decode_rejects_other_headers() {
        let key = new_key();
        let owner = owner(&key);
        let payload = URL_SAFE_NO_PAD.encode(document(1, &[&owner], 1));
        let signature = URL_SAFE_NO_PAD.encode([0u8; 64]);
        for (header, expected) in [
            (
                json!({"alg": "HS256", "typ": POLICY_JWS_TYPE, "kid": "k"}),
                "alg",
            ),
            (json!({"alg": "ES256", "typ": "JWT", "kid": "k"}), "typ"),
            (json!({"alg": "ES256", "typ": POLICY_JWS_TYPE}), "kid"),
            (
                json!({"alg": "ES256", "typ": POLICY_JWS_TYPE, "kid": "k", "crit": ["b64"]}),
                "crit",
            ),
        ] {
            let jws = format!(
                "{}.{payload}.{signature}",
                URL_SAFE_NO_PAD.encode(header.to_string())
            );
            let error = SignedPolicy::decode(&jws)
                .expect_err("rejected")
                .to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
        let error = SignedPolicy::decode("a.b")
            .expect_err("two parts")
            .to_string();
        assert!(error.contains("three base64url parts"), "{error}");
    }

    #[test]
    fn document_errors_name_the_member() {
        let key = owner(&new_key());
        let td = TRUST_DOMAIN;
        let cases = [
            (
                json!({"version": 0, "trust_domain": td, "owners": [key.jwk()]}),
                "version = 0",
            ),
            (
                json!({"version": 1, "owners": [key.jwk()]}),
                "the document has no trust_domain",
            ),
            (
                json!({"version": 1, "trust_domain": "Example.org", "owners": [key.jwk()]}),
                "trust_domain = \"Example.org\" is not a valid trust domain name",
            ),
            (
                json!({"version": 1, "trust_domain": 7, "owners": [key.jwk()]}),
                "trust_domain = 7: expected",
            ),
            (
                json!({"version": 1, "trust_domain": td, "owners": []}),
                "owners is empty",
            ),
            (json!({"version": 1, "trust_domain": td}), "owners must be"),
            (
                json!({"version": 1, "trust_domain": td, "owners": [key.jwk()], "extra": 1}),
                "unknown member \"extra\"",
            ),
            (
                json!({"version": 1, "trust_domain": td, "owners": [key.jwk(), key.jwk()]}),
                "owners[1] repeats",
            ),
            (
                json!({"version": 1, "trust_domain": td,
                       "owners": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}),
                "owners[0]: JWK member x is 1 bytes",
            ),
            (
                json!({"version": 2, "trust_domain": td, "owners": [key.jwk()],
                       "attestors": {"tdx": {"allowed_measurements": ["zz"]}}}),
                "policy version 2:1: allowed_measurements = [\"zz\"]",
            ),
        ];
        for (document, expected) in cases {
            let error = PolicyDocument::parse(document.to_string().as_bytes())
                .expect_err("invalid")
                .to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
        let mut wrong_kid = key.jwk();
        wrong_kid["kid"] = json!("not-the-thumbprint");
        let error = OwnerKey::from_jwk(&wrong_kid).expect_err("kid").to_string();
        assert!(error.contains("not the RFC 7638 thumbprint"), "{error}");
    }

    #[test]
    fn genesis_without_keys_needs_named_owner() {
        let a = new_key();
        let b = new_key();
        let owner_a = owner(&a);
        let accepted = check_next(None, &[], &signed(&a, &document(1, &[&owner_a], 1)));
        assert_eq!(accepted.expect("own owner"), Admission::TrustOnFirstUse);

        let rejected = check_next(None, &[], &signed(&b, &document(1, &[&owner_a], 1)))
            .expect_err("signer not named");
        assert_eq!(rejected.code(), tonic::Code::PermissionDenied);
        assert!(rejected.message().contains(owner(&b).kid()), "{rejected:?}");
        assert!(rejected.message().contains(owner_a.kid()), "{rejected:?}");
    }

    #[test]
    fn genesis_with_configured_keys_ignores_the_document_owners() {
        let configured = new_key();
        let other = new_key();
        let genesis = [owner(&configured)];
        let by_configured = signed(&configured, &document(1, &[&owner(&other)], 1));
        assert_eq!(
            check_next(None, &genesis, &by_configured).expect("configured key"),
            Admission::ConfiguredGenesis
        );
        // Naming itself as owner does not help a key outside policy_owner_keys.
        let self_named = signed(&other, &document(1, &[&owner(&other)], 1));
        let rejected = check_next(None, &genesis, &self_named).expect_err("not configured");
        assert_eq!(rejected.code(), tonic::Code::PermissionDenied);
        assert!(
            rejected.message().contains("policy_owner_keys"),
            "{rejected:?}"
        );
    }

    #[test]
    fn chain_of_ownership() {
        let old = new_key();
        let new = new_key();
        let stranger = new_key();
        let (old_owner, new_owner) = (owner(&old), owner(&new));
        let v1 = parsed(&document(1, &[&old_owner], 1));

        // A key the current version does not name is rejected.
        let rejected = check_next(
            Some(&v1),
            &[],
            &signed(&stranger, &document(2, &[&old_owner], 2)),
        )
        .expect_err("stranger");
        assert_eq!(rejected.code(), tonic::Code::PermissionDenied);
        assert!(
            rejected.message().contains(owner(&stranger).kid()),
            "{rejected:?}"
        );
        assert!(
            rejected.message().contains("current version 1"),
            "{rejected:?}"
        );

        // A gap is rejected, even when properly signed.
        let gap = check_next(
            Some(&v1),
            &[],
            &signed(&old, &document(3, &[&old_owner], 2)),
        )
        .expect_err("gap");
        assert_eq!(gap.code(), tonic::Code::FailedPrecondition);
        assert!(gap.message().contains("next must be 2"), "{gap:?}");
        assert!(gap.message().contains(old_owner.kid()), "{gap:?}");

        // Version 2 hands ownership to the new key.
        let v2_signed = signed(&old, &document(2, &[&new_owner], 2));
        assert_eq!(
            check_next(Some(&v1), &[], &v2_signed).expect("owner of v1"),
            Admission::Owner
        );
        let v2 = v2_signed.document;

        // Replays of version 1 or 2 are rejected.
        for replay in [1, 2] {
            let status = check_next(
                Some(&v2),
                &[],
                &signed(&new, &document(replay, &[&new_owner], 3)),
            )
            .expect_err("replay");
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert!(status.message().contains("not newer"), "{status:?}");
        }

        // Version 3 signed by the new owner is accepted, by the old owner rejected.
        assert!(
            check_next(
                Some(&v2),
                &[],
                &signed(&new, &document(3, &[&new_owner], 3))
            )
            .is_ok()
        );
        let by_old = check_next(
            Some(&v2),
            &[],
            &signed(&old, &document(3, &[&old_owner], 3)),
        )
        .expect_err("old owner");
        assert_eq!(by_old.code(), tonic::Code::PermissionDenied);
        assert!(by_old.message().contains(old_owner.kid()), "{by_old:?}");
    }

    #[test]
    fn spki_must_be_p256() {
        let key = new_key();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key).expect("key");
        // DER SubjectPublicKeyInfo of a P-256 key: fixed prefix and the point.
        let mut spki =
            hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
        spki.extend_from_slice(pair.public_key().as_ref());
        assert_eq!(OwnerKey::from_spki_der(&spki).expect("p256"), owner(&key));

        let p384 = EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .expect("p384");
        let p384 = EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            p384.as_ref(),
        )
        .expect("p384");
        let mut spki384 =
            hex::decode("3076301006072a8648ce3d020106052b81040022036200").expect("hex");
        spki384.extend_from_slice(p384.public_key().as_ref());
        let error = OwnerKey::from_spki_der(&spki384)
            .expect_err("p384")
            .to_string();
        assert!(error.contains("expected an EC P-256 key"), "{error}");
        let error = sign_document(p384_pkcs8().as_slice(), &document(1, &[&owner(&key)], 1))
            .expect_err("p384 signing key")
            .to_string();
        assert!(error.contains("not a PKCS#8 EC P-256 key"), "{error}");
    }

    fn store(genesis_owners: Vec<OwnerKey>) -> PolicyStore {
        PolicyStore {
            genesis_owners,
            trust_domain: trust_domain(),
            cache: Mutex::new(None),
        }
    }

    fn jws(key: &[u8], document: &[u8]) -> String {
        sign_document(key, document).expect("sign").0
    }

    #[tokio::test]
    async fn applied_version_reaches_other_replicas() {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = TestDatastore::new(dir.path());
        let datastore = Datastore::open(&database.config).await.expect("open");
        let key = new_key();
        let owner = owner(&key);
        let configured = Policy {
            allowed_measurements: vec![vec![0xaa; 48]],
            ..Policy::default()
        };
        let (first, second) = (store(Vec::new()), store(Vec::new()));

        let before = first
            .applied(&datastore, "tdx", &configured)
            .await
            .expect("read");
        assert_eq!(before.version, None);
        assert_eq!(*before.policy, configured);
        assert_eq!(first.last_read_version(), None);

        let v1 = jws(&key, &document(1, &[&owner], 1));
        let applied = first.apply(&datastore, &v1, 100).await.expect("v1");
        assert_eq!(applied.version, 1);
        let read = first
            .applied(&datastore, "tdx", &configured)
            .await
            .expect("read");
        assert_eq!(read.version, Some(1));
        assert_eq!(read.policy.allowed_measurements, vec![vec![1u8; 48]]);
        // Evidence for an attestor the document does not name is rejected, and the version
        // is known for the rejection record.
        let unnamed = first
            .applied(&datastore, "snp", &configured)
            .await
            .expect_err("unnamed attestor");
        assert_eq!(unnamed.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            unnamed.message(),
            "policy version 1 has no object for attestor snp; sign a version that names it"
        );
        assert_eq!(first.last_read_version(), Some(1));

        // Another replica applies version 2, and the first one reads it at its next call.
        let v2 = jws(&key, &document(2, &[&owner], 2));
        let applied = second.apply(&datastore, &v2, 200).await.expect("v2");
        assert_eq!(applied.version, 2);
        let read = first
            .applied(&datastore, "tdx", &configured)
            .await
            .expect("read");
        assert_eq!(read.version, Some(2));
        assert_eq!(read.policy.allowed_measurements, vec![vec![2u8; 48]]);
        assert_eq!(first.last_read_version(), Some(2));

        // Replays are rejected and leave the stored versions unchanged.
        let replay = second
            .apply(&datastore, &v1, 300)
            .await
            .expect_err("replay");
        assert_eq!(replay.code(), tonic::Code::FailedPrecondition);
        let stored = datastore.list_policy_versions().await.expect("list");
        let versions: Vec<u64> = stored.iter().map(|version| version.version).collect();
        assert_eq!(versions, [1, 2]);
        assert_eq!(stored[1].signer_kid, owner.kid());
        assert_eq!(stored[1].jws, v2);
        assert_eq!(stored[1].applied_at, 200);
    }

    #[test]
    fn stored_chain_rejects_rows_written_without_signature() {
        let (key, stranger) = (new_key(), new_key());
        let genesis = owner(&stranger);
        let owner = owner(&key);
        let row = |version: u64, jws: String| {
            let signed = SignedPolicy::decode(&jws).expect("decode");
            PolicyVersion {
                version,
                document: String::from_utf8(signed.payload).expect("utf-8"),
                signer_kid: signed.kid,
                jws,
                applied_at: 0,
            }
        };
        let chain = vec![
            row(1, jws(&key, &document(1, &[&owner], 1))),
            row(2, jws(&key, &document(2, &[&owner], 2))),
        ];
        let current = verify_stored_chain(&chain, &[], &trust_domain(), 2).expect("intact chain");
        assert_eq!(current.version, 2);

        // A stored document edited after signing.
        let mut edited = chain.clone();
        edited[1].document = edited[1].document.replace("0202", "0303");
        let error = verify_stored_chain(&edited, &[], &trust_domain(), 2).expect_err("edited");
        assert!(error.contains("differs from its signed payload"), "{error}");

        // A version signed by a key the previous version does not name.
        let mut forged = chain.clone();
        forged.push(row(3, jws(&stranger, &document(3, &[&owner], 3))));
        let error = verify_stored_chain(&forged, &[], &trust_domain(), 3).expect_err("forged");
        assert!(error.contains("version 3"), "{error}");

        // A genuine version 2 stored as version 3, with version 2 deleted.
        let mut renumbered = vec![chain[0].clone(), chain[1].clone()];
        renumbered[1].version = 3;
        let error =
            verify_stored_chain(&renumbered, &[], &trust_domain(), 3).expect_err("renumbered");
        assert!(error.contains("holds a document of version 2"), "{error}");

        // A self-named version 1 is rejected when policy_owner_keys names another key.
        let error =
            verify_stored_chain(&chain, &[genesis], &trust_domain(), 2).expect_err("genesis");
        assert!(error.contains("version 1"), "{error}");

        // A chain signed for another trust domain.
        let other = TrustDomain::new("staging.example.org").expect("trust domain");
        let error = verify_stored_chain(&chain, &[], &other, 2).expect_err("other trust domain");
        assert!(error.contains("\"staging.example.org\""), "{error}");
    }

    #[tokio::test]
    async fn apply_rejects_malformed_input() {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = TestDatastore::new(dir.path());
        let datastore = Datastore::open(&database.config).await.expect("open");
        let status = store(Vec::new())
            .apply(&datastore, "not a jws", 1)
            .await
            .expect_err("malformed");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("three base64url parts"),
            "{status:?}"
        );
        assert_eq!(
            datastore.current_policy_version().await.expect("read"),
            None
        );
    }

    #[tokio::test]
    async fn apply_rejects_other_trust_domain() {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = TestDatastore::new(dir.path());
        let datastore = Datastore::open(&database.config).await.expect("open");
        let key = new_key();
        let mut staging: Value =
            serde_json::from_slice(&document(1, &[&owner(&key)], 1)).expect("json");
        staging["trust_domain"] = json!("staging.example.org");
        let status = store(Vec::new())
            .apply(&datastore, &jws(&key, staging.to_string().as_bytes()), 1)
            .await
            .expect_err("other trust domain");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains("\"staging.example.org\""),
            "{status:?}"
        );
        assert!(status.message().contains("\"example.org\""), "{status:?}");
        assert_eq!(
            datastore.current_policy_version().await.expect("read"),
            None
        );
    }

    #[test]
    fn document_text_as_editors_write_it() {
        let key = new_key();
        let compact = String::from_utf8(document(1, &[&owner(&key)], 1)).expect("utf-8");
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(&compact).expect("json"))
                .expect("pretty");
        let templates = compact.replace("\"test\"", "\"keep %{ and ${x} as text\"");
        assert_ne!(templates, compact);
        let cases = [
            ("trailing newline", format!("{pretty}\n")),
            ("CRLF", format!("{}\r\n", pretty.replace('\n', "\r\n"))),
            ("leading spaces", format!("   {compact}")),
            ("comment with templates", templates.clone()),
        ];
        for (name, text) in cases {
            let (jws, _) = sign_document(&key, text.as_bytes()).expect(name);
            let signed = SignedPolicy::decode(&jws).expect(name);
            // The signature covers the exact bytes, whitespace included.
            assert_eq!(signed.payload, text.as_bytes(), "{name}");
            assert!(signed.verifies_with(&owner(&key)), "{name}");
            assert_eq!(
                signed.document.attestors[0].policy.allowed_measurements,
                vec![vec![1u8; 48]],
                "{name}"
            );
        }
        let parsed = PolicyDocument::parse(templates.as_bytes()).expect("templates");
        assert_eq!(parsed.comment.as_deref(), Some("keep %{ and ${x} as text"));
    }

    #[test]
    fn omitted_attestors_lists_configured_names() {
        let parsed = parsed(&document(1, &[&owner(&new_key())], 1));
        assert_eq!(
            omitted_attestors(&parsed, &["snp", "tdx", "tpm"]),
            ["snp", "tpm"]
        );
        assert!(omitted_attestors(&parsed, &["tdx"]).is_empty());
    }

    #[test]
    fn owner_key_file_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let error = read_owner_key(&missing).expect_err("missing").to_string();
        assert!(error.contains("missing.pem"), "{error}");

        let certificate = dir.path().join("cert.pem");
        std::fs::write(
            &certificate,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let error = read_owner_key(&certificate)
            .expect_err("no key")
            .to_string();
        assert!(error.contains("cert.pem"), "{error}");
        assert!(error.contains("no PEM PUBLIC KEY block"), "{error}");

        let key = new_key();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key).expect("key");
        let mut spki =
            hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
        spki.extend_from_slice(pair.public_key().as_ref());
        let public = dir.path().join("owner.pub.pem");
        let body = base64::engine::general_purpose::STANDARD.encode(&spki);
        std::fs::write(
            &public,
            format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"),
        )
        .expect("write");
        assert_eq!(read_owner_key(&public).expect("valid"), owner(&key));
    }

    fn p384_pkcs8() -> Vec<u8> {
        EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .expect("p384")
        .as_ref()
        .to_vec()
    }
}
