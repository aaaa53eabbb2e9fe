//! The server's own X.509-SVID (`spiffe://<td>/spire/server`), which it presents to agents, and
//! the trust bundle its TLS layer checks agents against.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use twid_ca::{KeyType, PrivateKey, X509SvidRequest};
use twid_spiffe::SpiffeId;
use twid_tls::{SvidSource, TrustSource};

use crate::ServerError;
use crate::ca::CaSnapshot;

struct Current {
    ca_generation: u64,
    issued: SystemTime,
    expires: SystemTime,
}

/// The server SVID and trust sources used by the node API's TLS configuration.
pub(crate) struct ServerIdentity {
    spiffe_id: SpiffeId,
    ttl: Duration,
    pub(crate) svid: SvidSource,
    pub(crate) trust: TrustSource,
    current: Mutex<Option<Current>>,
}

impl ServerIdentity {
    pub(crate) fn new(spiffe_id: SpiffeId, ttl: Duration) -> Self {
        Self {
            spiffe_id,
            ttl,
            svid: SvidSource::empty(),
            trust: TrustSource::empty(),
            current: Mutex::new(None),
        }
    }

    /// Re-issues the server SVID when the authorities changed or it passed half its lifetime,
    /// and publishes the current X.509 authorities to the TLS layer.
    pub(crate) fn refresh(&self, ca: &CaSnapshot, now: SystemTime) -> Result<(), ServerError> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = match current.as_ref() {
            None => true,
            Some(svid) => {
                let half_life = svid.expires.duration_since(svid.issued).unwrap_or_default() / 2;
                svid.ca_generation != ca.generation || now >= svid.issued + half_life
            }
        };
        if !due {
            return Ok(());
        }
        self.trust
            .set(self.spiffe_id.trust_domain().clone(), ca.x509_authorities());
        let authority = ca
            .active_x509()
            .ok_or(ServerError::NoActiveAuthority("X.509"))?;
        let key = PrivateKey::generate(KeyType::EcP256)?;
        let cert = authority.sign_x509_svid(&X509SvidRequest {
            spiffe_id: &self.spiffe_id,
            public_key_spki_der: &key.public_key_spki_der(),
            ttl: self.ttl,
            dns_names: &[],
            now,
        })?;
        let expires = twid_ca::not_after(&cert)?;
        // Under an upstream CA the chain carries the intermediates up to the bundle's roots.
        let chain = ca
            .svid_chain(cert.to_vec())
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        self.svid.set(chain, key.pkcs8_der().to_vec())?;
        *current = Some(Current {
            ca_generation: ca.generation,
            issued: now,
            expires,
        });
        tracing::debug!(spiffe_id = %self.spiffe_id, ?expires, "server SVID issued");
        Ok(())
    }
}
