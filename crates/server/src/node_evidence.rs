//! The AttestAgent exchange for evidence attestors: the server sends a fresh nonce, the agent
//! responds with an evidence envelope that binds the nonce and its CSR key, and the server
//! verifies it, applies the attestor's policy and issues the agent SVID.
//!
//! An agent ID is `spiffe://<td>/spire/agent/<attestor>/<stable id>`, where the stable id
//! names the instance where the evidence has a per-instance value, and otherwise the image (see
//! [`crate::evidence::stable_id`]). Unlike a join token, an ID may attest again. While its
//! record contains an unexpired SVID, only the agent that presents that SVID may replace the
//! record, so agents with identical evidence cannot evict each other.

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
use twid_evidence::svid_claims::{AttestationClaims, EXTENSION_OID};

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
        client_leaf: Option<Vec<u8>>,
    ) -> AttestStream {
        let (sender, receiver) = mpsc::channel(2);
        let service = NodeService {
            shared: Arc::clone(&self.shared),
            shutdown: self.shutdown.clone(),
        };
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let result = service
                    .attest_evidence(&attestor, &csr, requests, client_leaf.as_deref(), &sender)
                    .await;
                crate::provenance::record_rejected_attestation(&service.shared, &attestor, &result)
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
        client_leaf: Option<&[u8]>,
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
        let applied = crate::policy::applied_for(&self.shared, attestor_name).await?;
        let policy = Arc::clone(&applied.policy);
        let verification = tokio::task::spawn_blocking(move || {
            let attestor = shared.evidence.get(&name).ok_or_else(|| {
                twid_evidence::VerifyError::policy(format!("node attestor {name} is gone"))
            })?;
            attestor
                .verify(&envelope, &nonce, &public_key_spki_der, &policy, now)
                .map(|verified| {
                    let max_age = policy.max_evidence_age;
                    (verified, attestor.config.kind, max_age)
                })
        })
        .await
        .map_err(|error| {
            internal(ServerError::Encode(format!(
                "verifier task failed: {error}"
            )))
        })?;
        let (verified, kind, max_evidence_age) = match verification {
            Ok(result) => result,
            Err(error) => {
                // Parse errors can quote bytes of the evidence, which the agent chose.
                tracing::info!(
                    attestor = attestor_name,
                    reason = %error.reason,
                    error = %crate::provenance::sanitize_reason(&error.message),
                    "node attestation rejected"
                );
                return Err(crate::provenance::sanitize_status(
                    &Status::permission_denied(format!(
                        "{attestor_name} evidence rejected: {error}"
                    )),
                ));
            }
        };

        let trust_domain = &self.shared.config.trust_domain;
        let agent_id = trust_domain
            .id_with_path(&format!(
                "/spire/agent/{attestor_name}/{}",
                stable_id(&verified)
            ))
            .map_err(|error| Status::invalid_argument(format!("invalid agent ID: {error}")))?;
        let evidence_end = evidence_expiry(verified.valid_until, max_evidence_age, now);
        let ttl = evidence_ttl(self.agent_ttl(), evidence_end, now).ok_or_else(|| {
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
        // The agent SVID carries the attestation result, so relying parties can see why it
        // was issued without asking the server.
        let claims = AttestationClaims::from_verified(&verified, now, applied.version);
        let extension = twid_ca::SvidExtension {
            oid: EXTENSION_OID.to_owned(),
            value_der: claims
                .to_der()
                .map_err(|error| internal(ServerError::Encode(error.to_string())))?,
        };
        let issued = IssuedAgent {
            agent_id: &agent_id,
            attestor_name,
            csr,
            ttl,
            now: now_time,
            selectors,
            extensions: vec![extension],
        };
        let svid = self.store_evidence_agent(issued, client_leaf).await?;
        crate::provenance::record_evidence_agent(&self.shared, &svid, &verified, applied.version)
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

    /// Signs the agent SVID and stores the agent record. An earlier record of the same ID is
    /// replaced only when its SVID has expired, or when `client_leaf` (the TLS client
    /// certificate of the request) is that SVID or its unexpired previous SVID. A banned agent
    /// is always rejected.
    async fn store_evidence_agent(
        &self,
        issued: IssuedAgent<'_>,
        client_leaf: Option<&[u8]>,
    ) -> Result<AgentSvid, Status> {
        let IssuedAgent {
            agent_id,
            attestor_name,
            csr,
            ttl,
            now,
            selectors,
            extensions,
        } = issued;

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
        let presented = client_leaf.and_then(presented_svid);
        if let Some(holder) = &existing {
            check_holder(holder, presented.as_ref(), unix_seconds(now))?;
        }
        // The SVID the caller presented decides which SVID stays valid as the previous one
        // (see `Datastore::replace_attested_agent`).
        let presented_serial = presented
            .as_ref()
            .filter(|svid| svid.spiffe_id == *agent_id)
            .map(|svid| svid.serial.as_str());

        let cert = self.sign_x509_with_extensions(agent_id, csr, ttl, &extensions, now)?;
        let agent = AttestedAgent {
            spiffe_id: agent_id.clone(),
            attestation_type: attestor_name.to_owned(),
            x509_svid_serial: serial_hex(&cert)?,
            x509_svid_expires_at: cert_expiry(&cert),
            previous_x509_svid_serial: None,
            previous_x509_svid_expires_at: None,
            selectors,
            banned: false,
            attested_at: unix_seconds(now),
        };
        // One upsert, so a concurrent Sync or admin read finds the old record or the new
        // one, never none.
        // NOTE: two agents that attest for a free ID at the same moment both pass the holder
        // check, and the later write wins. The other one is rejected when it next calls.
        // NOTE: an operator's ban that lands between the check above and this write is
        // overwritten; the ban must then be set again.
        datastore
            .replace_attested_agent(&agent, presented_serial)
            .await
            .map_err(|error| internal(error.into()))?;
        Ok(self.agent_svid(agent_id, cert))
    }

    /// Returns the lifetime of a renewed agent SVID. A renewed SVID of an evidence-attested
    /// agent expires no later than its current one, because the validity of the evidence's
    /// certificates and collateral and the policy's `max_evidence_age` bound that expiry. Such
    /// an agent attests again to get more.
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

/// An agent SVID to sign and the record to store with it.
struct IssuedAgent<'a> {
    agent_id: &'a SpiffeId,
    attestor_name: &'a str,
    csr: &'a [u8],
    ttl: Duration,
    now: SystemTime,
    selectors: Vec<Selector>,
    /// Non-critical extensions of the agent SVID: the attestation claims.
    extensions: Vec<twid_ca::SvidExtension>,
}

/// The identity in a TLS client certificate that an attesting agent presented.
#[derive(Debug)]
struct PresentedSvid {
    spiffe_id: SpiffeId,
    serial: String,
    not_after: i64,
}

/// Reads the client certificate, or returns `None` when it is no valid X.509-SVID. Such a
/// certificate proves nothing, so the attestation goes on as if none was sent.
fn presented_svid(der: &[u8]) -> Option<PresentedSvid> {
    let spiffe_id = twid_spiffe::x509::check_leaf(der).ok()?;
    let serial = serial_hex(der).ok()?;
    Some(PresentedSvid {
        spiffe_id,
        serial,
        not_after: cert_expiry(der),
    })
}

/// Allows replacing the stored record `holder` only when its SVID has expired at `now` (Unix
/// seconds), or when the caller presented that SVID or the record's previous SVID, unexpired.
/// The previous SVID counts because the reply carrying the current one may have been lost.
fn check_holder(
    holder: &AttestedAgent,
    presented: Option<&PresentedSvid>,
    now: i64,
) -> Result<(), Status> {
    if holder.x509_svid_expires_at <= now {
        return Ok(());
    }
    let proven = presented.is_some_and(|svid| {
        svid.spiffe_id == holder.spiffe_id
            && svid.not_after > now
            && (svid.serial == holder.x509_svid_serial
                || holder.previous_x509_svid_serial.as_deref() == Some(svid.serial.as_str()))
    });
    if proven {
        return Ok(());
    }
    tracing::warn!(
        agent_id = %holder.spiffe_id,
        holder_serial = %holder.x509_svid_serial,
        presented_serial = presented.map_or("none", |svid| svid.serial.as_str()),
        presented_id = ?presented.map(|svid| svid.spiffe_id.to_string()),
        reason = "held by another agent",
        "node attestation rejected"
    );
    Err(Status::permission_denied(format!(
        "agent ID {} is held by another agent whose SVID is valid until {}; agents with \
         identical evidence need distinct identities (for example a distinct MRCONFIGID per TDX \
         guest), or the holder must be evicted first (twid agent evict)",
        holder.spiffe_id,
        format_time(holder.x509_svid_expires_at)
    )))
}

/// Formats Unix seconds as an RFC 2822 date in UTC, or as the number when out of range.
fn format_time(seconds: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(seconds)
        .ok()
        .and_then(|time| time.to_rfc2822().ok())
        .unwrap_or_else(|| format!("{seconds} (Unix seconds)"))
}

/// Returns the latest expiry (Unix seconds) of a credential issued on evidence verified at
/// `now`: `valid_until`, the end of the validity of the evidence's certificates, CRLs and
/// collateral, and `now + max_evidence_age` when the policy sets a maximum age. `None` means
/// neither bounds it.
pub(crate) fn evidence_expiry(
    valid_until: Option<i64>,
    max_evidence_age: Option<Duration>,
    now: i64,
) -> Option<i64> {
    let age_end = max_evidence_age.map(|age| {
        let seconds = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
        now.saturating_add(seconds)
    });
    match (valid_until, age_end) {
        (Some(until), Some(end)) => Some(until.min(end)),
        (until, end) => until.or(end),
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

    #[test]
    fn evidence_expiry_takes_earliest() {
        let two_minutes = Some(Duration::from_secs(120));
        assert_eq!(evidence_expiry(None, None, 100), None);
        assert_eq!(evidence_expiry(Some(500), None, 100), Some(500));
        assert_eq!(evidence_expiry(None, two_minutes, 100), Some(220));
        assert_eq!(evidence_expiry(Some(500), two_minutes, 100), Some(220));
        assert_eq!(evidence_expiry(Some(150), two_minutes, 100), Some(150));
        let huge = Some(Duration::from_secs(u64::MAX));
        assert_eq!(evidence_expiry(None, huge, 100), Some(i64::MAX));
    }

    fn holder(expires_at: i64) -> AttestedAgent {
        AttestedAgent {
            spiffe_id: SpiffeId::new("spiffe://example.org/spire/agent/tdx/7d").expect("id"),
            attestation_type: "tdx".to_owned(),
            x509_svid_serial: "0a".to_owned(),
            x509_svid_expires_at: expires_at,
            previous_x509_svid_serial: None,
            previous_x509_svid_expires_at: None,
            selectors: Vec::new(),
            banned: false,
            attested_at: 0,
        }
    }

    fn presented(spiffe_id: &str, serial: &str, not_after: i64) -> PresentedSvid {
        PresentedSvid {
            spiffe_id: SpiffeId::new(spiffe_id).expect("id"),
            serial: serial.to_owned(),
            not_after,
        }
    }

    #[test]
    fn holder_check_cases() {
        let own = "spiffe://example.org/spire/agent/tdx/7d";
        let other = "spiffe://example.org/spire/agent/tdx/8e";
        let now = 1_000;
        let valid = holder(2_000);

        assert!(check_holder(&holder(now), None, now).is_ok(), "expired");
        let matching = presented(own, "0a", 2_000);
        assert!(check_holder(&valid, Some(&matching), now).is_ok(), "holder");

        let rejected = [
            ("no certificate", None),
            ("other serial", Some(presented(own, "0b", 2_000))),
            ("other agent ID", Some(presented(other, "0a", 2_000))),
            ("expired certificate", Some(presented(own, "0a", now))),
        ];
        for (case, svid) in rejected {
            let status = check_holder(&valid, svid.as_ref(), now).expect_err(case);
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{case}");
            assert!(
                status
                    .message()
                    .contains(&format!("agent ID {own} is held by another agent")),
                "{case}: {}",
                status.message()
            );
        }
    }

    #[test]
    fn holder_check_previous_serial() {
        let own = "spiffe://example.org/spire/agent/tdx/7d";
        let now = 1_000;
        let mut renewed = holder(2_000);
        renewed.x509_svid_serial = "0b".to_owned();
        renewed.previous_x509_svid_serial = Some("0a".to_owned());
        renewed.previous_x509_svid_expires_at = Some(1_500);

        let previous = presented(own, "0a", 1_500);
        assert!(
            check_holder(&renewed, Some(&previous), now).is_ok(),
            "previous SVID"
        );
        let current = presented(own, "0b", 2_000);
        assert!(
            check_holder(&renewed, Some(&current), now).is_ok(),
            "current SVID"
        );

        let expired_previous = presented(own, "0a", now);
        let status = check_holder(&renewed, Some(&expired_previous), now)
            .expect_err("expired previous SVID");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);

        let unrelated = presented(own, "0c", 2_000);
        let status = check_holder(&renewed, Some(&unrelated), now).expect_err("unrelated serial");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);

        renewed.previous_x509_svid_serial = None;
        renewed.previous_x509_svid_expires_at = None;
        let status =
            check_holder(&renewed, Some(&previous), now).expect_err("cleared previous SVID");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn holder_message_names_expiry() {
        let status = check_holder(&holder(1_765_404_861), None, 0).expect_err("held");
        let message = status.message();
        assert!(
            message.contains("valid until Wed, 10 Dec 2025 22:14:21 +0000"),
            "{message}"
        );
        assert!(message.contains("MRCONFIGID"), "{message}");
        assert!(message.contains("twid agent evict"), "{message}");
    }
}
