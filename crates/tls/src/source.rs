//! Swappable sources of the local SVID and of trust bundles.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, TrustAnchor};
use twid_spiffe::{SpiffeId, TrustDomain};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::TlsError;

/// The local X.509-SVID and its key, shared by every configuration built from it.
///
/// Clones share the same slot, so [`SvidSource::set`] on any clone changes what all of them
/// present at their next handshake. Connections already established keep the SVID they
/// negotiated with. While the source is empty, a server configuration fails every handshake
/// and a client configuration sends no certificate.
#[derive(Clone, Default)]
pub struct SvidSource {
    current: Arc<ArcSwapOption<CertifiedKey>>,
}

impl fmt::Debug for SvidSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is left out on purpose.
        f.debug_struct("SvidSource")
            .field("spiffe_id", &self.spiffe_id())
            .finish_non_exhaustive()
    }
}

impl SvidSource {
    /// Creates a source with no SVID yet.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Creates a source from a chain (leaf first) and the leaf's PKCS#8 private key.
    ///
    /// # Errors
    /// The same as [`SvidSource::set`].
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let source = Self::empty();
        source.update(chain, key)?;
        Ok(source)
    }

    /// Replaces the SVID with `chain` (leaf first) and the leaf's PKCS#8 private key (DER).
    /// Handshakes that start afterwards present the new SVID.
    ///
    /// # Errors
    /// Returns [`TlsError::EmptyChain`], [`TlsError::InvalidSvid`] when the leaf breaks an
    /// X.509-SVID leaf rule, or [`TlsError::InvalidKey`] when the key cannot be loaded or does
    /// not match the leaf. On error the current SVID stays in place.
    pub fn set(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
    ) -> Result<(), TlsError> {
        self.update(chain, PrivatePkcs8KeyDer::from(key_pkcs8))
    }

    /// Replaces the SVID, as [`SvidSource::set`] does, with the key already typed as PKCS#8.
    ///
    /// # Errors
    /// The same as [`SvidSource::set`].
    pub fn update(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
    ) -> Result<(), TlsError> {
        let (certified, spiffe_id) = certified_key(chain, key)?;
        self.current.store(Some(Arc::new(certified)));
        tracing::debug!(%spiffe_id, "TLS SVID updated");
        Ok(())
    }

    /// Returns the current chain and signing key, or `None` before the first SVID is set.
    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    /// Returns the SPIFFE ID of the current leaf, or `None` before the first SVID is set.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        let current = self.current.load();
        let leaf = current.as_ref()?.cert.first()?;
        twid_spiffe::check_leaf(leaf).ok()
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
) -> Result<(CertifiedKey, SpiffeId), TlsError> {
    let leaf = chain.first().ok_or(TlsError::EmptyChain)?;
    let spiffe_id = twid_spiffe::check_leaf(leaf).map_err(TlsError::InvalidSvid)?;
    let key = PrivateKeyDer::Pkcs8(key);
    let signer =
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(TlsError::InvalidKey)?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(TlsError::InvalidKey)?;
    Ok((certified, spiffe_id))
}

/// The CA certificates of one trust domain, parsed into trust anchors once per update.
#[derive(Debug)]
pub(crate) struct TrustBundle {
    pub(crate) anchors: Vec<TrustAnchor<'static>>,
}

type BundleMap = HashMap<TrustDomain, Arc<TrustBundle>>;

/// X.509 bundles by trust domain, shared by every configuration built from it.
///
/// Clones share the same map. A peer is verified only against the bundle of the trust domain
/// its SPIFFE ID names, so adding a foreign trust domain here never widens who can claim an ID
/// in another one.
#[derive(Clone, Default)]
pub struct TrustSource {
    bundles: Arc<ArcSwap<BundleMap>>,
}

impl fmt::Debug for TrustSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustSource")
            .field("trust_domains", &self.trust_domains())
            .finish()
    }
}

impl TrustSource {
    /// Creates a source with no bundle, which rejects every peer until a bundle is set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Creates a source from the CA certificates (DER) of each trust domain.
    ///
    /// # Errors
    /// Returns [`TlsError::InvalidTrustAnchor`] for a certificate that does not parse and
    /// [`TlsError::TrustAnchorNotCa`] for one that is not a CA certificate.
    pub fn new(
        bundles: HashMap<TrustDomain, Vec<CertificateDer<'static>>>,
    ) -> Result<Self, TlsError> {
        let source = Self::default();
        source.replace(bundles)?;
        Ok(source)
    }

