//! The AttestAgent exchange for evidence attestors: the server sends a fresh nonce, the agent
//! responds with an evidence envelope that binds the nonce and its CSR key, and the server
//! verifies it, applies the attestor's policy and issues the agent SVID.
//!
//! An agent ID is `spiffe://<td>/spire/agent/<attestor>/<stable id>`, where the stable id is
//! the value that identifies the platform or image (see [`crate::evidence::stable_id`]). The
//! same platform may attest again and then replaces its earlier record, unlike a join token.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use twid_proto::node::{
    AgentSvid, AttestAgentRequest, AttestAgentResponse, attest_agent_request, attest_agent_response,
};
use twid_spiffe::SpiffeId;
use twid_telemetry::names;
use twid_types::{AttestedAgent, Selector};

use crate::ServerError;
use crate::convert::unix_seconds;
use crate::evidence::stable_id;
use crate::node_api::{AttestStream, NodeService, cert_expiry, internal, serial_hex};

/// How long the server waits for the agent's evidence after sending the challenge.
pub(crate) const EVIDENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Length of the challenge nonce in bytes.
pub(crate) const NONCE_LEN: usize = 32;

impl NodeService {
    /// Runs the challenge exchange on its own task and returns the response stream: first the
    /// challenge, then the SVID or the error.
    pub(crate) fn attest_evidence_stream(
        &self,
        attestor: String,
        csr: Vec<u8>,
        requests: Streaming<AttestAgentRequest>,
    ) -> AttestStream {
        let (sender, receiver) = mpsc::channel(2);
        let service = NodeService {
            shared: Arc::clone(&self.shared),
        };
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let result = service
                    .attest_evidence(&attestor, &csr, requests, &sender)
                    .await;
                let outcome = if result.is_ok() { "ok" } else { "rejected" };
                metrics::counter!(names::NODE_ATTESTATIONS_TOTAL, "result" => outcome).increment(1);
                let message = result.map(|svid| AttestAgentResponse {
                    step: Some(attest_agent_response::Step::Result(svid)),
                });
                // A send fails only when the agent closed the stream, so no one can receive it.
                let _ = sender.send(message).await;
            },
            span,
        ));
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
    }

    async fn attest_evidence(
        &self,
        attestor_name: &str,
        csr: &[u8],
        mut requests: Streaming<AttestAgentRequest>,
        sender: &mpsc::Sender<Result<AttestAgentResponse, Status>>,
    ) -> Result<AgentSvid, Status> {
        let public_key_spki_der = twid_ca::parse_csr(csr)
            .map_err(|error| Status::invalid_argument(format!("invalid CSR: {error}")))?
            .public_key_spki_der;
        let mut nonce = vec![0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| {
            internal(ServerError::Encode(
                "the random number generator failed".to_owned(),
            ))
        })?;
        let challenge = AttestAgentResponse {
            step: Some(attest_agent_response::Step::Challenge(nonce.clone())),
        };
        if sender.send(Ok(challenge)).await.is_err() {
            return Err(Status::cancelled("the agent closed the attestation stream"));
        }

        let envelope = match tokio::time::timeout(EVIDENCE_TIMEOUT, requests.message()).await {
            Err(_) => {
                tracing::info!(
                    attestor = attestor_name,
                    reason = "timeout",
                    "node attestation rejected"
                );
                return Err(Status::deadline_exceeded(format!(
                    "no evidence arrived within {}s of the challenge; the collector may be \
                     hanging",
                    EVIDENCE_TIMEOUT.as_secs()
                )));
            }
            Ok(message) => message?,
        };
        let Some(attest_agent_request::Step::ChallengeResponse(envelope)) =
            envelope.and_then(|message| message.step)
        else {
            return Err(Status::invalid_argument(
                "the second attestation message must carry the challenge response",
            ));
        };

        let now_time = whole_seconds(SystemTime::now());
        let now = unix_seconds(now_time);
        let shared = Arc::clone(&self.shared);
        let name = attestor_name.to_owned();
        let verification = tokio::task::spawn_blocking(move || {
            let attestor = shared.evidence.get(&name).ok_or_else(|| {
                twid_evidence::VerifyError::policy(format!("node attestor {name} is gone"))
            })?;
            attestor
                .verify(&envelope, &nonce, &public_key_spki_der, now)
                .map(|verified| (verified, attestor.config.kind))
        })
        .await
        .map_err(|error| {
            internal(ServerError::Encode(format!(
                "verifier task failed: {error}"
            )))
        })?;
        let (verified, kind) = match verification {
            Ok(result) => result,
            Err(error) => {
                tracing::info!(
                    attestor = attestor_name,
                    reason = %error.reason,
                    error = %error.message,
                    "node attestation rejected"
                );
                return Err(Status::permission_denied(format!(
                    "{attestor_name} evidence rejected: {error}"
                )));
            }
        };

        let trust_domain = &self.shared.config.trust_domain;
        let agent_id = trust_domain
            .id_with_path(&format!(
                "/spire/agent/{attestor_name}/{}",
                stable_id(&verified)
            ))
            .map_err(|error| Status::invalid_argument(format!("invalid agent ID: {error}")))?;
        let ttl = evidence_ttl(self.agent_ttl(), verified.valid_until, now).ok_or_else(|| {
            Status::permission_denied(format!(
                "{attestor_name} evidence rejected: its certificates or collateral stop being \
                 valid at {:?}, which is not after now {now}",
                verified.valid_until
            ))
        })?;
        let selectors = verified
            .selectors()
            .into_iter()
            .map(|(kind, value)| Selector::new(kind, value))
            .collect();
        let svid = self
            .store_evidence_agent(&agent_id, attestor_name, csr, ttl, now_time, selectors)
            .await?;
        tracing::info!(
            agent_id = %agent_id,
            attestor = attestor_name,
            kind = %kind,
            tcb_status = ?verified.tcb_status,
            valid_until = ?verified.valid_until,
            "agent attested with hardware evidence"
        );
        Ok(svid)
    }

    /// Signs the agent SVID and creates the agent record, replacing an earlier record of the
    /// same ID unless that agent is banned.
    async fn store_evidence_agent(
        &self,
        agent_id: &SpiffeId,
        attestor_name: &str,
        csr: &[u8],
        ttl: Duration,
        now: SystemTime,
        selectors: Vec<Selector>,
    ) -> Result<AgentSvid, Status> {
        let datastore = &self.shared.datastore;
        let existing = datastore
            .get_attested_agent(agent_id)
            .await
            .map_err(|error| internal(error.into()))?;
        if existing.as_ref().is_some_and(|agent| agent.banned) {
            tracing::info!(agent_id = %agent_id, reason = "banned", "node attestation rejected");
            return Err(Status::permission_denied(format!(
                "agent {agent_id} is banned; an operator must unban it before it may attest"
            )));
        }
        let cert = self.sign_x509_at(agent_id, csr, ttl, &[], now)?;
        let agent = AttestedAgent {
            spiffe_id: agent_id.clone(),
            attestation_type: attestor_name.to_owned(),
            x509_svid_serial: serial_hex(&cert)?,
            x509_svid_expires_at: cert_expiry(&cert),
            selectors,
            banned: false,
            attested_at: unix_seconds(now),
        };
        // NOTE: the datastore has no replace operation, so a re-attestation deletes and then
        // creates the record; a concurrent reader may briefly find no agent.
        if existing.is_some() {
            match datastore.delete_attested_agent(agent_id).await {
                Ok(()) | Err(twid_datastore::DatastoreError::NotFound(_)) => {}
                Err(error) => return Err(internal(error.into())),
            }
        }
        datastore
            .create_attested_agent(&agent)
            .await
            .map_err(|error| match error {
                twid_datastore::DatastoreError::AlreadyExists(_) => Status::aborted(format!(
                    "agent {agent_id} attested concurrently; retry the attestation"
                )),
                other => internal(other.into()),
            })?;
        Ok(self.agent_svid(agent_id, cert))
    }

    /// Returns the lifetime of a renewed agent SVID. A renewed SVID of an evidence-attested
    /// agent expires no later than its current one, because the validity of the evidence's
    /// certificates and collateral bounds that expiry. Such an agent attests again to get more.
    pub(crate) fn renewal_ttl(
        &self,
        agent: &AttestedAgent,
        now: SystemTime,
    ) -> Result<Duration, Status> {
        let ttl = self.agent_ttl();
        // The attestor's name decides, so the bound holds even after its block is removed.
        if twid_config::evidence_kind(&agent.attestation_type).is_none() {
            return Ok(ttl);
        }
        let now = unix_seconds(now);
        evidence_ttl(ttl, Some(agent.x509_svid_expires_at), now).ok_or_else(|| {
            Status::permission_denied(format!(
                "agent {} was attested with {} evidence whose validity has ended; attest again",
                agent.spiffe_id, agent.attestation_type
            ))
        })
    }
}

/// Returns `ttl` shortened so that `now + ttl` does not pass `valid_until`, or `None` when
/// nothing of it is left.
fn evidence_ttl(ttl: Duration, valid_until: Option<i64>, now: i64) -> Option<Duration> {
    let Some(valid_until) = valid_until else {
        return Some(ttl);
    };
    let left = u64::try_from(valid_until.saturating_sub(now)).ok()?;
    if left == 0 {
        return None;
    }
    Some(ttl.min(Duration::from_secs(left)))
}

/// Drops the sub-second part, so that SVID times computed from it match Unix seconds.
pub(crate) fn whole_seconds(time: SystemTime) -> SystemTime {
    UNIX_EPOCH
        + Duration::from_secs(
            time.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_ttl_caps_lifetime() {
        let hour = Duration::from_secs(3600);
        assert_eq!(evidence_ttl(hour, None, 100), Some(hour));
        assert_eq!(
            evidence_ttl(hour, Some(160), 100),
            Some(Duration::from_secs(60))
        );
        assert_eq!(evidence_ttl(hour, Some(100_000), 100), Some(hour));
        assert_eq!(evidence_ttl(hour, Some(100), 100), None);
        assert_eq!(evidence_ttl(hour, Some(50), 100), None);
    }
}
