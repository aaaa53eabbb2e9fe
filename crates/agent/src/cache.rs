//! The agent's cache: an immutable [`Snapshot`] of authorized entries, their SVIDs and the trust
//! bundles, published through a `tokio::sync::watch` channel.
//!
//! Invariant: a snapshot is never mutated after it is published. Writers build a new snapshot
//! with a higher generation number and replace the old one, so Workload API streams always see
//! a consistent state and send it whole.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;
use twid_proto::types::{Entry, JwtAuthority};
use twid_types::Selector;

use crate::revocation::Revoked;

/// A signed X.509-SVID and its private key.
#[derive(Clone)]
pub(crate) struct CachedSvid {
    /// DER certificates, leaf first.
    pub(crate) chain: Vec<Vec<u8>>,
    /// PKCS#8 DER private key.
    pub(crate) key_pkcs8: Vec<u8>,
    /// Unix seconds.
    pub(crate) not_before: i64,
    /// Unix seconds.
    pub(crate) not_after: i64,
}

impl CachedSvid {
    /// Returns whether the SVID should be replaced at `now`: past half its lifetime.
    pub(crate) fn needs_renewal(&self, now: i64) -> bool {
        now >= half_life(self.not_before, self.not_after)
    }

    /// Returns whether the SVID has expired at `now`.
    pub(crate) fn is_expired(&self, now: i64) -> bool {
        now >= self.not_after
    }

    /// Returns the chain as one concatenated DER blob, leaf first.
    pub(crate) fn chain_concat(&self) -> Vec<u8> {
        self.chain.concat()
    }
}

/// Returns the point halfway between `not_before` and `not_after` (Unix seconds).
pub(crate) fn half_life(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) / 2
}

impl std::fmt::Debug for CachedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is left out on purpose: Debug output may reach logs.
        f.debug_struct("CachedSvid")
            .field("certificates", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// An entry the agent is authorized for, with its SVID once signed. The entry and its
/// converted selectors are shared between snapshots, so that a round which changes few of
/// 100,000 entries copies pointers, not entries.
#[derive(Debug, Clone)]
pub(crate) struct CachedEntry {
    pub(crate) entry: Arc<Entry>,
    /// The entry's selectors, converted once for matching.
    pub(crate) selectors: Arc<[Selector]>,
    pub(crate) svid: Option<Arc<CachedSvid>>,
    /// Whether the server revoked the entry's last SVID and has not signed a new one. Such an
    /// entry is no identity of any caller until a new SVID is signed.
    pub(crate) svid_revoked: bool,
}

impl CachedEntry {
    /// Wraps a synced entry.
    #[cfg(test)]
    pub(crate) fn new(entry: Entry, svid: Option<Arc<CachedSvid>>) -> Self {
        let mut cached = Self::from_synced(entry);
        cached.svid = svid;
        cached
    }

    /// Wraps an entry received in Sync, without an SVID. The selectors move into their
    /// matching form and the parent ID is dropped, because the agent needs neither in wire
    /// form and an agent may hold 100,000 entries.
    pub(crate) fn from_synced(mut entry: Entry) -> Self {
        let selectors = std::mem::take(&mut entry.selectors)
            .into_iter()
            .map(|selector| Selector::new(selector.r#type, selector.value))
            .collect();
        entry.parent_id = String::new();
        Self {
            entry: Arc::new(entry),
            selectors,
            svid: None,
            svid_revoked: false,
        }
    }

    /// Returns this entry with `svid` in place of its SVID and the revoked mark cleared.
    pub(crate) fn with_svid(mut self, svid: Option<Arc<CachedSvid>>) -> Self {
        self.svid = svid;
        self.svid_revoked = false;
        self
    }

    /// Returns whether `other` has the same entry and the same SVID (by identity).
    fn same_as(&self, other: &Self) -> bool {
        let same_svid = match (&self.svid, &other.svid) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_svid
            && self.svid_revoked == other.svid_revoked
            && (Arc::ptr_eq(&self.entry, &other.entry) || self.entry == other.entry)
    }
}

/// The X.509 and JWT authorities of one trust domain.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TrustDomainBundle {
    /// DER CA certificates.
    pub(crate) x509_authorities: Vec<Vec<u8>>,
    /// JWT signing keys.
    pub(crate) jwt_authorities: Vec<JwtAuthority>,
}

/// The whole state served to workloads at one point in time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Incremented on every publish; 0 means nothing was synced yet.
    pub(crate) generation: u64,
    /// `spiffe://<td>` of the local trust domain.
    pub(crate) trust_domain_id: String,
    /// Entries ordered by creation time, then by ID.
    pub(crate) entries: Vec<CachedEntry>,
    /// DER CA certificates of the local trust domain.
    pub(crate) x509_authorities: Vec<Vec<u8>>,
    /// JWT signing keys of the local trust domain.
    pub(crate) jwt_authorities: Vec<JwtAuthority>,
    /// Bundles of federated trust domains, keyed by trust domain name (`example.com`).
    pub(crate) federated: BTreeMap<String, TrustDomainBundle>,
    /// The credentials the latest Sync listed as revoked. Cached JWT-SVIDs and WITs among them
    /// are not served.
    pub(crate) revoked: Arc<Revoked>,
}

impl Snapshot {
    /// Returns the entries whose selectors are all among `workload`, in snapshot order.
    pub(crate) fn matching_entries(&self, workload: &[Selector]) -> Vec<&CachedEntry> {
        self.entries
            .iter()
            .filter(|cached| twid_types::selectors_match(&cached.selectors, workload))
            .collect()
    }

    /// Returns the local bundle as concatenated DER certificates.
    pub(crate) fn bundle_concat(&self) -> Vec<u8> {
        self.x509_authorities.concat()
    }

    /// Returns the federated bundles that `entries` federate with, keyed by trust domain ID
    /// (`spiffe://example.com`); trust domains without a known bundle are left out.
    pub(crate) fn federated_for(
        &self,
        entries: &[&CachedEntry],
    ) -> BTreeMap<String, &TrustDomainBundle> {
        let names: BTreeSet<&str> = entries
            .iter()
            .flat_map(|cached| cached.entry.federates_with.iter().map(String::as_str))
            .collect();
        names
            .into_iter()
            .filter_map(|name| {
                let bundle = self.federated.get(name)?;
                Some((format!("spiffe://{name}"), bundle))
            })
            .collect()
    }

    /// Returns whether `other` would show workloads exactly what this snapshot shows.
    pub(crate) fn same_content(&self, other: &Self) -> bool {
        self.trust_domain_id == other.trust_domain_id
            && self.x509_authorities == other.x509_authorities
            && self.jwt_authorities == other.jwt_authorities
            && self.federated == other.federated
            && self.revoked == other.revoked
            && self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.same_as(b))
    }
}

