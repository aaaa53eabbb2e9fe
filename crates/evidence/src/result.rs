//! Attestation Results: what a verifier reports to a relying party about evidence (RFC 9334).
//!
//! twid encodes them as EAT claims (RFC 9711) in the shape of the EAR profile draft
//! (draft-fv-rats-ear): `ear.status` states whether the relying party should trust the attester,
//! and `twid.*` claims carry the typed claims of [`Verified`].

use serde_json::{Map, Value, json};

use crate::{Verified, VerifyError};

/// The EAT profile of twid's attestation results, an OID under the UUID arc 2.25 (ITU-T
/// X.667), which needs no registration.
pub const EAT_PROFILE: &str = "2.25.227360298736076670704709277066504449269";

/// The JOSE `typ` of a signed attestation result, after the `application/eat+jwt` media type.
pub const JWT_TYPE: &str = "eat+jwt";

/// The verdict in an attestation result, with the names EAR uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Every check and the policy passed.
    Affirming,
    /// A check or the policy failed; the relying party must not trust the attester.
    Contraindicated,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Affirming => "affirming",
            Status::Contraindicated => "contraindicated",
        }
    }
}

/// The outcome of verifying one piece of evidence and applying a policy to it.
#[derive(Clone, Debug)]
pub struct AttestationResult {
    /// The claims, when the evidence passed its cryptographic checks (even if the policy then
    /// rejected it).
    pub verified: Option<Verified>,
    /// The reason verification or the policy failed.
    pub error: Option<VerifyError>,
    /// The version of the policy applied, when the policy is versioned.
    pub policy_version: Option<u64>,
    /// Whether the evidence was checked to bind the relying party's nonce and key. Without
    /// that check an echoed `eat_nonce` proves nothing about freshness.
    pub binding_checked: bool,
}

impl AttestationResult {
    pub fn status(&self) -> Status {
        if self.error.is_none() && self.verified.is_some() {
            Status::Affirming
        } else {
            Status::Contraindicated
        }
    }

    /// Builds the result's claims, without `iss`, `iat`, `exp` and `jti`, which the signer
    /// sets. `nonce` is the relying party's nonce, echoed as `eat_nonce` (base64url).
    pub fn claims(&self, nonce: Option<&[u8]>, verifier_build: &str) -> Map<String, Value> {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;

        let mut claims = Map::new();
        claims.insert("eat_profile".into(), EAT_PROFILE.into());
        if let Some(nonce) = nonce {
            claims.insert("eat_nonce".into(), URL_SAFE_NO_PAD.encode(nonce).into());
        }
        claims.insert("ear.status".into(), self.status().as_str().into());
        claims.insert("twid.binding_checked".into(), self.binding_checked.into());
        claims.insert(
            "ear.verifier-id".into(),
            json!({ "developer": "twid", "build": verifier_build }),
        );
        if let Some(version) = self.policy_version {
            claims.insert("twid.policy_version".into(), version.into());
        }
        if let Some(error) = &self.error {
            claims.insert("twid.reason".into(), error.reason.as_str().into());
            claims.insert("twid.error".into(), error.message.clone().into());
        }
        if let Some(verified) = &self.verified {
            claims.insert("twid.kind".into(), verified.kind.as_str().into());
            claims.insert(
                "twid.claims".into(),
                serde_json::to_value(&verified.claims).unwrap_or(Value::Null),
            );
            if let Some(status) = verified.tcb_status {
                claims.insert("twid.tcb_status".into(), status.as_str().into());
            }
            if !verified.advisory_ids.is_empty() {
                claims.insert("twid.advisory_ids".into(), json!(verified.advisory_ids));
            }
            claims.insert("twid.debug".into(), verified.debug().into());
            claims.insert(
                "twid.evidence_sha256".into(),
                hex::encode(verified.evidence_sha256).into(),
            );
            let selectors: Vec<String> = verified
                .selectors()
                .into_iter()
                .map(|(ty, value)| format!("{ty}:{value}"))
                .collect();
            claims.insert("twid.selectors".into(), json!(selectors));
            if let Some(until) = verified.valid_until {
                claims.insert("twid.valid_until".into(), until.into());
            }
        }
        claims
    }
}
