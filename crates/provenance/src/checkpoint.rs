//! Checkpoint keys and signatures.
//!
//! A checkpoint signs one record's `(seq, hash)`. An administrator who rewrites the chain and
//! recomputes every hash cannot produce matching checkpoint signatures without the private
//! key, so [`IssuanceLog::verify`](crate::IssuanceLog::verify) with the public key detects the
//! rewrite.

use std::fmt;
use std::time::SystemTime;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, ED25519, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, UnparsedPublicKey,
};
use twid_datastore::IssuanceLogCheckpoint;

use crate::encoding::{checkpoint_message, sha256};
use crate::error::LogError;
use crate::record::{system_time_from_unix_ms, unix_ms};

/// A checkpoint signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointAlgorithm {
    /// Ed25519 (RFC 8032); signatures are 64 bytes.
    Ed25519,
    /// ECDSA over P-256 with SHA-256; signatures are ASN.1 DER `Ecdsa-Sig-Value`.
    EcdsaP256Sha256,
}

impl CheckpointAlgorithm {
    /// Returns the name stored in the checkpoint table: `ed25519` or `ecdsa-p256-sha256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        }
    }
}

impl fmt::Display for CheckpointAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A private key that signs checkpoints. Its `Debug` output shows only the algorithm and key
/// ID.
pub struct SigningKey {
    pair: KeyPairKind,
    public: PublicKey,
}

enum KeyPairKind {
    Ed25519(Ed25519KeyPair),
    EcdsaP256(EcdsaKeyPair),
}

impl SigningKey {
    /// Loads an Ed25519 private key from PKCS#8 DER (v1 or v2).
    ///
    /// # Errors
    /// Returns [`LogError::InvalidKey`] if the bytes are not an Ed25519 PKCS#8 key.
    pub fn ed25519_from_pkcs8(der: &[u8]) -> Result<Self, LogError> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| LogError::InvalidKey(format!("not an Ed25519 PKCS#8 private key: {e}")))?;
        let public = PublicKey {
            algorithm: CheckpointAlgorithm::Ed25519,
            bytes: pair.public_key().as_ref().to_vec(),
        };
        Ok(Self {
            pair: KeyPairKind::Ed25519(pair),
            public,
        })
    }

    /// Loads an ECDSA P-256 private key from PKCS#8 DER.
    ///
    /// # Errors
    /// Returns [`LogError::InvalidKey`] if the bytes are not a P-256 PKCS#8 key.
    pub fn ecdsa_p256_from_pkcs8(der: &[u8]) -> Result<Self, LogError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der).map_err(|e| {
            LogError::InvalidKey(format!("not an ECDSA P-256 PKCS#8 private key: {e}"))
        })?;
        let public = PublicKey {
            algorithm: CheckpointAlgorithm::EcdsaP256Sha256,
            bytes: pair.public_key().as_ref().to_vec(),
        };
        Ok(Self {
            pair: KeyPairKind::EcdsaP256(pair),
            public,
        })
    }

    /// Returns the public key that verifies this key's checkpoints.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `(seq, hash)` and returns the checkpoint row to store.
    pub(crate) fn sign(
        &self,
        seq: u64,
        hash: &[u8; 32],
        now: SystemTime,
    ) -> Result<IssuanceLogCheckpoint, LogError> {
        let message = checkpoint_message(seq, hash);
        let signature = match &self.pair {
            KeyPairKind::Ed25519(pair) => pair.sign(&message).as_ref().to_vec(),
            KeyPairKind::EcdsaP256(pair) => pair
                .sign(&SystemRandom::new(), &message)
                .map_err(|_| LogError::Signing { seq })?
                .as_ref()
                .to_vec(),
        };
        let stored_seq = i64::try_from(seq).map_err(|_| LogError::Signing { seq })?;
        Ok(IssuanceLogCheckpoint {
            seq: stored_seq,
            hash: hash.to_vec(),
            algorithm: self.public.algorithm.as_str().to_owned(),
            key_id: self.public.key_id(),
            signature,
            created_at_ms: unix_ms(now).unwrap_or(0),
        })
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.public.algorithm)
            .field("key_id", &self.public.key_id())
            .finish_non_exhaustive()
    }
}

/// A public key that verifies checkpoint signatures.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    algorithm: CheckpointAlgorithm,
    bytes: Vec<u8>,
}

impl PublicKey {
    /// Builds an Ed25519 public key from its 32 raw bytes.
    ///
    /// # Errors
    /// Returns [`LogError::InvalidKey`] if `raw` is not 32 bytes long.
    pub fn ed25519(raw: &[u8]) -> Result<Self, LogError> {
        if raw.len() != 32 {
            return Err(LogError::InvalidKey(format!(
                "an Ed25519 public key is 32 bytes, not {}",
                raw.len()
            )));
        }
        Ok(Self {
            algorithm: CheckpointAlgorithm::Ed25519,
            bytes: raw.to_vec(),
        })
    }

    /// Builds a P-256 public key from its 65-byte uncompressed point (`0x04 || x || y`).
    /// The point is checked when a signature is verified.
    ///
    /// # Errors
    /// Returns [`LogError::InvalidKey`] if `point` is not 65 bytes starting with `0x04`.
    pub fn ecdsa_p256(point: &[u8]) -> Result<Self, LogError> {
        if point.len() != 65 || point[0] != 0x04 {
            return Err(LogError::InvalidKey(
                "a P-256 public key must be a 65-byte uncompressed point starting with 0x04".into(),
            ));
        }
        Ok(Self {
            algorithm: CheckpointAlgorithm::EcdsaP256Sha256,
            bytes: point.to_vec(),
        })
    }

