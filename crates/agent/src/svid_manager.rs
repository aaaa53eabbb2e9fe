//! Workload X.509-SVIDs: deciding which entries need a new SVID and signing them in batches
//! with BatchNewX509Svid. Keys are generated here and never leave the agent except to the
//! workload that owns them.
//!
//! An entry keeps its current SVID until a replacement is signed, so a failed signing (server
//! unreachable, entry rejected) leaves workloads with the SVID they had until it expires. The
//! exception is an SVID the server revoked: it is dropped before signing, and the entry stays
//! without an SVID (and is no caller's identity) until the server signs a new one.
//!
//! An SVID signed by a tainted authority stays valid and is served until its replacement is
//! signed. At most `taint_batch_size` of them are re-signed per round, so that tainting an
//! authority does not send every agent's whole cache to the server at once.

use std::collections::HashMap;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;
use twid_proto::node::node_client::NodeClient;
use twid_proto::node::{BatchNewX509SvidRequest, NewX509SvidParams, X509SvidResult};
use twid_proto::types::Entry;
use twid_spiffe::X509Svid;

use crate::cache::{CachedEntry, CachedSvid, Snapshot};
use crate::revocation::{Revoked, TaintedAuthorities};
use crate::{AgentError, node, state};

/// Entries per BatchNewX509Svid request.
pub(crate) const BATCH_SIZE: usize = 500;

/// The synced entries paired with their current SVIDs, and which of them need a new one.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) entries: Vec<CachedEntry>,
    /// Indexes into `entries`.
    pub(crate) due: Vec<usize>,
    /// IDs of the entries whose SVID was dropped because the server revoked it.
    pub(crate) revoked: Vec<String>,
    /// Entries due only because a tainted authority signed their SVID.
    pub(crate) tainted_due: usize,
    /// Entries with an SVID from a tainted authority left for a later round.
    pub(crate) tainted_pending: usize,
}

/// Inputs of [`plan`] besides the entries and their SVIDs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanInputs<'a> {
    pub(crate) now: i64,
    pub(crate) revoked: &'a Revoked,
    /// Whether entries whose SVID was revoked are requested again in this round.
    pub(crate) retry_revoked: bool,
    pub(crate) tainted: &'a TaintedAuthorities,
    /// Maximum SVIDs signed by a tainted authority that this round replaces.
    pub(crate) taint_batch_size: usize,
    /// `x509_svid_cache_max_size`: while there are more entries than this, the entries that
    /// workloads requested keep an SVID, and others only while fewer than this many hold one.
    pub(crate) cache_limit: usize,
    /// Entries that workloads requested, with the Unix time of the latest request.
    pub(crate) requested: &'a HashMap<String, i64>,
}