/// Sorts entries into the order workloads see: creation time, then entry ID.
pub(crate) fn sort_entries(entries: &mut [CachedEntry]) {
    entries
        .sort_by(|a, b| (a.entry.created_at, &a.entry.id).cmp(&(b.entry.created_at, &b.entry.id)));
}

/// How long a workload's request keeps an entry's X.509-SVID signed while the agent holds
/// more entries than `x509_svid_cache_max_size`. Workload API streams renew it with every
/// update they send, so it only has to outlast an SVID's half-life.
const DEMAND_TTL_SECS: i64 = 24 * 60 * 60;

/// The entries that workloads requested, with the Unix time of the latest request.
#[derive(Debug, Default)]
struct Demand {
    requested: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// Wakes the sync loop when a workload requests an entry without an SVID.
    wake: tokio::sync::Notify,
}

/// The publishing side of the cache; cloning shares the same channel.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    sender: Arc<watch::Sender<Arc<Snapshot>>>,
    demand: Arc<Demand>,
}

impl Cache {
    /// Creates an empty cache (generation 0) for the trust domain `spiffe://<td>`.
    pub(crate) fn new(trust_domain_id: String) -> Self {
        let empty = Snapshot {
            trust_domain_id,
            ..Snapshot::default()
        };
        let (sender, _) = watch::channel(Arc::new(empty));
        Self {
            sender: Arc::new(sender),
            demand: Arc::new(Demand::default()),
        }
    }

    /// Records that a workload requested `entries` at `now`, and wakes the sync loop when one
    /// of them has no SVID, so that it is signed now.
    pub(crate) fn request_entries(&self, entries: &[&CachedEntry], now: i64) {
        let mut requested = self
            .demand
            .requested
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for cached in entries {
            requested.insert(cached.entry.id.clone(), now);
        }
        drop(requested);
        if entries
            .iter()
            .any(|cached| cached.svid.is_none() && !cached.svid_revoked)
        {
            self.demand.wake.notify_one();
        }
    }

    /// Returns the entries requested within [`DEMAND_TTL_SECS`] before `now`, with the time of
    /// the latest request, and drops older requests.
    pub(crate) fn requested_entries(&self, now: i64) -> std::collections::HashMap<String, i64> {
        let mut requested = self
            .demand
            .requested
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        requested.retain(|_, at| now.saturating_sub(*at) < DEMAND_TTL_SECS);
        requested.clone()
    }

    /// Waits until a workload requests an entry that has no SVID.
    pub(crate) async fn entry_requested(&self) {
        self.demand.wake.notified().await;
    }

