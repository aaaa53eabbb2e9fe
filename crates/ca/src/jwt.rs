//! JWT signing keys and JWT-SVID issuance.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use twid_spiffe::{JwtAlgorithm, SpiffeId, assemble, encode_signing_input};

use crate::authority::whole_seconds;
use crate::timestamp::{from_unix_seconds, rfc3339, unix_seconds};
use crate::{CaError, KeyType, PrivateKey};

/// Claims [`JwtKey::sign_jwt_svid`] sets itself; extra claims may not replace them.
const REGISTERED_CLAIMS: [&str; 4] = ["sub", "aud", "exp", "iat"];
const MAX_KEY_ID_LEN: usize = 128;

/// A JWT-SVID signing key with its key ID (`kid`) and expiry.
pub struct JwtKey {
    key_id: String,
    key: PrivateKey,
    not_after: SystemTime,
    algorithm: JwtAlgorithm,
    /// An ECDSA pair producing the fixed-length `r || s` signatures JWS requires; `None`
    /// for RSA keys.
    ecdsa_fixed: Option<EcdsaKeyPair>,
}

impl JwtKey {
    /// Generates a key valid from `now` for `ttl`, with a random 32-character URL-safe
    /// key ID.
    ///
    /// # Errors
    /// Returns [`CaError::InvalidTtl`] for a TTL under one second, and
    /// [`CaError::KeyGeneration`] or [`CaError::Random`] when the crypto library fails.
    pub fn generate(key_type: KeyType, now: SystemTime, ttl: Duration) -> Result<Self, CaError> {
        let ttl_seconds = whole_seconds(ttl)?;
        let mut random = [0u8; 24];
        aws_lc_rs::rand::fill(&mut random).map_err(|_| CaError::Random)?;
        let key_id = URL_SAFE_NO_PAD.encode(random);
        let not_after = unix_seconds(now)
            .checked_add(ttl_seconds)
            .ok_or(CaError::TimeOutOfRange(now))?;
        let key = PrivateKey::generate(key_type)?;
        Self::from_parts(key_id, key, from_unix_seconds(not_after))
    }

    /// Pairs a stored key with its key ID and expiry.
    ///
    /// # Errors
    /// Returns [`CaError::InvalidKeyId`] unless `key_id` has 1 to 128 characters from
    /// `A-Z a-z 0-9 - _ .`, and [`CaError::InvalidPrivateKey`] when the key cannot be loaded
    /// for JWS signing.
    pub fn from_parts(
        key_id: String,
        key: PrivateKey,
        not_after: SystemTime,
    ) -> Result<Self, CaError> {
        let valid_id = !key_id.is_empty()
            && key_id.len() <= MAX_KEY_ID_LEN
            && key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid_id {
            return Err(CaError::InvalidKeyId(key_id));
        }
        let (algorithm, fixed) = match key.key_type() {
            KeyType::EcP256 => (JwtAlgorithm::ES256, Some(&ECDSA_P256_SHA256_FIXED_SIGNING)),
            KeyType::EcP384 => (JwtAlgorithm::ES384, Some(&ECDSA_P384_SHA384_FIXED_SIGNING)),
            KeyType::Rsa2048 | KeyType::Rsa4096 => (JwtAlgorithm::RS256, None),
        };
        let ecdsa_fixed = fixed
            .map(|alg| EcdsaKeyPair::from_pkcs8(alg, key.pkcs8_der()))
            .transpose()
            .map_err(|e| CaError::InvalidPrivateKey(format!("cannot load for JWS: {e}")))?;
        Ok(Self {
            key_id,
            key,
            not_after,
            algorithm,
            ecdsa_fixed,
        })
    }

    /// Returns the key ID, the `kid` of the JWS header and of the bundle's JWK.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Returns the end of the key's validity; no token outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Returns the private key.
    pub fn private_key(&self) -> &PrivateKey {
        &self.key
    }

