//! The node API's NewWitSvid: a Workload Identity Token (draft-ietf-wimse-workload-creds-02)
//! for a workload key that an agent generated, for an entry the agent is authorized for.
//!
//! The WIT is signed with the trust domain's active JWT key, so the JWT bundle verifies it.
//! Its claims are `iss` (the server's SPIFFE ID), `sub`, `iat`, `exp`, a random `jti` and
//! `cnf.jwk`, the workload's public key with `alg`.

use std::time::SystemTime;

use serde_json::{Map, Value};
use tonic::{Request, Response, Status};
use twid_proto::node::{NewWitSvidRequest, NewWitSvidResponse};
use twid_provenance::NewRecord;
use twid_spiffe::SpiffeId;
use twid_types::RegistrationEntry;

use crate::ServerError;
use crate::convert::unix_seconds;
use crate::node_api::{NodeService, internal};
use crate::provenance;
use crate::workload_attestation::{MAX_WIT_TTL, WIT_TYPE, confirmation_jwk};

/// Largest SubjectPublicKeyInfo accepted; a 4096-bit RSA key takes about 550 bytes.
const MAX_PUBLIC_KEY_BYTES: usize = 2048;

/// A WIT just signed.
struct SignedWit {
    token: String,
    jti: String,
    issued_at: i64,
    expires_at: i64,
}

impl NodeService {
    /// Handles NewWitSvid: authenticates the agent, checks that it is authorized for the
    /// entry, signs the WIT and appends its issuance record before returning it.
    pub(crate) async fn handle_new_wit_svid(
        &self,
        request: Request<NewWitSvidRequest>,
    ) -> Result<Response<NewWitSvidResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        let params = request.get_ref();
        if params.public_key.is_empty() {
            return Err(Status::invalid_argument(
                "public_key is missing; send the workload key as DER SubjectPublicKeyInfo",
            ));
        }
        if params.public_key.len() > MAX_PUBLIC_KEY_BYTES {
            return Err(Status::invalid_argument(format!(
                "public_key is {} bytes; at most {MAX_PUBLIC_KEY_BYTES} are allowed",
                params.public_key.len()
            )));
        }

        let authorized = self
            .shared
            .entries
            .authorized_for(
                &agent.spiffe_id,
                &agent.selectors,
                crate::convert::unix_now(),
            )
            .await
            .map_err(internal)?;
        let Some(entry) = authorized.iter().find(|entry| entry.id == params.entry_id) else {
            let reason = format!(
                "entry {} does not exist or is not authorized for agent {}",
                params.entry_id, agent.spiffe_id
            );
            let record =
                provenance::entry_refusal_record(&agent.spiffe_id, &params.entry_id, &reason);
            provenance::append_refusal(&self.shared, record).await;
            return Err(provenance::sanitize_status(&Status::permission_denied(
                reason,
            )));
        };

        let signed = self.sign_wit_svid(entry, &params.public_key, SystemTime::now())?;
        let record = wit_record(entry, &agent.spiffe_id, &signed.jti, &params.public_key);
        provenance::append_issuance(&self.shared, record).await?;
        tracing::debug!(
            agent_id = %agent.spiffe_id,
            spiffe_id = %entry.spiffe_id,
            jti = %signed.jti,
            "WIT-SVID signed"
        );
        Ok(Response::new(NewWitSvidResponse {
            token: signed.token,
            spiffe_id: entry.spiffe_id.to_string(),
            expires_at: signed.expires_at,
            issued_at: signed.issued_at,
        }))
    }

    /// Signs a WIT for the entry's SPIFFE ID that lives for the entry's JWT-SVID TTL (or the
    /// server default), capped at 24 hours and at the signing key's expiry.
    fn sign_wit_svid(
        &self,
        entry: &RegistrationEntry,
        public_key: &[u8],
        now: SystemTime,
    ) -> Result<SignedWit, Status> {
        let confirmation_key = confirmation_jwk(public_key)?;
        let snapshot = self.shared.ca.snapshot();
        let key = snapshot.active_jwt().ok_or_else(|| {
            Status::unavailable("the server has no active JWT key yet; retry in a few seconds")
        })?;
        let ttl =
            ttl_or(entry.jwt_svid_ttl, self.shared.config.default_jwt_svid_ttl).min(MAX_WIT_TTL);

        let issued_at = unix_seconds(now);
        let ttl_seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let expires_at = issued_at
            .saturating_add(ttl_seconds)
            .min(unix_seconds(key.not_after()));
        if expires_at <= issued_at {
            return Err(Status::unavailable(
                "the server's JWT key expires now; retry after the key rotates",
            ));
        }

        let jti = uuid::Uuid::now_v7().simple().to_string();
        let issuer: SpiffeId = twid_types::server_id(&self.shared.config.trust_domain);
        let mut claims = Map::new();
        claims.insert("iss".into(), Value::from(issuer.as_str()));
        claims.insert("sub".into(), Value::from(entry.spiffe_id.as_str()));
        claims.insert("iat".into(), issued_at.into());
        claims.insert("exp".into(), expires_at.into());
        claims.insert("jti".into(), Value::from(jti.as_str()));
        claims.insert("cnf".into(), serde_json::json!({ "jwk": confirmation_key }));
        let token = key
            .sign_claims(WIT_TYPE, &claims, now)
            .map_err(|error| internal(ServerError::from(error)))?;
        Ok(SignedWit {
            token,
            jti,
            issued_at,
            expires_at,
        })
    }
}

/// Builds the issuance record of a WIT for `entry`, named by its `jti`.
fn wit_record(
    entry: &RegistrationEntry,
    agent_id: &SpiffeId,
    jti: &str,
    public_key: &[u8],
) -> NewRecord {
    let mut record = NewRecord::wit(jti, entry.spiffe_id.clone());
    record.entry_id = Some(entry.id.clone());
    record.agent_id = Some(agent_id.clone());
    record.selectors = entry.selectors.clone();
    record.key_fingerprint = Some(twid_provenance::key_fingerprint(public_key));
    record
}

fn ttl_or(seconds: i64, default: std::time::Duration) -> std::time::Duration {
    u64::try_from(seconds)
        .ok()
        .filter(|&seconds| seconds > 0)
        .map_or(default, std::time::Duration::from_secs)
}
