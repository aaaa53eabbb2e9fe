//! First contact with the server: choosing what to trust, and node attestation with a join
//! token over the AttestAgent stream.

use std::path::Path;

use rustls_pki_types::CertificateDer;
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

/// Attests with `join_token` and returns the agent's new state; `key` becomes the agent key.
///
/// A rejection by the server becomes [`AgentError::Attestation`] with the server's message.
/// The returned SVID must be in `trust_domain` and verify against the returned bundle.
pub(crate) async fn attest(
    mut client: NodeClient<tonic::transport::Channel>,
    trust_domain: &TrustDomain,
    join_token: &str,
    key: rcgen::KeyPair,
) -> Result<AgentState, AgentError> {
    let params = AttestAgentParams {
        data: Some(AttestationData {
            r#type: JOIN_TOKEN_ATTESTOR.to_owned(),
            payload: join_token.as_bytes().to_vec(),
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
    let mut responses = client
        .attest_agent(tokio_stream::iter([first]))
        .await
        .map_err(failed)?
        .into_inner();
    let response = responses.message().await.map_err(failed)?;
    let svid = match response.and_then(|r| r.step) {
        Some(ResponseStep::Result(svid)) => svid,
        Some(ResponseStep::Challenge(_)) => {
            return Err(protocol_error(
                "the server sent a challenge, but join_token attestation takes none",
            ));
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
    tracing::info!(spiffe_id = %spiffe_id, "agent attested with a join token");
    Ok(agent)
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