    /// Returns the current snapshot.
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.sender.borrow().clone()
    }

    /// Subscribes to snapshot changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.sender.subscribe()
    }

    /// Publishes `next` with the generation after the current one.
    pub(crate) fn publish(&self, mut next: Snapshot) {
        self.sender.send_modify(|current| {
            next.generation = current.generation + 1;
            *current = Arc::new(next);
        });
    }

    /// Publishes `next` unless the cache already shows the same content; the first publish
    /// always happens because it marks the first sync. Returns whether it published.
    pub(crate) fn publish_if_changed(&self, next: Snapshot) -> bool {
        let current = self.current();
        if current.generation > 0 && current.same_content(&next) {
            return false;
        }
        self.publish(next);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, selectors: &[&str], federates_with: &[&str]) -> CachedEntry {
        let selectors = selectors
            .iter()
            .map(|text| {
                let (kind, value) = text.split_once(':').expect("type:value");
                twid_proto::types::Selector {
                    r#type: kind.to_owned(),
                    value: value.to_owned(),
                }
            })
            .collect();
        let entry = Entry {
            id: id.to_owned(),
            selectors,
            federates_with: federates_with.iter().map(|s| (*s).to_owned()).collect(),
            ..Entry::default()
        };
        CachedEntry::new(entry, None)
    }

    fn workload(selectors: &[&str]) -> Vec<Selector> {
        selectors
            .iter()
            .map(|s| Selector::parse(s).expect("selector"))
            .collect()
    }

    #[test]
    fn entry_without_selectors_matches_nothing() {
        let snapshot = Snapshot {
            entries: vec![entry("a", &[], &[])],
            ..Snapshot::default()
        };
        assert!(
            snapshot
                .matching_entries(&workload(&["unix:uid:1"]))
                .is_empty()
        );
    }

    #[test]
    fn subset_of_workload_selectors_matches() {
        let snapshot = Snapshot {
            entries: vec![
                entry("one", &["unix:gid:2"], &[]),
                entry("two", &["unix:gid:2", "unix:gid:3"], &[]),
                entry("three", &["unix:uid:1", "unix:gid:2"], &[]),
            ],
            ..Snapshot::default()
        };
        let matched: Vec<&str> = snapshot
            .matching_entries(&workload(&["unix:uid:1", "unix:gid:2"]))
            .iter()
            .map(|c| c.entry.id.as_str())
            .collect();
        assert_eq!(matched, ["one", "three"]);
    }

    #[test]
    fn federated_bundles_follow_entries() {
        let known = TrustDomainBundle {
            x509_authorities: vec![vec![1]],
            jwt_authorities: Vec::new(),
        };
        let snapshot = Snapshot {
            federated: BTreeMap::from([("a.test".to_owned(), known.clone())]),
            ..Snapshot::default()
        };
        let with = entry("e", &["unix:uid:1"], &["a.test", "unknown.test"]);
        let without = entry("f", &["unix:uid:1"], &[]);
        let bundles = snapshot.federated_for(&[&with]);
        assert_eq!(bundles.len(), 1);
        assert_eq!(bundles.get("spiffe://a.test"), Some(&&known));
        assert!(snapshot.federated_for(&[&without]).is_empty());
    }

    #[test]
    fn publish_increments_generation() {
        let cache = Cache::new("spiffe://example.org".to_owned());
        let mut receiver = cache.subscribe();
        cache.publish(Snapshot::default());
        assert!(receiver.has_changed().expect("sender must be alive"));
        assert_eq!(receiver.borrow_and_update().generation, 1);
        cache.publish(Snapshot::default());
        assert_eq!(cache.current().generation, 2);
    }

    #[test]
    fn unchanged_snapshot_is_not_republished() {
        let cache = Cache::new("spiffe://example.org".to_owned());
        let first = Snapshot {
            entries: vec![entry("a", &["unix:uid:1"], &[])],
            ..Snapshot::default()
        };
        assert!(cache.publish_if_changed(first.clone()));
        assert!(!cache.publish_if_changed(first.clone()));
        assert_eq!(cache.current().generation, 1);
        let mut changed = first;
        changed.x509_authorities = vec![vec![7]];
        assert!(cache.publish_if_changed(changed));
        assert_eq!(cache.current().generation, 2);
    }

    #[test]
    fn revocation_changes_are_published() {
        let cache = Cache::new("spiffe://example.org".to_owned());
        let first = Snapshot {
            entries: vec![entry("a", &["unix:uid:1"], &[])],
            ..Snapshot::default()
        };
        assert!(cache.publish_if_changed(first.clone()));
        let mut revoked = first.clone();
        revoked.revoked = Arc::new(Revoked::new(Vec::new(), vec!["jti-1".to_owned()]));
        assert!(cache.publish_if_changed(revoked.clone()));
        let mut withheld = revoked;
        withheld.entries[0].svid_revoked = true;
        assert!(cache.publish_if_changed(withheld));
        assert_eq!(cache.current().generation, 3);
    }

    #[test]
    fn svid_needs_renewal_after_half_life() {
        let svid = CachedSvid {
            chain: vec![],
            key_pkcs8: vec![],
            not_before: 100,
            not_after: 200,
        };
        assert!(!svid.needs_renewal(149));
        assert!(svid.needs_renewal(150));
        assert!(!svid.is_expired(199));
        assert!(svid.is_expired(200));
    }
}