/// Pairs each synced entry with its SVID from `previous` when that SVID still names the
/// entry's SPIFFE ID, has not expired at `now` and is not in `revoked`. An entry is due for
/// signing when it has no such SVID, when its SVID is past half its lifetime, or when the entry
/// changed (its revision number differs), for example in its TTL or DNS names.
///
/// An entry whose SVID is dropped as revoked is marked [`CachedEntry::svid_revoked`], and an
/// entry marked so in `previous` stays marked, until [`sign_due`] stores a new SVID. A marked
/// entry is due only when `retry_revoked` is true or the entry changed, because the server
/// rejects it until the agent attests again or the entry's selectors no longer match the
/// revocation.
///
/// Entries whose SVID a tainted authority signed are due as well, at most `taint_batch_size`
/// of them in the order of `entries`. Each keeps its SVID until the new one is signed.
pub(crate) fn plan(previous: &Snapshot, entries: Vec<CachedEntry>, inputs: PlanInputs<'_>) -> Plan {
    let PlanInputs {
        now,
        revoked,
        retry_revoked,
        tainted,
        taint_batch_size,
        cache_limit,
        requested,
    } = inputs;
    let mut tainted_due = 0;
    let mut tainted_pending = 0;
    let old: HashMap<&str, &CachedEntry> = previous
        .entries
        .iter()
        .map(|cached| (cached.entry.id.as_str(), cached))
        .collect();
    let cached_ids = cached_entries(&entries, &old, requested, cache_limit, now);
    let mut due = Vec::new();
    let mut dropped = Vec::new();
    let entries = entries
        .into_iter()
        .enumerate()
        .map(|(index, synced)| {
            let entry = Arc::clone(&synced.entry);
            let old = old.get(entry.id.as_str());
            if cached_ids.as_ref().is_some_and(|ids| !ids.contains(&index)) {
                // Beyond the cache limit and not requested: no SVID is kept or signed.
                let mut cached = synced.with_svid(None);
                cached.svid_revoked = old.is_some_and(|cached| cached.svid_revoked);
                return cached;
            }
            let mut svid = old
                .filter(|cached| cached.entry.spiffe_id == entry.spiffe_id)
                .and_then(|cached| cached.svid.clone())
                .filter(|svid| !svid.is_expired(now));
            let mut svid_revoked = old.is_some_and(|cached| cached.svid_revoked);
            if svid
                .as_ref()
                .is_some_and(|svid| revoked.contains_svid(svid))
            {
                svid = None;
                svid_revoked = true;
                dropped.push(entry.id.clone());
            }
            let changed =
                old.is_none_or(|cached| cached.entry.revision_number != entry.revision_number);
            let needs_signing = changed || svid.as_ref().is_none_or(|svid| svid.needs_renewal(now));
            if needs_signing && (!svid_revoked || retry_revoked || changed) {
                due.push(index);
            } else if svid
                .as_ref()
                .is_some_and(|svid| tainted.signed_chain(&svid.chain))
            {
                if tainted_due < taint_batch_size {
                    tainted_due += 1;
                    due.push(index);
                } else {
                    tainted_pending += 1;
                }
            }
            let mut cached = synced.with_svid(svid);
            cached.svid_revoked = svid_revoked;
            cached
        })
        .collect();
    Plan {
        entries,
        due,
        revoked: dropped,
        tainted_due,
        tainted_pending,
    }
}

/// Returns the indexes into `entries` of the entries that keep an SVID, or `None` for all of
/// them when there are at most `cache_limit`. Requested entries are always kept. The rest of
/// the room goes to entries that hold a valid SVID, then to the others, in the order of
/// `entries`.
fn cached_entries(
    entries: &[CachedEntry],
    old: &HashMap<&str, &CachedEntry>,
    requested: &HashMap<String, i64>,
    cache_limit: usize,
    now: i64,
) -> Option<std::collections::HashSet<usize>> {
    if entries.len() <= cache_limit {
        return None;
    }
    let mut kept: std::collections::HashSet<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, synced)| requested.contains_key(&synced.entry.id))
        .map(|(index, _)| index)
        .collect();
    let holds_svid = |synced: &CachedEntry| {
        let entry = &synced.entry;
        old.get(entry.id.as_str()).is_some_and(|cached| {
            cached.entry.spiffe_id == entry.spiffe_id
                && cached
                    .svid
                    .as_ref()
                    .is_some_and(|svid| !svid.is_expired(now))
        })
    };
    for pass in [true, false] {
        for (index, entry) in entries.iter().enumerate() {
            if kept.len() >= cache_limit {
                return Some(kept);
            }
            if !pass || holds_svid(entry) {
                kept.insert(index);
            }
        }
    }
    Some(kept)
}

/// The outcome of one signing round.
#[derive(Debug, Default)]
pub(crate) struct SignReport {
    /// Entries that received a new SVID.
    pub(crate) signed: usize,
    /// `(entry ID, reason)` for entries the server did not sign.
    pub(crate) failed: Vec<(String, String)>,
    /// The call that failed as a whole; later batches were not sent.
    pub(crate) error: Option<AgentError>,
}

/// Signs a new SVID for every due entry of `plan`, in batches, and stores each in place.
pub(crate) async fn sign_due(client: &mut NodeClient<Channel>, plan: &mut Plan) -> SignReport {
    let mut report = SignReport::default();
    for batch in plan.due.chunks(BATCH_SIZE) {
        if let Err(error) = sign_batch(client, &mut plan.entries, batch, &mut report).await {
            report.error = Some(error);
            break;
        }
    }
    report
}

