//! The SPIFFE bundle format: an RFC 7517 JWK Set whose keys carry `use` = `x509-svid` or
//! `jwt-svid`, plus the optional `spiffe_sequence` and `spiffe_refresh_hint` members.
//!
//! Consuming rules: `keys` is required and `[]` is valid. Elements without `kty` or `use`,
//! with an unknown `use` (case-sensitive) or with a key type other than EC or RSA are
//! skipped. An `x509-svid` element uses only `x5c[0]`; a missing or empty `x5c` skips it.
//! A `jwt-svid` element without `kid` rejects the whole document, as go-spiffe,
//! java-spiffe and py-spiffe do, so a publisher's mistake is reported instead of hidden.
//! Repeated top-level member names are rejected.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};

use crate::jwt::jwk_key_members;
use crate::x509::parse_certificate_for_bundle;
use crate::{JwtAuthority, JwtBundle, JwtError, TrustDomain, X509Bundle};

/// A reason a SPIFFE bundle document is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeBundleError {
    /// The document is not a JSON object with unique member names.
    #[error("bundle is not a valid JSON object: {0}")]
    InvalidJson(String),
    /// The `keys` member is missing.
    #[error("bundle has no keys member")]
    MissingKeys,
    /// A member has the wrong JSON type or value.
    #[error("bundle member {0} is malformed")]
    MalformedMember(String),
    /// An `x509-svid` element's certificate is malformed.
    #[error("x509-svid element {index} is malformed: {reason}")]
    MalformedX509Authority {
        /// Position in `keys`.
        index: usize,
        /// Description of the problem.
        reason: String,
    },
    /// A `jwt-svid` element is rejected.
    #[error("jwt-svid element {index} is invalid")]
    InvalidJwtAuthority {
        /// Position in `keys`.
        index: usize,
        /// The JWK error.
        #[source]
        source: JwtError,
    },
}

/// A trust domain's bundle in the SPIFFE bundle format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeBundle {
    /// The trust domain, supplied out of band because bundles do not name it.
    pub trust_domain: TrustDomain,
    /// X.509 authorities, in document order.
    pub x509_authorities: Vec<CertificateDer<'static>>,
    /// JWT authorities keyed by `kid`.
    pub jwt_authorities: BTreeMap<String, JwtAuthority>,
    /// `spiffe_refresh_hint` in seconds.
    pub refresh_hint: Option<u64>,
    /// `spiffe_sequence`.
    pub sequence_number: Option<u64>,
}

impl SpiffeBundle {
    /// Creates an empty bundle with no sequence number or refresh hint.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: BTreeMap::new(),
            refresh_hint: None,
            sequence_number: None,
        }
    }

    /// Parses a SPIFFE bundle document for `trust_domain`; see the module docs for which
    /// elements are skipped.
    ///
    /// # Errors
    /// Returns an error for invalid JSON, a missing `keys`, a refresh hint or sequence that is
    /// not a non-negative integer, a malformed `x5c` certificate, or an invalid `jwt-svid` key.
    pub fn parse(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, SpiffeBundleError> {
        let document = crate::json::parse_unique_object(json)
            .map_err(|e| SpiffeBundleError::InvalidJson(e.to_string()))?;
        let keys = match document.get("keys") {
            None => return Err(SpiffeBundleError::MissingKeys),
            Some(Value::Array(keys)) => keys,
            Some(_) => return Err(SpiffeBundleError::MalformedMember("keys".into())),
        };
        let mut bundle = Self::new(trust_domain);
        bundle.refresh_hint = unsigned_member(&document, "spiffe_refresh_hint")?;
        bundle.sequence_number = unsigned_member(&document, "spiffe_sequence")?;
        for (index, key) in keys.iter().enumerate() {
            bundle.read_element(index, key)?;
        }
        Ok(bundle)
    }

    fn read_element(&mut self, index: usize, key: &Value) -> Result<(), SpiffeBundleError> {
        let object = key
            .as_object()
            .ok_or_else(|| SpiffeBundleError::MalformedMember(format!("keys[{index}]")))?;
        if object.get("kty").and_then(Value::as_str).is_none() {
            return Ok(());
        }
        match object.get("use").and_then(Value::as_str) {
            Some("x509-svid") => self.read_x509_element(index, object),
            Some("jwt-svid") => self.read_jwt_element(index, key),
            _ => Ok(()),
        }
    }

    fn read_x509_element(
        &mut self,
        index: usize,
        object: &Map<String, Value>,
    ) -> Result<(), SpiffeBundleError> {
        let malformed = |reason: &str| SpiffeBundleError::MalformedX509Authority {
            index,
            reason: reason.to_owned(),
        };
        let first = match object.get("x5c") {
            None => return Ok(()),
            Some(Value::Array(certs)) if certs.is_empty() => return Ok(()),
            Some(Value::Array(certs)) => &certs[0],
            Some(_) => return Err(malformed("x5c is not an array")),
        };
        let text = first
            .as_str()
            .ok_or_else(|| malformed("x5c[0] is not a string"))?;
        let der = STANDARD
            .decode(text)
            .map_err(|_| malformed("x5c[0] is not standard base64"))?;
        parse_certificate_for_bundle(&der).map_err(|e| malformed(&e))?;
        let cert = CertificateDer::from(der);
        if !self.x509_authorities.contains(&cert) {
            self.x509_authorities.push(cert);
        }
        Ok(())
    }

    fn read_jwt_element(&mut self, index: usize, key: &Value) -> Result<(), SpiffeBundleError> {
        let invalid = |source| SpiffeBundleError::InvalidJwtAuthority { index, source };
        let authority = match JwtAuthority::from_jwk(key) {
            Ok(authority) => authority,
            Err(JwtError::UnsupportedKeyType(_)) => return Ok(()),
            Err(e) => return Err(invalid(e)),
        };
        if self.jwt_authorities.contains_key(&authority.key_id) {
            return Err(invalid(JwtError::DuplicateKeyId(authority.key_id)));
        }
        self.jwt_authorities
            .insert(authority.key_id.clone(), authority);
        Ok(())
    }

    /// Encodes the bundle: each X.509 authority as its own `x509-svid` element with `kty`,
    /// the key members and a one-certificate `x5c`, and no `kid`; each JWT authority as a
    /// `jwt-svid` element with `kid`. The sequence number and refresh hint are written
    /// when set.
    ///
    /// Limit: an X.509 authority whose key is not EC or RSA is written without `kty` and key
    /// members, so consumers skip it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut keys: Vec<Value> = self.x509_authorities.iter().map(x509_element).collect();
        keys.extend(
            self.jwt_authorities
                .values()
                .map(|a| a.to_jwk(Some("jwt-svid"))),
        );
        let mut document = Map::new();
        document.insert("keys".into(), Value::Array(keys));
        if let Some(sequence) = self.sequence_number {
            document.insert("spiffe_sequence".into(), sequence.into());
        }
        if let Some(hint) = self.refresh_hint {
            document.insert("spiffe_refresh_hint".into(), hint.into());
        }
        Value::Object(document).to_string().into_bytes()
    }

    /// Returns the X.509 authorities as an [`X509Bundle`].
    pub fn x509_bundle(&self) -> X509Bundle {
        let mut bundle = X509Bundle::new(self.trust_domain.clone());
        for cert in &self.x509_authorities {
            bundle.add_authority(cert.clone());
        }
        bundle
    }

    /// Returns the JWT authorities as a [`JwtBundle`].
    pub fn jwt_bundle(&self) -> JwtBundle {
        let mut bundle = JwtBundle::new(self.trust_domain.clone());
        for authority in self.jwt_authorities.values() {
            bundle.add_authority(authority.clone());
        }
        bundle
    }
}

