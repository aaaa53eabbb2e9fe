//! SPIFFE federation: relationships with foreign trust domains, the refresh task that fetches
//! their bundles from their bundle endpoints, the checks every fetched bundle must pass, and
//! the federated bundles that `Sync` hands to agents.
//!
//! Invariant: a foreign bundle is stored only under the trust domain of the relationship it
//! was fetched for, so validation elsewhere keeps trust domains apart. A rejected bundle never
//! replaces the stored one.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use twid_config::{EndpointProfile, FederatesWithConfig};
use twid_datastore::{BundleEndpointProfile, FederationRelationship};
use twid_proto::types as pb;
use twid_spiffe::TrustDomain;
use twid_spiffe::bundle::{SpiffeBundle, SpiffeBundleError};
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use crate::federation_fetch;
use crate::{ServerError, Shared};

/// Refresh interval when a bundle carries no `spiffe_refresh_hint`, as in SPIRE.
pub(crate) const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(5 * 60);

/// Shortest refresh interval, whatever the hint requests, so a foreign endpoint cannot make the
/// server poll it in a tight loop.
const MIN_REFRESH: Duration = Duration::from_secs(30);

/// Maximum refresh interval, so a rotated foreign CA is picked up within a day.
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Delay before retrying a failed or rejected fetch.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// How often the refresh task wakes to re-read the relationships and fetch the due ones.
const REFRESH_TICK: Duration = Duration::from_secs(2);

/// A reason a fetched or supplied bundle is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BundleRejection {
    /// The document is not a valid SPIFFE bundle.
    #[error("malformed bundle: {0}")]
    Malformed(#[from] SpiffeBundleError),
    /// An X.509 authority names another trust domain in its SPIFFE ID URI SAN.
    #[error(
        "X.509 authority {index} belongs to trust domain {found}, not to {expected}; this is \
         another trust domain's bundle"
    )]
    WrongTrustDomain {
        /// The relationship's trust domain.
        expected: TrustDomain,
        /// The trust domain in the certificate.
        found: String,
        /// Position of the authority in the bundle.
        index: usize,
    },
    /// An X.509 authority does not parse.
    #[error("X.509 authority {index} is not a valid certificate")]
    InvalidCertificate {
        /// Position of the authority in the bundle.
        index: usize,
    },
    /// An X.509 authority is not a CA certificate, so nothing can chain to it.
    #[error(
        "X.509 authority {index} is not a CA certificate (basicConstraints CA is not true); a \
         bundle lists the trust domain's CA certificates"
    )]
    NotCa {
        /// Position of the authority in the bundle.
        index: usize,
    },
    /// No X.509 authority is valid now: each has expired or is not yet valid.
    #[error("none of the {count} X.509 authorities is valid now (expired or not yet valid)")]
    AllExpired {
        /// Number of X.509 authorities.
        count: usize,
    },
    /// The bundle has neither X.509 nor JWT authorities.
    #[error("the bundle has no X.509 or JWT authorities")]
    Empty,
}

/// Parses `json` as the SPIFFE bundle of `trust_domain` and checks it. Every X.509 authority
/// must parse, be a CA certificate and name no other trust domain in any SPIFFE ID URI SAN.
/// At least one must be valid at `now`, and the bundle must not be empty.
pub(crate) fn check_bundle(
    trust_domain: &TrustDomain,
    json: &[u8],
    now: SystemTime,
) -> Result<SpiffeBundle, BundleRejection> {
    let bundle = SpiffeBundle::parse(trust_domain.clone(), json)?;
    check_authorities(&bundle, now)?;
    Ok(bundle)
}

/// Applies the checks of [`check_bundle`] to a parsed bundle.
pub(crate) fn check_authorities(
    bundle: &SpiffeBundle,
    now: SystemTime,
) -> Result<(), BundleRejection> {
    if bundle.x509_authorities.is_empty() && bundle.jwt_authorities.is_empty() {
        return Err(BundleRejection::Empty);
    }
    let now_seconds = crate::convert::unix_seconds(now);
    let mut unexpired = 0;
    for (index, der) in bundle.x509_authorities.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|_| BundleRejection::InvalidCertificate { index })?;
        if let Some(found) = spiffe_trust_domains(&cert)
            .into_iter()
            .find(|found| found != bundle.trust_domain.name())
        {
            return Err(BundleRejection::WrongTrustDomain {
                expected: bundle.trust_domain.clone(),
                found,
                index,
            });
        }
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|constraints| constraints.value.ca);
        if !is_ca {
            return Err(BundleRejection::NotCa { index });
        }
        let validity = cert.validity();
        if validity.not_before.timestamp() <= now_seconds
            && validity.not_after.timestamp() > now_seconds
        {
            unexpired += 1;
        }
    }
    if !bundle.x509_authorities.is_empty() && unexpired == 0 {
        return Err(BundleRejection::AllExpired {
            count: bundle.x509_authorities.len(),
        });
    }
    Ok(())
}