async fn sign_batch(
    client: &mut NodeClient<Channel>,
    entries: &mut [CachedEntry],
    batch: &[usize],
    report: &mut SignReport,
) -> Result<(), AgentError> {
    let mut keys = HashMap::with_capacity(batch.len());
    let mut params = Vec::with_capacity(batch.len());
    for &index in batch {
        let key = state::generate_key()?;
        let entry_id = entries[index].entry.id.clone();
        params.push(NewX509SvidParams {
            entry_id: entry_id.clone(),
            csr: state::build_csr(&key)?,
        });
        keys.insert(entry_id, (index, key));
    }
    let response = node::call(
        "BatchNewX509Svid",
        client.batch_new_x509_svid(BatchNewX509SvidRequest { params }),
    )
    .await?;
    for result in response.results {
        let Some((index, key)) = keys.remove(&result.entry_id) else {
            tracing::debug!(entry_id = %result.entry_id, "server returned an SVID for an entry not requested");
            continue;
        };
        let entry_id = result.entry_id.clone();
        let revoked = result.revoked;
        match checked_svid(&entries[index].entry, result, &key) {
            Ok(svid) => {
                entries[index].svid = Some(Arc::new(svid));
                entries[index].svid_revoked = false;
                report.signed += 1;
            }
            Err(reason) => {
                // An entry whose SVID this agent never held, for example after a restart, also
                // waits for the retry schedule like a revoked one.
                if revoked {
                    entries[index].svid_revoked = true;
                }
                report.failed.push((entry_id, reason));
            }
        }
    }
    for (entry_id, _) in keys {
        report
            .failed
            .push((entry_id, "the server returned no result".to_owned()));
    }
    Ok(())
}

