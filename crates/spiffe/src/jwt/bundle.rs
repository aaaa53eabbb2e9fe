//! JWT bundles: the JWT authorities of one trust domain, read from and written as the plain
//! JWK Set the Workload API `FetchJWTBundles` RPC carries.
//!
//! In this form keys need not have `use` (SPIRE strips it). Keys with a `use` other than
//! `jwt-svid` or `sig` are skipped, as are keys whose `kty` is neither EC nor RSA. A key
//! without `kid`, a malformed EC or RSA key, or a repeated `kid` rejects the whole document,
//! as go-spiffe, java-spiffe and py-spiffe do for the missing `kid`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::authority::jwk_key_id;
use super::{JwtAuthority, JwtError};
use crate::TrustDomain;
use crate::json::parse_unique_object;

/// The JWT authorities of one trust domain, keyed by `kid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtBundle {
    trust_domain: TrustDomain,
    authorities: BTreeMap<String, JwtAuthority>,
}

impl JwtBundle {
    /// Creates an empty bundle, which makes every JWT-SVID of the trust domain invalid.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            authorities: BTreeMap::new(),
        }
    }

    /// Parses a plain JWK Set (`{"keys": [...]}`); see the module docs for which keys count.
    ///
    /// # Errors
    /// Returns an error when the document is not a JSON object with a `keys` array, or when a
    /// key lacks `kid`, repeats a `kid`, or is a malformed EC or RSA key.
    pub fn parse_jwks(trust_domain: TrustDomain, bytes: &[u8]) -> Result<Self, JwtError> {
        let document =
            parse_unique_object(bytes).map_err(|e| JwtError::MalformedJwkSet(e.to_string()))?;
        let keys = match document.get("keys") {
            Some(Value::Array(keys)) => keys,
            Some(_) => return Err(JwtError::MalformedJwkSet("keys is not an array".into())),
            None => return Err(JwtError::MalformedJwkSet("keys is missing".into())),
        };
        let mut bundle = Self::new(trust_domain);
        for key in keys {
            if let Some(authority) = read_jwks_key(key)? {
                bundle.insert_unique(authority)?;
            }
        }
        Ok(bundle)
    }

    /// Encodes the bundle as a JWK Set with no `use` members, the Workload API form.
    pub fn to_jwks(&self) -> Vec<u8> {
        let keys: Vec<Value> = self.authorities.values().map(|a| a.to_jwk(None)).collect();
        json!({ "keys": keys }).to_string().into_bytes()
    }

    /// Returns the trust domain the bundle belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Returns the authorities keyed by `kid`.
    pub fn authorities(&self) -> &BTreeMap<String, JwtAuthority> {
        &self.authorities
    }

    /// Returns the authority with `key_id`.
    pub fn get(&self, key_id: &str) -> Option<&JwtAuthority> {
        self.authorities.get(key_id)
    }

    /// Adds `authority`, replacing and returning one with the same `kid`.
    pub fn add_authority(&mut self, authority: JwtAuthority) -> Option<JwtAuthority> {
        self.authorities.insert(authority.key_id.clone(), authority)
    }

    /// Adds `authority`, failing when its `kid` is already present.
    pub(crate) fn insert_unique(&mut self, authority: JwtAuthority) -> Result<(), JwtError> {
        if self.authorities.contains_key(&authority.key_id) {
            return Err(JwtError::DuplicateKeyId(authority.key_id));
        }
        self.add_authority(authority);
        Ok(())
    }
}

/// Reads one key of a Workload API JWK Set; `Ok(None)` means the key is skipped.
fn read_jwks_key(key: &Value) -> Result<Option<JwtAuthority>, JwtError> {
    let object = key
        .as_object()
        .ok_or_else(|| JwtError::MalformedJwkSet("a key is not a JSON object".into()))?;
    jwk_key_id(object)?;
    if !matches!(
        object.get("use").and_then(Value::as_str),
        None | Some("jwt-svid" | "sig")
    ) {
        return Ok(None);
    }
    if !matches!(
        object.get("kty").and_then(Value::as_str),
        Some("EC" | "RSA")
    ) {
        return Ok(None);
    }
    JwtAuthority::from_jwk(key).map(Some)
}

/// JWT bundles keyed by trust domain, at most one per trust domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtBundleSet {
    bundles: BTreeMap<TrustDomain, JwtBundle>,
}

impl JwtBundleSet {
    /// Creates an empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bundle` under its trust domain and returns the bundle it replaces.
    pub fn insert(&mut self, bundle: JwtBundle) -> Option<JwtBundle> {
        self.bundles.insert(bundle.trust_domain.clone(), bundle)
    }

    /// Returns the bundle of `trust_domain`.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&JwtBundle> {
        self.bundles.get(trust_domain)
    }

    /// Iterates over the bundles in trust domain order.
    pub fn iter(&self) -> impl Iterator<Item = &JwtBundle> {
        self.bundles.values()
    }

    /// Returns the number of bundles.
    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    /// Returns whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}

impl FromIterator<JwtBundle> for JwtBundleSet {
    fn from_iter<I: IntoIterator<Item = JwtBundle>>(iter: I) -> Self {
        let mut set = Self::new();
        for bundle in iter {
            set.insert(bundle);
        }
        set
    }
}