    /// Returns the public key as DER SubjectPublicKeyInfo.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        self.key.public_key_spki_der()
    }

    /// Returns the JWS algorithm: ES256, ES384 or RS256.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Signs a JWT-SVID and returns the compact token with its expiry.
    ///
    /// The header is `{"alg","kid","typ":"JWT"}`. The claims are `sub`, `aud` (always an
    /// array), `exp` and `iat` in Unix seconds, followed by `extra_claims`. `exp` is
    /// `now + ttl`, capped at the key's expiry.
    ///
    /// # Errors
    /// Returns [`CaError::EmptyAudience`] or [`CaError::EmptyAudienceValue`] for a missing
    /// audience, [`CaError::ReservedClaim`] when `extra_claims` contains `sub`, `aud`, `exp`
    /// or `iat`, [`CaError::InvalidTtl`], [`CaError::Expired`] when the key has expired at
    /// `now`, and [`CaError::Signing`].
    pub fn sign_jwt_svid(
        &self,
        subject: &SpiffeId,
        audience: &[String],
        ttl: Duration,
        now: SystemTime,
        extra_claims: Option<&Map<String, Value>>,
    ) -> Result<(String, SystemTime), CaError> {
        if audience.is_empty() {
            return Err(CaError::EmptyAudience);
        }
        if audience.iter().any(String::is_empty) {
            return Err(CaError::EmptyAudienceValue);
        }
        let ttl_seconds = whole_seconds(ttl)?;
        if let Some(name) = extra_claims
            .into_iter()
            .flat_map(Map::keys)
            .find(|name| REGISTERED_CLAIMS.contains(&name.as_str()))
        {
            return Err(CaError::ReservedClaim(name.clone()));
        }
        let now_unix = unix_seconds(now);
        let key_not_after = unix_seconds(self.not_after);
        if now_unix >= key_not_after {
            return Err(CaError::Expired {
                not_after: self.not_after,
                now,
            });
        }
        let expiry = now_unix.saturating_add(ttl_seconds).min(key_not_after);

        let mut claims = Map::new();
        claims.insert("sub".into(), subject.as_str().into());
        claims.insert("aud".into(), audience.into());
        claims.insert("exp".into(), expiry.into());
        claims.insert("iat".into(), now_unix.into());
        if let Some(extra) = extra_claims {
            claims.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let header = json!({
            "alg": self.algorithm.as_str(),
            "kid": self.key_id,
            "typ": "JWT",
        });
        let signing_input = encode_signing_input(&header, &Value::Object(claims));
        let signature = self.sign(signing_input.as_bytes())?;
        let token = assemble(&signing_input, &signature);
        tracing::debug!(
            subject = %subject,
            kid = %self.key_id,
            expiry = %rfc3339(from_unix_seconds(expiry)),
            "signed JWT-SVID"
        );
        Ok((token, from_unix_seconds(expiry)))
    }

    /// Signs arbitrary claims as a compact JWS with header `{"alg","kid","typ"}`, for tokens
    /// that are not JWT-SVIDs (attestation results, for example). The caller sets every claim,
    /// `exp` included; this only refuses a key that has expired at `now`.
    ///
    /// # Errors
    /// Returns [`CaError::Expired`] and [`CaError::Signing`].
    pub fn sign_claims(
        &self,
        typ: &str,
        claims: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<String, CaError> {
        if unix_seconds(now) >= unix_seconds(self.not_after) {
            return Err(CaError::Expired {
                not_after: self.not_after,
                now,
            });
        }
        let header = json!({
            "alg": self.algorithm.as_str(),
            "kid": self.key_id,
            "typ": typ,
        });
        let signing_input = encode_signing_input(&header, &Value::Object(claims.clone()));
        let signature = self.sign(signing_input.as_bytes())?;
        Ok(assemble(&signing_input, &signature))
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError> {
        let rng = SystemRandom::new();
        if let Some(pair) = &self.ecdsa_fixed {
            return pair
                .sign(&rng, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| CaError::Signing);
        }
        // RS256 is RSASSA-PKCS1-v1_5 with SHA-256, the scheme RSA keys sign certificates with.
        self.key.sign_x509(message)
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("key_id", &self.key_id)
            .field("key_type", &self.key.key_type())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}