    /// Returns the key's algorithm.
    pub fn algorithm(&self) -> CheckpointAlgorithm {
        self.algorithm
    }

    /// Returns the raw key bytes: 32 for Ed25519, the 65-byte uncompressed point for P-256.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Returns the key ID stored with each checkpoint: the lowercase hex SHA-256 of
    /// [`as_bytes`](Self::as_bytes).
    pub fn key_id(&self) -> String {
        hex::encode(sha256(&self.bytes))
    }

    /// Checks a stored checkpoint's signature over its own `(seq, hash)`, and returns why it
    /// fails.
    pub(crate) fn check(&self, checkpoint: &IssuanceLogCheckpoint) -> Result<(), String> {
        if checkpoint.algorithm != self.algorithm.as_str() {
            return Err(format!(
                "it is signed with algorithm {:?}, but the verification key is {}",
                checkpoint.algorithm, self.algorithm
            ));
        }
        let seq = u64::try_from(checkpoint.seq)
            .map_err(|_| format!("its seq {} is negative", checkpoint.seq))?;
        let hash: [u8; 32] = checkpoint
            .hash
            .as_slice()
            .try_into()
            .map_err(|_| format!("its hash is {} bytes, not 32", checkpoint.hash.len()))?;
        let verifier = match self.algorithm {
            CheckpointAlgorithm::Ed25519 => UnparsedPublicKey::new(&ED25519, &self.bytes),
            CheckpointAlgorithm::EcdsaP256Sha256 => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.bytes)
            }
        };
        verifier
            .verify(&checkpoint_message(seq, &hash), &checkpoint.signature)
            .map_err(|_| {
                let key_id = self.key_id();
                if checkpoint.key_id == key_id {
                    "its signature is invalid".to_owned()
                } else {
                    format!(
                        "its signature is invalid; it names key {}, the verification key is {key_id}",
                        checkpoint.key_id
                    )
                }
            })
    }
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The signed record's seq.
    pub seq: u64,
    /// The signed record's hash.
    pub hash: [u8; 32],
    /// The signature algorithm name, `ed25519` or `ecdsa-p256-sha256`.
    pub algorithm: String,
    /// The signing key's ID, see [`PublicKey::key_id`].
    pub key_id: String,
    /// The signature over the checkpoint message described in the crate documentation.
    pub signature: Vec<u8>,
    /// When the checkpoint was made, to the millisecond. Not covered by the signature.
    pub created_at: SystemTime,
}

impl Checkpoint {
    pub(crate) fn from_stored(stored: IssuanceLogCheckpoint) -> Result<Self, LogError> {
        let corrupt = |reason: String| LogError::Corrupt {
            seq: stored.seq,
            reason,
        };
        let seq = u64::try_from(stored.seq)
            .map_err(|_| corrupt("the checkpoint seq is negative".into()))?;
        let hash = stored.hash.as_slice().try_into().map_err(|_| {
            corrupt(format!(
                "the checkpoint hash is {} bytes",
                stored.hash.len()
            ))
        })?;
        let created_at = system_time_from_unix_ms(stored.created_at_ms)
            .ok_or_else(|| corrupt("the checkpoint time is out of range".into()))?;
        Ok(Self {
            seq,
            hash,
            algorithm: stored.algorithm,
            key_id: stored.key_id,
            signature: stored.signature,
            created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::Ed25519KeyPair;

    use super::*;

    fn ed25519_key() -> SigningKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate");
        SigningKey::ed25519_from_pkcs8(pkcs8.as_ref()).expect("load")
    }

    fn p256_key() -> SigningKey {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .expect("generate");
        SigningKey::ecdsa_p256_from_pkcs8(pkcs8.as_ref()).expect("load")
    }

    #[test]
    fn signatures_verify_for_both_algorithms() {
        for key in [ed25519_key(), p256_key()] {
            let checkpoint = key.sign(9, &[5; 32], SystemTime::now()).expect("sign");
            assert_eq!(key.public_key().check(&checkpoint), Ok(()));

            let mut moved = checkpoint.clone();
            moved.seq = 10;
            assert!(key.public_key().check(&moved).is_err(), "seq is signed");

            let mut rehashed = checkpoint;
            rehashed.hash = vec![6; 32];
            assert!(key.public_key().check(&rehashed).is_err(), "hash is signed");
        }
    }

    #[test]
    fn other_key_fails_verification() {
        let signer = ed25519_key();
        let checkpoint = signer.sign(1, &[1; 32], SystemTime::now()).expect("sign");
        let other = ed25519_key();
        let reason = other
            .public_key()
            .check(&checkpoint)
            .expect_err("wrong key");
        assert!(reason.contains(&signer.public_key().key_id()), "{reason}");
        let p256 = p256_key();
        assert!(p256.public_key().check(&checkpoint).is_err());
    }

    #[test]
    fn public_key_constructors_check_lengths() {
        assert!(PublicKey::ed25519(&[0; 31]).is_err());
        assert!(PublicKey::ecdsa_p256(&[4; 64]).is_err());
        assert!(PublicKey::ecdsa_p256(&[3; 65]).is_err());
        let key = ed25519_key();
        let rebuilt = PublicKey::ed25519(key.public_key().as_bytes()).expect("32 bytes");
        assert_eq!(&rebuilt, key.public_key());
    }

    #[test]
    fn debug_hides_private_key() {
        let text = format!("{:?}", ed25519_key());
        assert!(text.contains("key_id"), "{text}");
        assert!(!text.contains("pair"), "{text}");
    }
}
