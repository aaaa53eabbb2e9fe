//! First contact with the server: choosing what to trust, and node attestation with a join
//! token or hardware evidence over the AttestAgent stream.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use twid_attestation::node::evidence::Collector;
use twid_proto::node::attest_agent_request::Step as RequestStep;
use twid_proto::node::attest_agent_response::Step as ResponseStep;
use twid_proto::node::node_client::NodeClient;
use twid_proto::node::{AttestAgentParams, AttestAgentRequest, AttestationData};
use twid_spiffe::{SpiffeBundle, TrustDomain, X509Bundle};
use twid_tls::TrustSource;

use crate::AgentError;
use crate::settings::BundleFormat;
use crate::state::{self, AgentState};

/// The node attestor name the server expects for join tokens.
const JOIN_TOKEN_ATTESTOR: &str = "join_token";

/// Reads the operator's trust bundle file: PEM certificates, or a SPIFFE bundle document
/// whose `x509-svid` keys are used.
pub(crate) fn read_bundle_file(
    trust_domain: &TrustDomain,
    path: &Path,
    format: BundleFormat,
) -> Result<Vec<Vec<u8>>, AgentError> {
    let bytes = std::fs::read(path).map_err(|source| AgentError::Io {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |reason: String| {
        AgentError::Config(format!(
            "trust_bundle_path {} is not a valid {} bundle: {reason}",
            path.display(),
            format.name()
        ))
    };
    let certs: Vec<Vec<u8>> = match format {
        BundleFormat::Pem => X509Bundle::parse_pem(trust_domain.clone(), &bytes)
            .map_err(|e| invalid(e.to_string()))?
            .authorities()
            .iter()
            .map(|c| c.to_vec())
            .collect(),
        BundleFormat::Spiffe => SpiffeBundle::parse(trust_domain.clone(), &bytes)
            .map_err(|e| invalid(e.to_string()))?
            .x509_authorities
            .iter()
            .map(|c| c.to_vec())
            .collect(),
    };
    if certs.is_empty() {
        return Err(invalid("it contains no X.509 CA certificate".to_owned()));
    }
    Ok(certs)
}

/// Builds a trust source holding `bundle` for `trust_domain`.
pub(crate) fn trust_source(
    trust_domain: &TrustDomain,
    bundle: &[Vec<u8>],
) -> Result<TrustSource, AgentError> {
    let certs: Vec<CertificateDer<'static>> = bundle
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let bundles = std::collections::HashMap::from([(trust_domain.clone(), certs)]);
    Ok(TrustSource::new(bundles)?)
}

/// The agent's means of proving its node to the server.
#[derive(Clone)]
pub(crate) enum AttestationMethod {
    /// A single-use join token.
    JoinToken(String),
    /// Hardware evidence from `collector`, sent for the node attestor `attestor`.
    Evidence {
        attestor: String,
        collector: Arc<dyn Collector>,
    },
}

impl std::fmt::Debug for AttestationMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The join token is a credential until the server consumes it, so it is never shown.
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
            Self::Evidence {
                attestor,
                collector,
            } => f
                .debug_struct("Evidence")
                .field("attestor", attestor)
                .field("collector", collector)
                .finish(),
        }
    }
}

impl AttestationMethod {
    /// Returns the node attestor name sent to the server.
    pub(crate) fn attestor(&self) -> &str {
        match self {
            Self::JoinToken(_) => JOIN_TOKEN_ATTESTOR,
            Self::Evidence { attestor, .. } => attestor,
        }
    }
}

