//! The verification API: appraises evidence for relying parties that are not twid agents and
//! returns a signed Attestation Result (RFC 9334) as an EAT in JWT form.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tonic::{Request, Response, Status};
use twid_evidence::Envelope;
use twid_evidence::result::{AttestationResult, JWT_TYPE};
use twid_proto::attestation::verification_server::{Verification, VerificationServer};
use twid_proto::attestation::{VerifyRequest, VerifyResponse};

use crate::Shared;
use crate::convert::unix_seconds;

/// Lifetime of a signed attestation result. Short, because it vouches for evidence at one
/// moment; it is also capped at the end of the evidence's validity.
const RESULT_TTL: Duration = Duration::from_secs(300);

/// Upper bound on a nonce, as for the report data it usually feeds.
const MAX_NONCE_LEN: usize = 64;

pub(crate) fn service(shared: &Arc<Shared>) -> VerificationServer<VerificationService> {
    VerificationServer::new(VerificationService {
        shared: Arc::clone(shared),
    })
    .max_decoding_message_size(2 * twid_evidence::envelope::MAX_ENVELOPE_BYTES)
}

pub(crate) struct VerificationService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Verification for VerificationService {
    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        let request = request.into_inner();
        if request.nonce.len() > MAX_NONCE_LEN {
            return Err(Status::invalid_argument(format!(
                "nonce is {} bytes; the maximum is {MAX_NONCE_LEN}",
                request.nonce.len()
            )));
        }
        if !request.public_key.is_empty() && request.nonce.is_empty() {
            return Err(Status::invalid_argument(
                "public_key needs a nonce: the evidence binds SHA-512(nonce || public_key)",
            ));
        }
        let envelope = Envelope::from_json(&request.envelope)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let attestor = if request.attestor.is_empty() {
            self.shared.evidence.for_kind(envelope.kind)
        } else {
            self.shared.evidence.get(&request.attestor)
        };
        let Some(attestor) = attestor else {
            let requested = if request.attestor.is_empty() {
                format!("for {} evidence", envelope.kind)
            } else {
                format!("named {:?}", request.attestor)
            };
            return Err(Status::failed_precondition(format!(
                "this server has no evidence node attestor {requested}; configured: {}",
                self.shared.evidence.names().join(", ")
            )));
        };
        let now = SystemTime::now();
        let binding = (!request.nonce.is_empty() && !request.public_key.is_empty())
            .then(|| (request.nonce.clone(), request.public_key.clone()));
        let applied = crate::policy::applied_for(&self.shared, &attestor.config.name).await?;
        let result = {
            let envelope_json = request.envelope.clone();
            let attestor = Arc::clone(attestor);
            let now_unix = unix_seconds(now);
            tokio::task::spawn_blocking(move || {
                attestor.appraise(
                    &envelope_json,
                    binding.as_ref().map(|(n, k)| (n.as_slice(), k.as_slice())),
                    &applied,
                    now_unix,
                )
            })
            .await
            .map_err(|_| Status::internal("evidence verification stopped unexpectedly"))?
        };
        let nonce = (!request.nonce.is_empty()).then_some(request.nonce.as_slice());
        let token = self.sign(&result, nonce, now)?;
        let status = result.status().as_str().to_owned();
        match &result.error {
            None => tracing::info!(kind = %envelope.kind, status = %status, "appraised evidence"),
            Some(error) => tracing::info!(
                kind = %envelope.kind,
                status = %status,
                reason = %error.reason,
                error = %error.message,
                "appraised evidence"
            ),
        }
        Ok(Response::new(VerifyResponse {
            attestation_result: token,
            status,
        }))
    }
}

impl VerificationService {
    fn sign(
        &self,
        result: &AttestationResult,
        nonce: Option<&[u8]>,
        now: SystemTime,
    ) -> Result<String, Status> {
        let snapshot = self.shared.ca.snapshot();
        let key = snapshot.active_jwt().ok_or_else(|| {
            Status::unavailable("the server has no active JWT key yet; retry in a few seconds")
        })?;
        let now_unix = unix_seconds(now);
        let mut expiry = now_unix.saturating_add(RESULT_TTL.as_secs() as i64);
        if let Some(until) = result.verified.as_ref().and_then(|v| v.valid_until) {
            expiry = expiry.min(until);
        }
        expiry = expiry.min(unix_seconds(key.not_after()));
        let mut claims = result.claims(nonce, env!("CARGO_PKG_VERSION"));
        let issuer = twid_types::server_id(&self.shared.config.trust_domain);
        claims.insert("iss".into(), Value::from(issuer.as_str()));
        claims.insert("iat".into(), now_unix.into());
        claims.insert("exp".into(), expiry.max(now_unix).into());
        claims.insert(
            "jti".into(),
            uuid::Uuid::new_v4().simple().to_string().into(),
        );
        key.sign_claims(JWT_TYPE, &claims, now).map_err(|error| {
            tracing::error!(error = %error, "failed to sign an attestation result");
            Status::internal("failed to sign the attestation result")
        })
    }
}