    /// Replaces every bundle at once.
    ///
    /// # Errors
    /// The same as [`TrustSource::new`]; on error the current bundles stay in place.
    pub fn replace(
        &self,
        bundles: HashMap<TrustDomain, Vec<CertificateDer<'static>>>,
    ) -> Result<(), TlsError> {
        let mut map = BundleMap::with_capacity(bundles.len());
        for (trust_domain, certs) in bundles {
            let bundle = parse_bundle(&trust_domain, &certs)?;
            map.insert(trust_domain, Arc::new(bundle));
        }
        self.bundles.store(Arc::new(map));
        Ok(())
    }

    /// Sets the bundle of one trust domain, keeping the others.
    ///
    /// The previous bundle of `trust_domain` is always replaced: a certificate that does not
    /// parse or is not a CA certificate is skipped with a warning. Use
    /// [`TrustSource::set_bundle`] to reject such a bundle instead.
    pub fn set(&self, trust_domain: TrustDomain, certs: Vec<CertificateDer<'static>>) {
        let mut anchors = Vec::with_capacity(certs.len());
        for (index, cert) in certs.iter().enumerate() {
            match trust_anchor(&trust_domain, index, cert) {
                Ok(anchor) => anchors.push(anchor),
                Err(error) => {
                    tracing::warn!(%trust_domain, %error, "skipping bundle certificate");
                }
            }
        }
        tracing::debug!(%trust_domain, anchors = anchors.len(), "trust bundle updated");
        self.insert(trust_domain, TrustBundle { anchors });
    }

    /// Sets the bundle of one trust domain, keeping the others.
    ///
    /// # Errors
    /// The same as [`TrustSource::new`]; on error the current bundles stay in place.
    pub fn set_bundle(
        &self,
        trust_domain: TrustDomain,
        certs: &[CertificateDer<'_>],
    ) -> Result<(), TlsError> {
        let bundle = parse_bundle(&trust_domain, certs)?;
        tracing::debug!(%trust_domain, anchors = bundle.anchors.len(), "trust bundle updated");
        self.insert(trust_domain, bundle);
        Ok(())
    }

    fn insert(&self, trust_domain: TrustDomain, bundle: TrustBundle) {
        let bundle = Arc::new(bundle);
        self.bundles.rcu(|current| {
            let mut map = BundleMap::clone(current);
            map.insert(trust_domain.clone(), Arc::clone(&bundle));
            map
        });
    }

    /// Removes the bundle of one trust domain; its members are rejected from then on.
    pub fn remove_bundle(&self, trust_domain: &TrustDomain) {
        self.bundles.rcu(|current| {
            let mut map = BundleMap::clone(current);
            map.remove(trust_domain);
            map
        });
    }

    /// Returns the trust domains that have a bundle.
    pub fn trust_domains(&self) -> Vec<TrustDomain> {
        let mut domains: Vec<_> = self.bundles.load().keys().cloned().collect();
        domains.sort();
        domains
    }

    /// Returns the bundle of `trust_domain`, if any.
    pub(crate) fn bundle(&self, trust_domain: &TrustDomain) -> Option<Arc<TrustBundle>> {
        self.bundles.load().get(trust_domain).cloned()
    }
}

fn parse_bundle(
    trust_domain: &TrustDomain,
    certs: &[CertificateDer<'_>],
) -> Result<TrustBundle, TlsError> {
    let anchors = certs
        .iter()
        .enumerate()
        .map(|(index, cert)| trust_anchor(trust_domain, index, cert))
        .collect::<Result<_, _>>()?;
    Ok(TrustBundle { anchors })
}

/// Parses one bundle certificate into a trust anchor. Only CA certificates qualify, so a leaf
/// placed in a bundle by mistake can never anchor a chain.
fn trust_anchor(
    trust_domain: &TrustDomain,
    index: usize,
    cert: &CertificateDer<'_>,
) -> Result<TrustAnchor<'static>, TlsError> {
    let anchor =
        webpki::anchor_from_trusted_cert(cert).map_err(|source| TlsError::InvalidTrustAnchor {
            trust_domain: trust_domain.clone(),
            index,
            source,
        })?;
    let is_ca = X509Certificate::from_der(cert.as_ref()).is_ok_and(|(_, parsed)| {
        matches!(parsed.basic_constraints(), Ok(Some(constraints)) if constraints.value.ca)
    });
    if !is_ca {
        return Err(TlsError::TrustAnchorNotCa {
            trust_domain: trust_domain.clone(),
            index,
        });
    }
    Ok(anchor.to_owned())
}
