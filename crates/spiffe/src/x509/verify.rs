//! Chain verification of X.509-SVIDs.

use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage};

use super::svid::{check_chain, parse_certificate};
use super::{X509BundleSet, X509SvidError};
use crate::SpiffeId;

/// Verifies an X.509-SVID chain (leaf first) at time `now` and returns its SPIFFE ID.
///
/// The chain must pass the X.509-SVID rules. It is then validated per RFC 5280 with
/// rustls-webpki against the bundle of the leaf's own trust domain only; bundles of other
/// trust domains are never consulted. Only bundle certificates with cA=true serve as trust
/// anchors. The leaf may carry the clientAuth EKU, the serverAuth EKU, or no EKU.
///
/// Limit: rustls-webpki fails closed on URI name constraints, so a chain through a CA that
/// carries them is rejected even when the SPIFFE ID lies inside the permitted subtree.
///
/// # Errors
/// Returns the rule the chain breaks, [`X509SvidError::NoBundle`] when the set has no bundle
/// for the trust domain, [`X509SvidError::Expired`] or [`X509SvidError::NotYetValid`] for a
/// validity failure, and [`X509SvidError::ChainInvalid`] for other path failures.
pub fn verify_x509_svid(
    chain: &[CertificateDer<'_>],
    bundles: &X509BundleSet,
    now: SystemTime,
) -> Result<SpiffeId, X509SvidError> {
    let checked = check_chain(chain)?;
    let trust_domain = checked.spiffe_id.trust_domain();
    let bundle = bundles
        .get(trust_domain)
        .ok_or_else(|| X509SvidError::NoBundle(trust_domain.clone()))?;

    let anchors = trust_anchors(bundle.authorities());
    if anchors.is_empty() {
        return Err(X509SvidError::NoAuthorities(trust_domain.clone()));
    }

    let leaf = EndEntityCert::try_from(&chain[0])
        .map_err(|e| X509SvidError::ChainInvalid(format!("{e:?}")))?;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let verify = |usage: KeyUsage| {
        leaf.verify_for_usage(
            ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            time,
            usage,
            None,
            None,
        )
        .map(|_| ())
    };
    // SVIDs carry both EKUs or none, so either usage passing is acceptable.
    let result = verify(KeyUsage::client_auth())
        .or_else(|client_err| verify(KeyUsage::server_auth()).map_err(|_| client_err));
    result.map_err(map_webpki_error)?;
    Ok(checked.spiffe_id)
}

/// Returns a trust anchor for every CA certificate; leaves and certificates without
/// basicConstraints are skipped so they can never anchor a chain.
fn trust_anchors(authorities: &[CertificateDer<'static>]) -> Vec<TrustAnchor<'static>> {
    authorities
        .iter()
        .filter(|der| is_ca(der))
        .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
        .map(|anchor| anchor.to_owned())
        .collect()
}

fn is_ca(der: &CertificateDer<'_>) -> bool {
    let Ok(cert) = parse_certificate(0, der) else {
        return false;
    };
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

fn map_webpki_error(error: webpki::Error) -> X509SvidError {
    match error {
        webpki::Error::CertExpired { .. } => X509SvidError::Expired(format!("{error:?}")),
        webpki::Error::CertNotValidYet { .. } => X509SvidError::NotYetValid(format!("{error:?}")),
        other => X509SvidError::ChainInvalid(format!("{other:?}")),
    }
}
