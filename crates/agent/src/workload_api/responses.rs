//! Pure functions that turn a cache snapshot and the caller's selectors into Workload API
//! messages. Every message carries the caller's full state, never a delta.

use std::collections::{HashMap, HashSet};

use twid_proto::workload::{JwtBundlesResponse, X509BundlesResponse, X509svid, X509svidResponse};
use twid_types::Selector;

use crate::cache::{CachedEntry, Snapshot};
use crate::jwks::jwks_json;

/// The X.509 view of one caller.
#[derive(Debug, PartialEq)]
pub(crate) enum X509View {
    /// No entry matches the caller.
    NoIdentity,
    /// Entries match, but none has a signed SVID yet.
    Pending,
    /// The message to send.
    Ready(X509svidResponse),
}

/// Builds the FetchX509SVID view; a later SVID whose non-empty hint repeats an earlier one is
/// left out.
pub(crate) fn x509_view(snapshot: &Snapshot, selectors: &[Selector]) -> X509View {
    let entries = identities(snapshot, selectors);
    if entries.is_empty() {
        return X509View::NoIdentity;
    }
    let bundle = snapshot.bundle_concat();
    let svids: Vec<X509svid> = entries
        .iter()
        .filter_map(|cached| {
            let svid = cached.svid.as_ref()?;
            Some(X509svid {
                spiffe_id: cached.entry.spiffe_id.clone(),
                x509_svid: svid.chain_concat(),
                x509_svid_key: svid.key_pkcs8.clone(),
                bundle: bundle.clone(),
                hint: cached.entry.hint.clone(),
            })
        })
        .collect();
    if svids.is_empty() {
        return X509View::Pending;
    }
    let federated_bundles = snapshot
        .federated_for(&entries)
        .into_iter()
        .map(|(id, bundle)| (id, bundle.x509_authorities.concat()))
        .collect();
    X509View::Ready(X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles,
    })
}

/// Returns the caller's identities: matching entries in snapshot order, without those whose
/// SVID the server revoked (until it signs a new one) and without those whose non-empty hint
/// an earlier entry already has. A caller left with none gets PermissionDenied.
pub(crate) fn identities<'a>(
    snapshot: &'a Snapshot,
    selectors: &[Selector],
) -> Vec<&'a CachedEntry> {
    let mut seen = HashSet::new();
    snapshot
        .matching_entries(selectors)
        .into_iter()
        .filter(|cached| !cached.svid_revoked)
        .filter(|cached| {
            let hint = cached.entry.hint.as_str();
            if hint.is_empty() || seen.insert(hint) {
                return true;
            }
            tracing::debug!(entry_id = %cached.entry.id, hint, "dropping entry with duplicate hint");
            false
        })
        .collect()
}

/// Returns the entries that a caller's request keeps signed: its [`identities`] and its
/// matching entries whose SVID was revoked. Beyond the cache limit only requested entries
/// are signed, so a revoked entry left out here would never be asked for again.
pub(crate) fn requested_identities<'a>(
    snapshot: &'a Snapshot,
    selectors: &[Selector],
) -> Vec<&'a CachedEntry> {
    let mut entries = identities(snapshot, selectors);
    entries.extend(
        snapshot
            .matching_entries(selectors)
            .into_iter()
            .filter(|cached| cached.svid_revoked),
    );
    entries
}

/// Builds the FetchX509Bundles message: the local trust domain's CA certificates and those of
/// the trust domains the caller's entries federate with.
pub(crate) fn x509_bundles(snapshot: &Snapshot, entries: &[&CachedEntry]) -> X509BundlesResponse {
    let mut bundles = HashMap::from([(snapshot.trust_domain_id.clone(), snapshot.bundle_concat())]);
    for (id, bundle) in snapshot.federated_for(entries) {
        bundles.insert(id, bundle.x509_authorities.concat());
    }
    X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    }
}

/// Builds the FetchJWTBundles message: JWK Sets of the local trust domain and of the trust
/// domains the caller's entries federate with.
pub(crate) fn jwt_bundles(snapshot: &Snapshot, entries: &[&CachedEntry]) -> JwtBundlesResponse {
    let mut bundles = HashMap::from([(
        snapshot.trust_domain_id.clone(),
        jwks_json(&snapshot.jwt_authorities),
    )]);
    for (id, bundle) in snapshot.federated_for(entries) {
        bundles.insert(id, jwks_json(&bundle.jwt_authorities));
    }
    JwtBundlesResponse { bundles }
}