/// Checks a signing result: no error, a chain that is an X.509-SVID for the entry's SPIFFE ID
/// and whose leaf matches `key`.
fn checked_svid(
    entry: &Entry,
    result: X509SvidResult,
    key: &rcgen::KeyPair,
) -> Result<CachedSvid, String> {
    if !result.error.is_empty() {
        return Err(result.error);
    }
    let leaf = result
        .cert_chain
        .first()
        .ok_or_else(|| "the server returned an empty chain".to_owned())?;
    let (not_before, not_after) = state::validity(leaf).map_err(|e| e.to_string())?;
    let key_pkcs8 = key.serialize_der();
    let chain: Vec<CertificateDer<'static>> = result
        .cert_chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let svid = X509Svid::from_parts(chain, PrivatePkcs8KeyDer::from(key_pkcs8.clone()))
        .map_err(|e| format!("the server returned an invalid SVID: {e}"))?;
    if svid.spiffe_id().as_str() != entry.spiffe_id {
        return Err(format!(
            "the server returned an SVID for {} instead of {}",
            svid.spiffe_id(),
            entry.spiffe_id
        ));
    }
    Ok(CachedSvid {
        chain: result.cert_chain,
        key_pkcs8,
        not_before,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, revision: i64) -> Entry {
        Entry {
            id: id.to_owned(),
            spiffe_id: format!("spiffe://example.org/{id}"),
            revision_number: revision,
            ..Entry::default()
        }
    }

    fn shared(entries: Vec<Entry>) -> Vec<CachedEntry> {
        entries.into_iter().map(CachedEntry::from_synced).collect()
    }

    static NO_REQUESTS: std::sync::LazyLock<HashMap<String, i64>> =
        std::sync::LazyLock::new(HashMap::new);
    static NO_TAINT: std::sync::LazyLock<TaintedAuthorities> =
        std::sync::LazyLock::new(TaintedAuthorities::default);

    fn inputs(now: i64, revoked: &Revoked, retry_revoked: bool) -> PlanInputs<'_> {
        PlanInputs {
            now,
            revoked,
            retry_revoked,
            tainted: &NO_TAINT,
            taint_batch_size: 100,
            cache_limit: 1000,
            requested: &NO_REQUESTS,
        }
    }

    fn cached(id: &str, revision: i64, not_after: i64) -> CachedEntry {
        let svid = CachedSvid {
            chain: vec![vec![1]],
            key_pkcs8: vec![2],
            not_before: 0,
            not_after,
        };
        CachedEntry::new(entry(id, revision), Some(Arc::new(svid)))
    }

    #[test]
    fn plan_keeps_valid_svids_and_marks_due_entries() {
        let mut renamed = cached("e", 1, 1000);
        Arc::make_mut(&mut renamed.entry).spiffe_id = "spiffe://example.org/old-name".to_owned();
        let previous = Snapshot {
            entries: vec![
                cached("a", 1, 1000),
                cached("b", 1, 1000),
                cached("c", 1, 100),
                cached("f", 1, 50),
                renamed,
            ],
            ..Snapshot::default()
        };
        let synced = vec![
            entry("a", 1),
            entry("b", 2),
            entry("c", 1),
            entry("d", 1),
            entry("e", 1),
            entry("f", 1),
        ];
        let plan = plan(
            &previous,
            shared(synced),
            inputs(60, &Revoked::default(), true),
        );
        let has_svid: Vec<bool> = plan.entries.iter().map(|c| c.svid.is_some()).collect();
        // a fresh; b changed but keeps its SVID until replaced; c past half-life but valid;
        // d new; e's SPIFFE ID changed; f expired.
        assert_eq!(has_svid, [true, true, true, false, false, false]);
        assert_eq!(plan.due, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn plan_drops_revoked_svids() {
        let ca = crate::test_support::TestCa::new("example.org");
        let signed = |id: &str| {
            let key = state::generate_key().expect("key");
            let leaf = ca.leaf(&key, &format!("spiffe://example.org/{id}"));
            let svid = CachedSvid {
                chain: vec![leaf],
                key_pkcs8: vec![2],
                not_before: 0,
                not_after: 1000,
            };
            CachedEntry::new(entry(id, 1), Some(Arc::new(svid)))
        };
        let revoked_entry = signed("a");
        let kept_entry = signed("b");
        let mut still_revoked = CachedEntry::new(entry("c", 1), None);
        still_revoked.svid_revoked = true;
        let serial = |cached: &CachedEntry| {
            let svid = cached.svid.as_ref().expect("signed");
            crate::revocation::leaf_serial(&svid.chain[0]).expect("serial")
        };
        let revoked = Revoked::new(vec![serial(&revoked_entry)], Vec::new());
        let kept_serial = serial(&kept_entry);
        let previous = Snapshot {
            entries: vec![revoked_entry, kept_entry, still_revoked],
            ..Snapshot::default()
        };
        let synced = vec![entry("a", 1), entry("b", 1), entry("c", 1)];
        let held_back = plan(
            &previous,
            shared(synced.clone()),
            inputs(60, &revoked, false),
        );
        assert!(held_back.due.is_empty(), "{:?}", held_back.due);
        let plan = plan(&previous, shared(synced), inputs(60, &revoked, true));

        assert!(plan.entries[0].svid.is_none());
        assert!(plan.entries[0].svid_revoked);
        assert_eq!(serial(&plan.entries[1]), kept_serial);
        assert!(!plan.entries[1].svid_revoked);
        assert!(plan.entries[2].svid.is_none());
        assert!(plan.entries[2].svid_revoked);
        assert_eq!(plan.due, [0, 2]);
        assert_eq!(plan.revoked, ["a"]);
    }

    #[test]
    fn changed_revoked_entry_is_due() {
        let mut unchanged = CachedEntry::new(entry("a", 1), None);
        unchanged.svid_revoked = true;
        let mut changed = CachedEntry::new(entry("b", 1), None);
        changed.svid_revoked = true;
        let previous = Snapshot {
            entries: vec![unchanged, changed],
            ..Snapshot::default()
        };
        // b's selectors were edited, so the revocation may no longer match it.
        let synced = vec![entry("a", 1), entry("b", 2)];
        let plan = plan(
            &previous,
            shared(synced),
            inputs(60, &Revoked::default(), false),
        );
        assert_eq!(plan.due, [1]);
        assert!(plan.entries.iter().all(|cached| cached.svid_revoked));
    }

    #[test]
    fn plan_keeps_at_most_the_cache_limit_plus_requested_entries() {
        // a and c hold SVIDs; e was requested by a workload.
        let previous = Snapshot {
            entries: vec![cached("a", 1, 1000), cached("c", 1, 1000)],
            ..Snapshot::default()
        };
        let synced: Vec<Entry> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|id| entry(id, 1))
            .collect();
        let requested = HashMap::from([("e".to_owned(), 50)]);
        let limited = plan(
            &previous,
            shared(synced),
            PlanInputs {
                cache_limit: 3,
                requested: &requested,
                ..inputs(60, &Revoked::default(), true)
            },
        );
        // e is requested, a and c keep their SVIDs and fill the room; b and d get none.
        assert_eq!(limited.due, [4], "only the requested entry is signed");
        let with_svid: Vec<&str> = limited
            .entries
            .iter()
            .filter(|cached| cached.svid.is_some())
            .map(|cached| cached.entry.id.as_str())
            .collect();
        assert_eq!(with_svid, ["a", "c"]);

        // Within the limit every entry is signed.
        let all: Vec<Entry> = ["a", "b"].iter().map(|id| entry(id, 1)).collect();
        let unlimited = plan(
            &previous,
            shared(all),
            PlanInputs {
                cache_limit: 3,
                ..inputs(60, &Revoked::default(), true)
            },
        );
        assert_eq!(unlimited.due, [1]);
    }

    #[test]
    fn plan_resigns_tainted_in_batches() {
        let tainted_ca = crate::test_support::TestCa::new("example.org");
        let other_ca = crate::test_support::TestCa::new("example.org");
        let signed = |ca: &crate::test_support::TestCa, id: &str| {
            let key = state::generate_key().expect("key");
            let leaf = ca.leaf(&key, &format!("spiffe://example.org/{id}"));
            let svid = CachedSvid {
                chain: vec![leaf],
                key_pkcs8: vec![2],
                not_before: 0,
                not_after: 1000,
            };
            CachedEntry::new(entry(id, 1), Some(Arc::new(svid)))
        };
        let previous = Snapshot {
            entries: vec![
                signed(&tainted_ca, "a"),
                signed(&other_ca, "b"),
                signed(&tainted_ca, "c"),
                signed(&tainted_ca, "d"),
            ],
            ..Snapshot::default()
        };
        let tainted_id = crate::revocation::authority_key_id(
            &previous.entries[0].svid.as_ref().expect("signed").chain[0],
        )
        .expect("authority key identifier");
        let tainted = TaintedAuthorities::new(vec![tainted_id]);
        let synced = vec![entry("a", 1), entry("b", 1), entry("c", 1), entry("d", 1)];
        let plan = plan(
            &previous,
            shared(synced),
            PlanInputs {
                now: 60,
                revoked: &Revoked::default(),
                retry_revoked: true,
                tainted: &tainted,
                taint_batch_size: 2,
                cache_limit: 1000,
                requested: &NO_REQUESTS,
            },
        );
        assert_eq!(plan.due, [0, 2]);
        assert_eq!(plan.tainted_due, 2);
        assert_eq!(plan.tainted_pending, 1);
        // Tainted SVIDs are served until their replacements are signed.
        assert!(plan.entries.iter().all(|cached| cached.svid.is_some()));
        assert!(plan.revoked.is_empty());
    }

    fn signed_result(entry: &Entry, key: &rcgen::KeyPair, spiffe_id: &str) -> X509SvidResult {
        let ca = crate::test_support::TestCa::new("example.org");
        X509SvidResult {
            entry_id: entry.id.clone(),
            cert_chain: vec![ca.leaf(key, spiffe_id)],
            expires_at: 0,
            error: String::new(),
            revoked: false,
        }
    }

    #[test]
    fn checked_svid_accepts_matching_result() {
        let entry = entry("a", 1);
        let key = state::generate_key().expect("key");
        let result = signed_result(&entry, &key, &entry.spiffe_id);
        let svid = checked_svid(&entry, result, &key).expect("valid SVID");
        assert_eq!(svid.key_pkcs8, key.serialize_der());
        assert!(svid.not_after > svid.not_before);
    }

    #[test]
    fn checked_svid_rejects_mismatches() {
        let entry = entry("a", 1);
        let key = state::generate_key().expect("key");
        let other_key = state::generate_key().expect("other key");

        let wrong_id = signed_result(&entry, &key, "spiffe://example.org/other");
        let error = checked_svid(&entry, wrong_id, &key).expect_err("wrong ID");
        assert!(error.contains("instead of"), "{error}");

        let wrong_key = signed_result(&entry, &other_key, &entry.spiffe_id);
        assert!(checked_svid(&entry, wrong_key, &key).is_err());

        let failed = X509SvidResult {
            entry_id: entry.id.clone(),
            error: "not authorized".to_owned(),
            ..X509SvidResult::default()
        };
        assert_eq!(
            checked_svid(&entry, failed, &key).expect_err("server error"),
            "not authorized"
        );
    }
}
