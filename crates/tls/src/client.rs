//! The client side: a server verifier that ignores the DNS name and checks the server's
//! SPIFFE ID instead, an optional rotating client SVID, and the insecure bootstrap verifier.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::TlsError;
use crate::source::{SvidSource, TrustSource};
use crate::verify::{self, Authorizer};

/// Builds a TLS 1.3 client configuration that offers ALPN `h2` and presents the SVID of
/// `svid` when one is given and set. The server's X.509-SVID must chain to the bundle in
/// `trust` of the trust domain its own SPIFFE ID names, and `authorizer` must accept that ID.
///
/// The server name passed to the connector is not checked: SPIFFE peers are identified by
/// their URI SAN, not by DNS names.
///
/// # Errors
/// Returns [`TlsError::Config`] when rustls rejects the configuration.
pub fn client_config(
    svid: Option<SvidSource>,
    trust: TrustSource,
    authorizer: Authorizer,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crate::provider();
    let verifier = SpiffeServerVerifier {
        trust,
        authorizer,
        algorithms: provider.signature_verification_algorithms,
    };
    finish(provider, Arc::new(verifier), svid)
}

/// Builds a client configuration that accepts a server certificate chain WITHOUT verifying
/// it against any bundle.
///
/// DANGER: a connection made with this configuration is encrypted but not authenticated. An
/// attacker on the path can present a self-made certificate with the expected SPIFFE ID,
/// impersonate the server and read everything sent. It exists only for an agent's first
/// attestation when the operator has set `insecure_bootstrap = true`, before the agent has a
/// trust bundle, and must not be used once a bundle is available.
///
/// The server's leaf must still follow the X.509-SVID leaf rules and carry a SPIFFE ID that
/// `authorizer` accepts, and its handshake signature is checked against that leaf. This only
/// proves that the server has the private key of the certificate it presents.
///
/// # Errors
/// Returns [`TlsError::Config`] when rustls rejects the configuration.
pub fn insecure_client_config(
    svid: Option<SvidSource>,
    authorizer: Authorizer,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crate::provider();
    let verifier = InsecureServerVerifier {
        authorizer,
        algorithms: provider.signature_verification_algorithms,
    };
    finish(provider, Arc::new(verifier), svid)
}

fn finish(
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
    svid: Option<SvidSource>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match svid {
        Some(svid) => builder.with_client_cert_resolver(Arc::new(ClientSvidResolver(svid))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
    // Resumption would skip the certificate exchange in both directions, so a new connection
    // could neither present a rotated SVID nor re-verify the server against the current bundle.
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Presents the current SVID of the source when the server requests a certificate.
#[derive(Debug)]
struct ClientSvidResolver(SvidSource);

impl ResolvesClientCert for ClientSvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let certified = self.0.certified_key();
        if certified.is_none() {
            tracing::debug!("no client SVID has been set yet; sending no certificate");
        }
        certified
    }

    fn has_certs(&self) -> bool {
        self.0.certified_key().is_some()
    }
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    trust: TrustSource,
    authorizer: Authorizer,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let usage = webpki::KeyUsage::server_auth();
        verify::verify_peer(
            end_entity,
            intermediates,
            &self.trust,
            usage,
            now,
            &self.authorizer,
        )?;
        Ok(ServerCertVerified::assertion())
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

/// Accepts any server chain whose leaf SPIFFE ID the authorizer accepts. See
/// [`insecure_client_config`].
#[derive(Debug)]
struct InsecureServerVerifier {
    authorizer: Authorizer,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for InsecureServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = verify::authorize_unverified(end_entity, &self.authorizer)?;
        tracing::debug!(
            spiffe_id = %id,
            "accepted server certificate without chain verification (insecure bootstrap)"
        );
        Ok(ServerCertVerified::assertion())
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
