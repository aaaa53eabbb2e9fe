//! WIT trust anchors: the Identity Server public keys of each trust domain.
//!
//! Keys are configured out of band and bound to a trust domain, and a WIT is verified only
//! with the keys of the trust domain of its `sub`. This crate never uses a token member
//! (`iss`, `jku`, `jwk`, `x5u`) to find or fetch a key.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::Value;
use twid_spiffe::{JwtBundleSet, TrustDomain};

use crate::{PublicJwk, WimseError};

/// Identity Server public keys by trust domain, then by `kid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerKeys {
    domains: BTreeMap<TrustDomain, BTreeMap<String, PublicJwk>>,
}

impl IssuerKeys {
    /// Creates an empty set, which rejects every WIT.
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies the keys of SPIFFE JWT bundles, each bound to its bundle's trust domain.
    ///
    /// # Errors
    /// Returns [`WimseError::InvalidJwk`] for a bundle key that is not a usable public key.
    pub fn from_jwt_bundles(bundles: &JwtBundleSet) -> Result<Self, WimseError> {
        let mut keys = Self::new();
        for bundle in bundles.iter() {
            for (key_id, authority) in bundle.authorities() {
                let jwk = PublicJwk::from_json(&authority.to_jwk(None))?;
                keys.insert(bundle.trust_domain().clone(), key_id.clone(), jwk);
            }
        }
        Ok(keys)
    }

    /// Adds the keys of a JWK Set (`{"keys": [...]}`) for `trust_domain`.
    ///
    /// Every key needs a non-empty `kid`. Keys with a `use` other than `sig` are skipped.
    /// A key's `alg`, when present, is the only algorithm a WIT signed with it may use.
    ///
    /// # Errors
    /// Returns [`WimseError::InvalidJwkSet`] when the document is not a JSON object with a
    /// `keys` array, or a key lacks `kid` or repeats one, and [`WimseError::InvalidJwk`] for
    /// a key that is not a usable public key.
    pub fn add_jwks(&mut self, trust_domain: TrustDomain, jwks: &[u8]) -> Result<(), WimseError> {
        let document: Value = serde_json::from_slice(jwks)
            .map_err(|e| WimseError::InvalidJwkSet(format!("not JSON: {e}")))?;
        let Some(Value::Array(keys)) = document.get("keys") else {
            return Err(WimseError::InvalidJwkSet(
                "keys is missing or not an array".into(),
            ));
        };
        let mut parsed = BTreeMap::new();
        for key in keys {
            if !matches!(key.get("use").and_then(Value::as_str), None | Some("sig")) {
                continue;
            }
            let jwk = PublicJwk::from_json(key)?;
            let key_id = match jwk.key_id() {
                Some(kid) if !kid.is_empty() => kid.to_owned(),
                _ => return Err(WimseError::InvalidJwkSet("a key has no kid".into())),
            };
            if parsed.insert(key_id.clone(), jwk).is_some() {
                return Err(WimseError::InvalidJwkSet(format!(
                    "two keys have kid {key_id:?}"
                )));
            }
        }
        for (key_id, jwk) in parsed {
            self.insert(trust_domain.clone(), key_id, jwk);
        }
        Ok(())
    }

    /// Adds `key` under `key_id` for `trust_domain`, replacing a key with the same ID.
    pub fn insert(&mut self, trust_domain: TrustDomain, key_id: impl Into<String>, key: PublicJwk) {
        self.domains
            .entry(trust_domain)
            .or_default()
            .insert(key_id.into(), key);
    }

    /// Returns the number of keys over all trust domains.
    pub fn len(&self) -> usize {
        self.domains.values().map(BTreeMap::len).sum()
    }

    /// Returns whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Selects the key named by `key_id` in `trust_domain`. Without a `kid`, the trust
    /// domain's only key is selected, so that the choice is never ambiguous.
    pub(crate) fn select(
        &self,
        trust_domain: &TrustDomain,
        key_id: Option<&str>,
    ) -> Result<&PublicJwk, WimseError> {
        let keys = self
            .domains
            .get(trust_domain)
            .filter(|keys| !keys.is_empty())
            .ok_or_else(|| WimseError::UnknownTrustDomain(trust_domain.clone()))?;
        match key_id {
            Some(key_id) => keys.get(key_id).ok_or_else(|| WimseError::UnknownKeyId {
                key_id: key_id.to_owned(),
                trust_domain: trust_domain.clone(),
            }),
            None if keys.len() == 1 => keys
                .values()
                .next()
                .ok_or_else(|| WimseError::UnknownTrustDomain(trust_domain.clone())),
            None => Err(WimseError::MissingKeyId(trust_domain.clone())),
        }
    }
}

/// Issuer keys that can be replaced while requests are verified, for key rotation.
#[derive(Debug, Clone)]
pub struct SharedIssuerKeys(Arc<ArcSwap<IssuerKeys>>);

impl SharedIssuerKeys {
    /// Wraps `keys`.
    pub fn new(keys: IssuerKeys) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(keys)))
    }

    /// Replaces the keys; requests already being verified keep the old set.
    pub fn replace(&self, keys: IssuerKeys) {
        self.0.store(Arc::new(keys));
    }

    /// Returns the current keys.
    pub fn load(&self) -> Arc<IssuerKeys> {
        self.0.load_full()
    }
}

impl From<IssuerKeys> for SharedIssuerKeys {
    fn from(keys: IssuerKeys) -> Self {
        Self::new(keys)
    }
}