/// Returns the trust domain names of every `spiffe://` URI SAN, in order.
fn spiffe_trust_domains(cert: &X509Certificate<'_>) -> Vec<String> {
    let Some(san) = cert.subject_alternative_name().ok().flatten() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri
                .strip_prefix("spiffe://")
                .map(|rest| rest.split('/').next().unwrap_or_default().to_owned()),
            _ => None,
        })
        .collect()
}

/// Parses a supplied first bundle: SPIFFE bundle JSON when it starts with `{`, PEM
/// certificates otherwise.
pub(crate) fn parse_supplied_bundle(
    trust_domain: &TrustDomain,
    data: &[u8],
) -> Result<SpiffeBundle, String> {
    let trimmed = data.trim_ascii_start();
    if trimmed.starts_with(b"{") {
        return SpiffeBundle::parse(trust_domain.clone(), data).map_err(|error| error.to_string());
    }
    let x509 = twid_spiffe::X509Bundle::parse_pem(trust_domain.clone(), data)
        .map_err(|error| format!("neither SPIFFE bundle JSON nor PEM certificates: {error}"))?;
    let mut bundle = SpiffeBundle::new(trust_domain.clone());
    bundle.x509_authorities = x509.authorities().to_vec();
    Ok(bundle)
}

/// Converts a stored SPIFFE bundle into the node API's bundle message.
pub(crate) fn bundle_to_pb(bundle: &SpiffeBundle, sequence: u64) -> pb::Bundle {
    pb::Bundle {
        trust_domain: bundle.trust_domain.name().to_owned(),
        x509_authorities: bundle
            .x509_authorities
            .iter()
            .map(|cert| cert.to_vec())
            .collect(),
        jwt_authorities: bundle
            .jwt_authorities
            .values()
            .map(|authority| pb::JwtAuthority {
                key_id: authority.key_id.clone(),
                public_key: authority.public_key.clone(),
                expires_at: 0,
            })
            .collect(),
        refresh_hint: bundle
            .refresh_hint
            .map_or(0, |hint| i64::try_from(hint).unwrap_or(i64::MAX)),
        sequence_number: sequence,
    }
}

/// Converts the node API's bundle message into a SPIFFE bundle; JWT keys that do not parse
/// are left out.
pub(crate) fn bundle_from_pb(bundle: &pb::Bundle, trust_domain: TrustDomain) -> SpiffeBundle {
    let mut spiffe = SpiffeBundle::new(trust_domain);
    spiffe.x509_authorities = bundle
        .x509_authorities
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    for key in &bundle.jwt_authorities {
        if let Ok(authority) =
            twid_spiffe::jwt::JwtAuthority::from_spki_der(&key.key_id, &key.public_key)
        {
            spiffe.jwt_authorities.insert(key.key_id.clone(), authority);
        }
    }
    spiffe.sequence_number = Some(bundle.sequence_number);
    spiffe
}

/// Returns the bundles of the trust domains that `federates_with` lists, leaving out the
/// local trust domain and trust domains with no stored bundle.
pub(crate) async fn federated_bundles<'a>(
    shared: &Shared,
    federates_with: impl Iterator<Item = &'a TrustDomain>,
) -> Result<Vec<pb::Bundle>, ServerError> {
    let requested: BTreeSet<&TrustDomain> = federates_with
        .filter(|trust_domain| **trust_domain != shared.config.trust_domain)
        .collect();
    let mut bundles = Vec::with_capacity(requested.len());
    for trust_domain in requested {
        let Some(stored) = shared.datastore.get_bundle(trust_domain).await? else {
            continue;
        };
        match SpiffeBundle::parse(trust_domain.clone(), &stored.data) {
            Ok(bundle) => bundles.push(bundle_to_pb(&bundle, stored.sequence)),
            Err(error) => {
                tracing::error!(%trust_domain, %error, "stored federated bundle does not parse; leaving it out of the sync");
            }
        }
    }
    Ok(bundles)
}

