//! Peer verification shared by the client and server sides: SPIFFE ID extraction, chain
//! verification against one trust domain's bundle, and authorization.
//!
//! Invariant: a chain is checked only against the anchors of the trust domain that the leaf's
//! own SPIFFE ID names, so a CA of one trust domain can never vouch for an ID in another.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use twid_spiffe::{SpiffeId, TrustDomain, X509SvidError};

use crate::source::TrustSource;

/// Decides which SPIFFE IDs a peer may have once its chain has been verified.
#[derive(Clone)]
#[non_exhaustive]
pub enum Authorizer {
    /// Any ID whose chain verifies.
    Any,
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Any ID in this trust domain.
    MemberOf(TrustDomain),
    /// Any of these IDs.
    OneOf(Vec<SpiffeId>),
    /// A caller-supplied rule.
    Custom(Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>),
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("Any"),
            Self::Exact(id) => f.debug_tuple("Exact").field(id).finish(),
            Self::MemberOf(td) => f.debug_tuple("MemberOf").field(td).finish(),
            Self::OneOf(ids) => f.debug_tuple("OneOf").field(ids).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl Authorizer {
    /// Returns whether `id` is authorized.
    pub fn authorize(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(expected) => expected == id,
            Self::MemberOf(trust_domain) => id.is_member_of(trust_domain),
            Self::OneOf(ids) => ids.contains(id),
            Self::Custom(rule) => rule(id),
        }
    }
}

/// The reason a peer certificate was rejected, before or after chain verification.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The leaf breaks an X.509-SVID leaf rule. It must carry exactly one URI SAN that is a
    /// SPIFFE ID with a path, basicConstraints with cA=false, and a keyUsage that allows
    /// digitalSignature but neither keyCertSign nor cRLSign.
    #[error("peer leaf certificate is not a valid X.509-SVID: {0}")]
    InvalidSvid(#[source] X509SvidError),
    /// No bundle is configured for the leaf's trust domain.
    #[error("no bundle for trust domain {0}")]
    UnknownTrustDomain(TrustDomain),
    /// The chain verified but the authorizer rejected the ID.
    #[error("SPIFFE ID {0} is not authorized")]
    Unauthorized(SpiffeId),
}

/// Returns the SPIFFE ID of the leaf (first) certificate, or `None` when there is no leaf or
/// it breaks an X.509-SVID leaf rule.
///
/// This only reads the certificate and does not establish that the chain is trusted. On a
/// [`crate::TlsConnectInfo`] of a completed handshake the chain has already been verified.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    let leaf = certs.first()?;
    twid_spiffe::check_leaf(leaf).ok()
}

/// Applies the X.509-SVID leaf rules to `leaf` and returns its SPIFFE ID.
pub(crate) fn leaf_spiffe_id(leaf: &CertificateDer<'_>) -> Result<SpiffeId, PeerError> {
    twid_spiffe::check_leaf(leaf).map_err(PeerError::InvalidSvid)
}

/// Verifies a peer chain for `usage` at `now` against the bundle of the leaf's trust domain
/// only, then applies `authorizer`. Returns the peer's SPIFFE ID.
///
/// Limit: rustls-webpki 0.103 does not evaluate URI name constraints and fails closed, so a
/// chain through a CA that carries them is rejected even when the SPIFFE ID is permitted.
pub(crate) fn verify_peer(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &TrustSource,
    usage: webpki::KeyUsage,
    now: UnixTime,
    authorizer: &Authorizer,
) -> Result<SpiffeId, rustls::Error> {
    let id = leaf_spiffe_id(end_entity).map_err(peer_error)?;
    let bundle = trust
        .bundle(id.trust_domain())
        .ok_or_else(|| peer_error(PeerError::UnknownTrustDomain(id.trust_domain().clone())))?;
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| pki_error(&id, e))?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &bundle.anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| pki_error(&id, e))?;
    authorize(id, authorizer)
}

/// Applies `authorizer` to the SPIFFE ID of `end_entity` without verifying its chain.
pub(crate) fn authorize_unverified(
    end_entity: &CertificateDer<'_>,
    authorizer: &Authorizer,
) -> Result<SpiffeId, rustls::Error> {
    let id = leaf_spiffe_id(end_entity).map_err(peer_error)?;
    authorize(id, authorizer)
}

fn authorize(id: SpiffeId, authorizer: &Authorizer) -> Result<SpiffeId, rustls::Error> {
    if !authorizer.authorize(&id) {
        return Err(peer_error(PeerError::Unauthorized(id)));
    }
    tracing::trace!(spiffe_id = %id, "peer certificate accepted");
    Ok(id)
}

fn peer_error(error: PeerError) -> rustls::Error {
    tracing::debug!(%error, "peer certificate rejected");
    let inner = match error {
        PeerError::Unauthorized(_) => {
            return CertificateError::ApplicationVerificationFailure.into();
        }
        other => other,
    };
    CertificateError::Other(OtherError(Arc::new(inner))).into()
}

/// Maps a webpki error to the closest rustls certificate error, so the TLS alert is specific.
fn pki_error(spiffe_id: &SpiffeId, error: webpki::Error) -> rustls::Error {
    tracing::debug!(%spiffe_id, %error, "peer certificate chain verification failed");
    use webpki::Error as E;
    let mapped = match error {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    mapped.into()
}

/// Verifies a TLS 1.2 handshake signature; kept for the trait, since configurations are
/// TLS 1.3 only.
pub(crate) fn verify_tls12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
}

/// Verifies a TLS 1.3 handshake signature with the leaf's public key.
pub(crate) fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
}

/// Returns the signature schemes `algorithms` can verify.
pub(crate) fn schemes(algorithms: &WebPkiSupportedAlgorithms) -> Vec<SignatureScheme> {
    algorithms.supported_schemes()
}
