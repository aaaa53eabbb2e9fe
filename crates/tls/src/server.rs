//! The server side: a rotating certificate resolver and a client verifier that checks SPIFFE
//! IDs against their own trust domain's bundle.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::TlsError;
use crate::source::{SvidSource, TrustSource};
use crate::verify::{self, Authorizer};

/// The server policy for client certificates: whether one is requested or required, and
/// which SPIFFE IDs are accepted.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// A client must present an SVID that verifies and that the authorizer accepts.
    Required(Authorizer),
    /// A client may connect without a certificate (agent attestation uses this); one that
    /// does present a certificate must pass the same checks as with `Required`.
    Optional(Authorizer),
    /// No certificate is requested.
    None,
}

/// Builds a TLS 1.3 server configuration that presents the current SVID of `svid`, offers
/// ALPN `h2`, and checks client certificates according to `client_auth`.
///
/// A client certificate must be an X.509-SVID that chains to the bundle in `trust` of the
/// trust domain its own SPIFFE ID names, and the authorizer must accept that ID.
///
/// # Errors
/// Returns [`TlsError::Config`] when rustls rejects the configuration.
pub fn server_config(
    svid: SvidSource,
    trust: TrustSource,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crate::provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?;
    let (authorizer, mandatory) = match client_auth {
        ClientAuth::Required(authorizer) => (Some(authorizer), true),
        ClientAuth::Optional(authorizer) => (Some(authorizer), false),
        ClientAuth::None => (None, false),
    };
    let builder = match authorizer {
        None => builder.with_no_client_auth(),
        Some(authorizer) => builder.with_client_cert_verifier(Arc::new(SpiffeClientVerifier {
            trust,
            authorizer,
            mandatory,
            algorithms,
            root_hints: Vec::new(),
        })),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SvidResolver(svid)));
    config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
    // A resumed session skips the certificate exchange and carries the client chain verified
    // at its first handshake, so a rotated SVID, a changed bundle or a revoked authorization
    // would go unnoticed. Every connection therefore runs a full handshake.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Presents whatever SVID the source holds when the handshake starts.
#[derive(Debug)]
struct SvidResolver(SvidSource);

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certified = self.0.certified_key();
        if certified.is_none() {
            tracing::debug!("no server SVID has been set yet; aborting the handshake");
        }
        certified
    }
}

/// Verifies client SVIDs against the bundle of the client's own trust domain.
#[derive(Debug)]
struct SpiffeClientVerifier {
    trust: TrustSource,
    authorizer: Authorizer,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
    /// Always empty: clients pick their SVID by SPIFFE ID, not by CA subject.
    root_hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let usage = webpki::KeyUsage::client_auth();
        verify::verify_peer(
            end_entity,
            intermediates,
            &self.trust,
            usage,
            now,
            &self.authorizer,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify::verify_tls12(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify::verify_tls13(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        verify::schemes(&self.algorithms)
    }
}