/// The outcome of the last refresh of one relationship, kept in memory for `twid federation
/// show`.
#[derive(Debug, Clone, Default)]
pub(crate) struct RefreshStatus {
    /// Unix seconds of the last accepted fetch.
    pub(crate) last_success: Option<i64>,
    /// The reason the last fetch failed or was rejected; cleared by a success.
    pub(crate) last_error: Option<String>,
    /// Unix seconds of the next scheduled fetch.
    pub(crate) next_refresh: i64,
}

/// Federation state shared by the refresh task and the admin API.
pub(crate) struct Federation {
    /// `ca_file_path` of configured `https_web` relationships, by trust domain.
    ca_files: HashMap<TrustDomain, PathBuf>,
    status: Mutex<HashMap<TrustDomain, RefreshStatus>>,
    /// Serializes refreshes, so that the task and `twid federation refresh` never store two
    /// fetches of one trust domain out of order.
    refresh_lock: tokio::sync::Mutex<()>,
}

impl Federation {
    pub(crate) fn new(configured: &[FederatesWithConfig]) -> Self {
        let ca_files = configured
            .iter()
            .filter_map(|relationship| match &relationship.profile {
                EndpointProfile::HttpsWeb {
                    ca_file_path: Some(path),
                } => Some((relationship.trust_domain.clone(), path.clone())),
                _ => None,
            })
            .collect();
        Self {
            ca_files,
            status: Mutex::new(HashMap::new()),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Returns the last refresh outcome of `trust_domain`, if it was refreshed since start-up.
    pub(crate) fn status(&self, trust_domain: &TrustDomain) -> Option<RefreshStatus> {
        self.lock_status().get(trust_domain).cloned()
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, HashMap<TrustDomain, RefreshStatus>> {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, trust_domain: &TrustDomain, result: Result<(), String>, next: Duration) {
        let now = crate::convert::unix_now();
        let mut status = self.lock_status();
        let entry = status.entry(trust_domain.clone()).or_default();
        match result {
            Ok(()) => {
                entry.last_success = Some(now);
                entry.last_error = None;
            }
            Err(reason) => entry.last_error = Some(reason),
        }
        entry.next_refresh = now + i64::try_from(next.as_secs()).unwrap_or(i64::MAX);
    }

    fn is_due(&self, trust_domain: &TrustDomain, now: i64) -> bool {
        self.lock_status()
            .get(trust_domain)
            .is_none_or(|status| status.next_refresh <= now)
    }

    /// Forgets the refresh state of a deleted relationship.
    pub(crate) fn forget(&self, trust_domain: &TrustDomain) {
        self.lock_status().remove(trust_domain);
    }
}

/// Converts a configured relationship into the stored form.
fn relationship_from_config(configured: &FederatesWithConfig) -> FederationRelationship {
    let profile = match &configured.profile {
        EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => BundleEndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: endpoint_spiffe_id.clone(),
        },
        EndpointProfile::HttpsWeb { .. } => BundleEndpointProfile::HttpsWeb,
    };
    FederationRelationship {
        trust_domain: configured.trust_domain.clone(),
        bundle_endpoint_url: configured.bundle_endpoint_url.clone(),
        profile,
        created_at: 0,
        updated_at: 0,
    }
}

/// Stores the configured relationships and, for a trust domain without a stored bundle, the
/// first bundle from `trust_domain_bundle_path`.
///
/// Limit: a relationship removed from the configuration stays stored until `twid federation
/// delete` removes it.
pub(crate) async fn apply_config(shared: &Shared) -> Result<(), ServerError> {
    let now = crate::convert::unix_now();
    for configured in &shared.config.federation.federates_with {
        if configured.trust_domain == shared.config.trust_domain {
            return Err(ServerError::Federation(format!(
                "federates_with {:?} names the server's own trust domain; a server federates \
                 only with foreign trust domains",
                configured.trust_domain.name()
            )));
        }
        let relationship = relationship_from_config(configured);
        if shared
            .datastore
            .put_federation_relationship(&relationship, now)
            .await?
        {
            tracing::info!(
                trust_domain = %configured.trust_domain,
                url = %configured.bundle_endpoint_url,
                profile = relationship.profile.name(),
                "federation relationship stored from the configuration"
            );
        }
        let Some(path) = &configured.trust_domain_bundle_path else {
            continue;
        };
        if shared
            .datastore
            .get_bundle(&configured.trust_domain)
            .await?
            .is_some()
        {
            continue;
        }
        let data = std::fs::read(path).map_err(|source| ServerError::io(path, source))?;
        let bundle = parse_supplied_bundle(&configured.trust_domain, &data).map_err(|reason| {
            ServerError::Federation(format!(
                "trust_domain_bundle_path {} of federates_with {:?}: {reason}",
                path.display(),
                configured.trust_domain.name()
            ))
        })?;
        check_authorities(&bundle, SystemTime::now()).map_err(|rejection| {
            ServerError::Federation(format!(
                "trust_domain_bundle_path {} of federates_with {:?}: {rejection}",
                path.display(),
                configured.trust_domain.name()
            ))
        })?;
        shared
            .datastore
            .set_bundle(&configured.trust_domain, &bundle.to_json())
            .await?;
        tracing::info!(
            trust_domain = %configured.trust_domain,
            path = %path.display(),
            "first federated bundle loaded from trust_domain_bundle_path"
        );
    }
    Ok(())
}

/// Fetches, checks and stores the bundle of one relationship, and schedules its next refresh.
/// A failure or rejection is logged at warn with the relationship and the reason (at debug
/// when the previous attempt failed for the same reason), and the stored bundle stays.
///
/// # Errors
/// Returns the reason the bundle was not stored.
pub(crate) async fn refresh(
    shared: &Shared,
    relationship: &FederationRelationship,
) -> Result<RefreshOutcome, String> {
    let _guard = shared.federation.refresh_lock.lock().await;
    let trust_domain = &relationship.trust_domain;
    let result = fetch_and_store(shared, relationship).await;
    match &result {
        Ok(outcome) => {
            let next = refresh_interval(outcome.refresh_hint);
            shared.federation.record(trust_domain, Ok(()), next);
        }
        Err(reason) => {
            // A retry that fails for the same reason is logged at debug, so an unreachable
            // endpoint adds one warning per change of reason rather than one every 30 seconds.
            let repeated = shared
                .federation
                .status(trust_domain)
                .is_some_and(|status| status.last_error.as_deref() == Some(reason.as_str()));
            if repeated {
                tracing::debug!(
                    trust_domain = %trust_domain,
                    url = %relationship.bundle_endpoint_url,
                    reason = %reason,
                    "federated bundle refresh failed again for the same reason"
                );
            } else {
                tracing::warn!(
                    trust_domain = %trust_domain,
                    url = %relationship.bundle_endpoint_url,
                    profile = relationship.profile.name(),
                    reason = %reason,
                    "federated bundle refresh failed; keeping the previous bundle"
                );
            }
            shared
                .federation
                .record(trust_domain, Err(reason.clone()), RETRY_AFTER_FAILURE);
        }
    }
    result
}

/// The result of one successful refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefreshOutcome {
    /// Whether the fetched bundle differed from the stored one and replaced it.
    pub(crate) changed: bool,
    /// The fetched bundle's `spiffe_refresh_hint` in seconds.
    pub(crate) refresh_hint: Option<u64>,
    /// The stored sequence number after the refresh.
    pub(crate) sequence: u64,
}

async fn fetch_and_store(
    shared: &Shared,
    relationship: &FederationRelationship,
) -> Result<RefreshOutcome, String> {
    let trust_domain = &relationship.trust_domain;
    let stored = shared
        .datastore
        .get_bundle(trust_domain)
        .await
        .map_err(|error| format!("failed to read the stored bundle: {error}"))?;
    let stored_bundle = match &stored {
        Some(stored) => Some(
            SpiffeBundle::parse(trust_domain.clone(), &stored.data)
                .map_err(|error| format!("the stored bundle does not parse: {error}"))?,
        ),
        None => None,
    };

    let ca_file = shared.federation.ca_files.get(trust_domain);
    let body = federation_fetch::fetch(relationship, stored_bundle.as_ref(), ca_file).await?;
    let fetched = check_bundle(trust_domain, &body, SystemTime::now())
        .map_err(|rejection| format!("bundle rejected: {rejection}"))?;

    let unchanged = stored_bundle.as_ref().is_some_and(|previous| {
        previous.x509_authorities == fetched.x509_authorities
            && previous.jwt_authorities == fetched.jwt_authorities
    });
    if unchanged && let Some(stored) = stored {
        tracing::debug!(%trust_domain, "federated bundle unchanged");
        return Ok(RefreshOutcome {
            changed: false,
            refresh_hint: fetched.refresh_hint,
            sequence: stored.sequence,
        });
    }

    let sequence = shared
        .datastore
        .set_bundle(trust_domain, &fetched.to_json())
        .await
        .map_err(|error| format!("failed to store the bundle: {error}"))?;
    shared.hints.notify("bundle");
    tracing::info!(
        %trust_domain,
        sequence,
        x509_authorities = fetched.x509_authorities.len(),
        jwt_authorities = fetched.jwt_authorities.len(),
        "federated bundle updated"
    );
    Ok(RefreshOutcome {
        changed: true,
        refresh_hint: fetched.refresh_hint,
        sequence,
    })
}

/// Returns the refresh interval for a bundle's `spiffe_refresh_hint` in seconds, bounded to
/// 30 seconds through one day; 5 minutes without a hint.
pub(crate) fn refresh_interval(hint: Option<u64>) -> Duration {
    hint.map_or(DEFAULT_REFRESH_HINT, Duration::from_secs)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// Refreshes every stored relationship when its interval has passed, until shutdown.
///
/// Limit: servers that share a PostgreSQL database each run this task, so every replica
/// fetches every relationship, and the refresh state lives in each replica's memory.
pub(crate) async fn refresh_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(REFRESH_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let relationships = match shared.datastore.list_federation_relationships().await {
            Ok(relationships) => relationships,
            Err(error) => {
                tracing::warn!(error = %crate::tasks::error_chain(&error), "failed to list federation relationships");
                continue;
            }
        };
        let now = crate::convert::unix_now();
        for relationship in relationships {
            if shared.federation.is_due(&relationship.trust_domain, now) {
                // The outcome is logged and recorded inside.
                let _ = refresh(&shared, &relationship).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn trust_domain(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    /// Returns a self-signed CA certificate with the URI SAN `spiffe://<name>`, valid from
    /// `not_before` to `not_after` (unix seconds).
    fn ca_cert(name: &str, not_before: i64, not_after: i64) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(format!("spiffe://{name}")).unwrap(),
        )];
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn bundle_json(td: &str, certs: &[Vec<u8>]) -> Vec<u8> {
        let mut bundle = SpiffeBundle::new(trust_domain(td));
        bundle.x509_authorities = certs.iter().cloned().map(CertificateDer::from).collect();
        bundle.refresh_hint = Some(60);
        bundle.to_json()
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(2_000_000_000)
    }

    #[test]
    fn bundle_check_accepts_own_domain() {
        let cert = ca_cert("b.org", 1_900_000_000, 2_100_000_000);
        let json = bundle_json("b.org", &[cert]);
        let bundle = check_bundle(&trust_domain("b.org"), &json, now()).unwrap();
        assert_eq!(bundle.x509_authorities.len(), 1);
        assert_eq!(bundle.refresh_hint, Some(60));
    }

    #[test]
    fn bundle_check_rejects_wrong_domain() {
        let cert = ca_cert("c.org", 1_900_000_000, 2_100_000_000);
        let json = bundle_json("c.org", &[cert]);
        let rejection = check_bundle(&trust_domain("b.org"), &json, now()).unwrap_err();
        assert!(
            matches!(
                &rejection,
                BundleRejection::WrongTrustDomain { found, index: 0, .. } if found == "c.org"
            ),
            "{rejection:?}"
        );
    }

    #[test]
    fn bundle_check_rejects_all_expired() {
        let first = ca_cert("b.org", 1_800_000_000, 1_900_000_000);
        let second = ca_cert("b.org", 1_800_000_000, 1_999_999_999);
        let json = bundle_json("b.org", &[first, second]);
        let rejection = check_bundle(&trust_domain("b.org"), &json, now()).unwrap_err();
        assert_eq!(rejection, BundleRejection::AllExpired { count: 2 });
    }

    /// Returns a certificate like [`ca_cert`] with the given URI SANs and CA flag.
    fn cert_with(sans: &[&str], is_ca: bool) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        if is_ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.subject_alt_names = sans
            .iter()
            .map(|san| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*san).unwrap()))
            .collect();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(2_100_000_000).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn bundle_check_rejects_foreign_second_san() {
        let cert = cert_with(&["spiffe://b.org", "spiffe://a.org"], true);
        let json = bundle_json("b.org", &[cert]);
        let rejection = check_bundle(&trust_domain("b.org"), &json, now()).unwrap_err();
        assert!(
            matches!(
                &rejection,
                BundleRejection::WrongTrustDomain { found, index: 0, .. } if found == "a.org"
            ),
            "{rejection:?}"
        );
    }

    #[test]
    fn bundle_check_rejects_non_ca_authority() {
        let current = ca_cert("b.org", 1_900_000_000, 2_100_000_000);
        let leaf = cert_with(&["spiffe://b.org/workload"], false);
        let json = bundle_json("b.org", &[current, leaf]);
        let rejection = check_bundle(&trust_domain("b.org"), &json, now()).unwrap_err();
        assert_eq!(rejection, BundleRejection::NotCa { index: 1 });
    }

    #[test]
    fn bundle_check_rejects_only_future_authorities() {
        let future = ca_cert("b.org", 2_050_000_000, 2_100_000_000);
        let json = bundle_json("b.org", &[future]);
        let rejection = check_bundle(&trust_domain("b.org"), &json, now()).unwrap_err();
        assert_eq!(rejection, BundleRejection::AllExpired { count: 1 });
        // A future authority beside a current one is a prepared authority, which is kept.
        let current = ca_cert("b.org", 1_900_000_000, 2_100_000_000);
        let future = ca_cert("b.org", 2_050_000_000, 2_100_000_000);
        let json = bundle_json("b.org", &[current, future]);
        assert!(check_bundle(&trust_domain("b.org"), &json, now()).is_ok());
    }

    #[test]
    fn bundle_check_keeps_partly_expired() {
        let expired = ca_cert("b.org", 1_800_000_000, 1_900_000_000);
        let current = ca_cert("b.org", 1_900_000_000, 2_100_000_000);
        let json = bundle_json("b.org", &[expired, current]);
        let bundle = check_bundle(&trust_domain("b.org"), &json, now()).unwrap();
        assert_eq!(bundle.x509_authorities.len(), 2);
    }

    #[test]
    fn bundle_check_rejects_malformed() {
        let cases: [&[u8]; 4] = [
            b"not json",
            br#"{"spiffe_refresh_hint": 60}"#,
            br#"{"keys":[{"kty":"EC","use":"x509-svid","x5c":["!!"]}]}"#,
            br#"{"keys":[], "spiffe_sequence": "one"}"#,
        ];
        for json in cases {
            let rejection = check_bundle(&trust_domain("b.org"), json, now()).unwrap_err();
            assert!(
                matches!(rejection, BundleRejection::Malformed(_)),
                "{}: {rejection:?}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn bundle_check_rejects_empty() {
        let rejection = check_bundle(&trust_domain("b.org"), br#"{"keys":[]}"#, now());
        assert_eq!(rejection.unwrap_err(), BundleRejection::Empty);
    }

    #[test]
    fn refresh_interval_is_bounded() {
        assert_eq!(refresh_interval(None), Duration::from_secs(300));
        assert_eq!(refresh_interval(Some(1)), Duration::from_secs(30));
        assert_eq!(refresh_interval(Some(600)), Duration::from_secs(600));
        assert_eq!(
            refresh_interval(Some(u64::MAX)),
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn supplied_bundle_accepts_pem_and_json() {
        let cert = ca_cert("b.org", 1_900_000_000, 2_100_000_000);
        let json = bundle_json("b.org", std::slice::from_ref(&cert));
        let from_json = parse_supplied_bundle(&trust_domain("b.org"), &json).unwrap();
        let pem = twid_spiffe::X509Bundle::from_authorities(
            trust_domain("b.org"),
            vec![CertificateDer::from(cert)],
        )
        .unwrap()
        .to_pem();
        let from_pem = parse_supplied_bundle(&trust_domain("b.org"), pem.as_bytes()).unwrap();
        assert_eq!(from_json.x509_authorities, from_pem.x509_authorities);
        assert!(parse_supplied_bundle(&trust_domain("b.org"), b"garbage").is_err());
    }
}