fn x509_element(cert: &CertificateDer<'_>) -> Value {
    let mut element = Map::new();
    element.insert("use".into(), "x509-svid".into());
    if let Some(info) = crate::x509::certificate_public_key(cert) {
        element.extend(jwk_key_members(&info));
    }
    let x5c = vec![Value::from(STANDARD.encode(cert.as_ref()))];
    element.insert("x5c".into(), Value::Array(x5c));
    Value::Object(element)
}

fn unsigned_member(
    document: &Map<String, Value>,
    name: &str,
) -> Result<Option<u64>, SpiffeBundleError> {
    match document.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| SpiffeBundleError::MalformedMember(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SpiffeBundle, SpiffeBundleError> {
        SpiffeBundle::parse(TrustDomain::new("example.org").unwrap(), json.as_bytes())
    }

    #[test]
    fn rejects_non_integer_refresh_hint() {
        // conformance: BDL-03
        for hint in ["\"60s\"", "1.5", "-1"] {
            let json = format!(r#"{{"keys":[],"spiffe_refresh_hint":{hint}}}"#);
            let err = parse(&json).unwrap_err();
            assert_eq!(
                err,
                SpiffeBundleError::MalformedMember("spiffe_refresh_hint".into())
            );
        }
    }

    #[test]
    fn rejects_duplicate_top_level_members() {
        assert!(matches!(
            parse(r#"{"keys":[],"keys":[]}"#),
            Err(SpiffeBundleError::InvalidJson(_))
        ));
    }

    #[test]
    fn skips_unusable_elements() {
        // conformance: BDL-05, BDL-07, BDL-08, X5-21
        let json = r#"{"keys":[
            {"use":"x509-svid","x5c":["AA=="]},
            {"kty":"EC","use":"X509-SVID","x5c":["AA=="]},
            {"kty":"EC","use":"x509-svid"},
            {"kty":"EC","use":"x509-svid","x5c":[]},
            {"kty":"OKP","use":"jwt-svid","kid":"a","crv":"Ed25519","x":"AA"}
        ]}"#;
        let bundle = parse(json).unwrap();
        assert!(bundle.x509_authorities.is_empty());
        assert!(bundle.jwt_authorities.is_empty());
        assert_eq!(
            parse(r#"{"keys":[]}"#).unwrap(),
            SpiffeBundle::new(bundle.trust_domain)
        );
    }

    #[test]
    fn writes_sequence_and_hint() {
        let mut bundle = SpiffeBundle::new(TrustDomain::new("example.org").unwrap());
        bundle.sequence_number = Some(7);
        bundle.refresh_hint = Some(300);
        let value: Value = serde_json::from_slice(&bundle.to_json()).unwrap();
        assert_eq!(value["spiffe_sequence"], 7);
        assert_eq!(value["spiffe_refresh_hint"], 300);
        assert_eq!(value["keys"], serde_json::json!([]));
    }
}