/// Attests with `method` and returns the agent's new state; `key` becomes the agent key.
///
/// For evidence attestors the server responds to the first message with a nonce; the collector
/// then produces evidence bound to `SHA-512(nonce || SPKI of key)` on a blocking thread, and
/// the envelope goes back as the challenge response.
///
/// A rejection by the server becomes [`AgentError::Attestation`] with the server's message.
/// The returned SVID must be in `trust_domain` and verify against the returned bundle.
pub(crate) async fn attest(
    mut client: NodeClient<tonic::transport::Channel>,
    trust_domain: &TrustDomain,
    method: &AttestationMethod,
    key: rcgen::KeyPair,
) -> Result<AgentState, AgentError> {
    let payload = match method {
        AttestationMethod::JoinToken(token) => token.as_bytes().to_vec(),
        AttestationMethod::Evidence { .. } => Vec::new(),
    };
    let params = AttestAgentParams {
        data: Some(AttestationData {
            r#type: method.attestor().to_owned(),
            payload,
        }),
        csr: state::build_csr(&key)?,
    };
    let first = AttestAgentRequest {
        step: Some(RequestStep::Params(params)),
    };

    let failed = |status: tonic::Status| AgentError::Attestation {
        code: status.code(),
        message: status.message().to_owned(),
    };
    // The request stream stays open until the challenge response is sent.
    let (requests, receiver) = tokio::sync::mpsc::channel(2);
    requests
        .send(first)
        .await
        .map_err(|_| protocol_error("the attestation request stream closed"))?;
    let mut responses = client
        .attest_agent(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .map_err(failed)?
        .into_inner();
    let mut response = responses.message().await.map_err(failed)?;
    if let Some(ResponseStep::Challenge(nonce)) = response.as_ref().and_then(|r| r.step.as_ref()) {
        let AttestationMethod::Evidence { collector, .. } = method else {
            return Err(protocol_error(
                "the server sent a challenge, but join_token attestation takes none",
            ));
        };
        let envelope = collect(collector, nonce, &key).await?;
        let answer = AttestAgentRequest {
            step: Some(RequestStep::ChallengeResponse(envelope)),
        };
        requests
            .send(answer)
            .await
            .map_err(|_| protocol_error("the attestation request stream closed"))?;
        response = responses.message().await.map_err(failed)?;
    }
    drop(requests);
    let svid = match response.and_then(|r| r.step) {
        Some(ResponseStep::Result(svid)) => svid,
        Some(ResponseStep::Challenge(_)) => {
            return Err(protocol_error("the server sent a second challenge"));
        }
        None => {
            return Err(protocol_error(
                "the server closed the attestation stream without a result",
            ));
        }
    };

    let bundle = svid.bundle.map(|b| b.x509_authorities).unwrap_or_default();
    if svid.cert_chain.is_empty() || bundle.is_empty() {
        return Err(protocol_error(
            "the server returned an empty SVID chain or bundle",
        ));
    }
    let agent = AgentState {
        key,
        chain: svid.cert_chain,
        bundle,
    };
    // Trusting the returned bundle is only as safe as the connection it came over, which the
    // bootstrap trust (or, with insecure_bootstrap, nothing) authenticated.
    let spiffe_id = agent.verify(trust_domain)?;
    tracing::info!(
        spiffe_id = %spiffe_id,
        attestor = method.attestor(),
        "agent attested"
    );
    Ok(agent)
}

/// Runs the collector for the server's nonce and the agent key, and returns the envelope JSON.
async fn collect(
    collector: &Arc<dyn Collector>,
    nonce: &[u8],
    key: &rcgen::KeyPair,
) -> Result<Vec<u8>, AgentError> {
    let report_data = {
        use rcgen::PublicKeyData as _;
        twid_evidence::binding::report_data(nonce, &key.subject_public_key_info())
    };
    let collector = Arc::clone(collector);
    let envelope = tokio::task::spawn_blocking(move || collector.collect(&report_data))
        .await
        .map_err(|error| AgentError::Collect(format!("the collector task failed: {error}")))?
        .map_err(|error| {
            tracing::warn!(%error, "evidence collection failed");
            AgentError::Collect(error.to_string())
        })?;
    Ok(envelope.to_json())
}

fn protocol_error(message: &str) -> AgentError {
    AgentError::Attestation {
        code: tonic::Code::Internal,
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust_domain() -> TrustDomain {
        TrustDomain::new("example.org").expect("trust domain")
    }

    fn ca_der() -> Vec<u8> {
        let key = state::generate_key().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("CA").der().to_vec()
    }

    #[test]
    fn pem_bundle_file_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = ca_der();
        let bundle =
            X509Bundle::from_authorities(trust_domain(), vec![ca.clone().into()]).expect("bundle");
        let path = dir.path().join("bundle.pem");
        std::fs::write(&path, bundle.to_pem()).expect("write");
        let certs = read_bundle_file(&trust_domain(), &path, BundleFormat::Pem).expect("read");
        assert_eq!(certs, vec![ca]);
    }

    #[test]
    fn spiffe_bundle_file_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = ca_der();
        let mut bundle = SpiffeBundle::new(trust_domain());
        bundle.x509_authorities.push(ca.clone().into());
        let path = dir.path().join("bundle.json");
        std::fs::write(&path, bundle.to_json()).expect("write");
        let certs = read_bundle_file(&trust_domain(), &path, BundleFormat::Spiffe).expect("read");
        assert_eq!(certs, vec![ca]);
    }

    #[test]
    fn bundle_file_without_certificates_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bundle.pem");
        std::fs::write(&path, "\n").expect("write");
        let error =
            read_bundle_file(&trust_domain(), &path, BundleFormat::Pem).expect_err("empty bundle");
        assert!(
            error.to_string().contains("no X.509 CA certificate"),
            "{error}"
        );
        let json = dir.path().join("bundle.json");
        std::fs::write(&json, r#"{"keys":[]}"#).expect("write");
        assert!(read_bundle_file(&trust_domain(), &json, BundleFormat::Spiffe).is_err());
    }

    #[test]
    fn missing_bundle_file_names_the_path() {
        let error = read_bundle_file(
            &trust_domain(),
            Path::new("/nonexistent/bundle.pem"),
            BundleFormat::Pem,
        )
        .expect_err("missing file");
        assert!(
            error.to_string().contains("/nonexistent/bundle.pem"),
            "{error}"
        );
    }
}
