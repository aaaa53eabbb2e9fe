//! Keys and tokens shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use twid_spiffe::{SpiffeId, TrustDomain};
use twid_wimse::{
    BoundTokens, DEFAULT_PROOF_TTL, IssuerKeys, JwsAlgorithm, SigningKey, create_wpt, issue_wit,
};

pub const ISSUER: &str = "https://issuer.example.org";
pub const AUDIENCE: &str = "https://service.example.org/whoami";
pub const ISSUER_KEY_ID: &str = "issuer-1";

/// Returns a fixed validation time, 2026-12-01T00:00:00Z.
pub fn fixed_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_083_200)
}

pub fn subject() -> SpiffeId {
    SpiffeId::new("spiffe://example.org/ns/default/sa/client").unwrap()
}

pub fn trust_domain() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

/// An Identity Server key, the workload key, the issuer keys that trust the former, and
/// a WIT for the workload.
pub struct Fixture {
    pub issuer_key: SigningKey,
    pub workload_key: SigningKey,
    pub issuer_keys: IssuerKeys,
    pub wit: String,
}

impl Fixture {
    pub fn new(issuer_alg: JwsAlgorithm, workload_alg: JwsAlgorithm, now: SystemTime) -> Self {
        let issuer_key = SigningKey::generate(issuer_alg)
            .unwrap()
            .with_key_id(ISSUER_KEY_ID);
        let workload_key = SigningKey::generate(workload_alg).unwrap();
        let mut issuer_keys = IssuerKeys::new();
        issuer_keys.insert(trust_domain(), ISSUER_KEY_ID, issuer_key.public_jwk());
        let wit = issue_wit(
            &issuer_key,
            ISSUER,
            &subject(),
            &workload_key.public_jwk(),
            Duration::from_secs(3600),
            None,
            now,
        )
        .unwrap();
        Self {
            issuer_key,
            workload_key,
            issuer_keys,
            wit,
        }
    }

    pub fn es256(now: SystemTime) -> Self {
        Self::new(JwsAlgorithm::ES256, JwsAlgorithm::ES256, now)
    }

    /// Creates a proof for `audience` with the default lifetime and no bound tokens.
    pub fn proof(&self, audience: &str, now: SystemTime) -> String {
        self.proof_binding(audience, &BoundTokens::default(), now)
    }

    pub fn proof_binding(&self, audience: &str, bound: &BoundTokens, now: SystemTime) -> String {
        create_wpt(
            &self.workload_key,
            &self.wit,
            audience,
            DEFAULT_PROOF_TTL,
            None,
            bound,
            now,
        )
        .unwrap()
    }
}

/// Splits a compact JWS into its decoded header and claims.
pub fn decode(token: &str) -> (serde_json::Value, serde_json::Value) {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let mut next = || {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts.next().unwrap())
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let header = next();
    let claims = next();
    (header, claims)
}

pub fn unix(time: SystemTime) -> i64 {
    i64::try_from(time.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}
