use std::collections::BTreeMap;

use twid_types::NewEntry;

use super::*;
use crate::test_support::TestDatastore;

const NOW: i64 = 1_700_000_000;

fn id(text: &str) -> SpiffeId {
    SpiffeId::new(text).expect("test SPIFFE ID")
}

fn selector(text: &str) -> Selector {
    Selector::parse(text).expect("test selector")
}

fn new_entry(spiffe_id: &str, parent: &str, selectors: &[&str]) -> NewEntry {
    NewEntry::new(
        id(spiffe_id),
        id(parent),
        selectors.iter().map(|text| selector(text)).collect(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A delta that left the copy equal to the server's.
    Delta,
    /// A full set, as the server chose to send.
    Full,
    /// A delta after which the digests differed, followed by a full sync.
    Mismatch,
}

struct Agent {
    id: SpiffeId,
    selectors: Vec<Selector>,
    /// The agent's copy: entry ID to revision number.
    copy: BTreeMap<String, i64>,
    revision: u64,
}

impl Agent {
    fn new(name: &str, selectors: &[&str]) -> Self {
        Self {
            id: id(&format!("spiffe://td/spire/agent/join_token/{name}")),
            selectors: selectors.iter().map(|text| selector(text)).collect(),
            copy: BTreeMap::new(),
            revision: 0,
        }
    }

    /// Syncs as the agent does: applies the view, checks the digest, and syncs in full after
    /// a mismatch. Returns the outcome of the first response.
    async fn sync(&mut self, cache: &EntryCache, own_ids: &HashSet<String>) -> Outcome {
        let view = cache
            .view_for(&self.id, &self.selectors, self.revision, NOW)
            .await
            .expect("view");
        let delta = !view.full;
        self.apply(&view, own_ids);
        if self.digest() == view.digest {
            self.revision = view.revision;
            return if delta { Outcome::Delta } else { Outcome::Full };
        }
        assert!(delta, "a full view must match its own digest");
        let full = cache
            .view_for(&self.id, &self.selectors, 0, NOW)
            .await
            .expect("view");
        self.apply(&full, own_ids);
        assert_eq!(self.digest(), full.digest);
        self.revision = full.revision;
        Outcome::Mismatch
    }

    fn apply(&mut self, view: &EntriesView, own_ids: &HashSet<String>) {
        if view.full {
            self.copy.clear();
        }
        for removed in &view.removed {
            assert!(
                own_ids.contains(removed),
                "agent {} was told about entry {removed}, which it was never authorized for",
                self.id
            );
            self.copy.remove(removed);
        }
        for indexed in &view.entries {
            self.copy
                .insert(indexed.entry.id.clone(), indexed.entry.revision_number);
        }
    }

    fn digest(&self) -> EntriesDigest {
        self.copy
            .iter()
            .map(|(id, revision)| EntriesDigest::term(id, *revision))
            .collect()
    }

    /// Returns the entries the agent is authorized for, by the reference rule over every
    /// stored entry.
    async fn expected(&self, datastore: &Datastore) -> BTreeMap<String, i64> {
        let all = datastore.list_all_entries().await.expect("list");
        twid_types::authorized_entries(
            &self.id,
            &self.selectors,
            &all,
            &id("spiffe://td/spire/server"),
            NOW,
        )
        .into_iter()
        .map(|entry| (entry.id.clone(), entry.revision_number))
        .collect()
    }
}

/// The test's datastore, on the backend `TWID_TEST_DATASTORE` selects; the directory and
/// the database are removed when they are dropped.
struct Store {
    _dir: tempfile::TempDir,
    _database: TestDatastore,
}

async fn open() -> (Store, Datastore, EntryCache) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = TestDatastore::new(dir.path());
    let datastore = Datastore::open(&database.config)
        .await
        .expect("open datastore");
    let cache = EntryCache::new(datastore.clone(), id("spiffe://td/spire/server"));
    let store = Store {
        _dir: dir,
        _database: database,
    };
    (store, datastore, cache)
}

#[tokio::test]
async fn deltas_keep_every_agent_copy_equal_to_the_reference_rule() {
    let (_dir, datastore, cache) = open().await;
    let mut agents = [
        Agent::new("a", &["group:blue"]),
        Agent::new("b", &["group:blue", "group:red"]),
        Agent::new("c", &[]),
    ];
    // The entries each agent was authorized for at some point: the only ones whose removal a
    // delta may list.
    let mut held: Vec<HashSet<String>> = vec![HashSet::new(); agents.len()];
    let mut created: Vec<String> = Vec::new();
    // A deterministic walk over creates, updates, reparenting, deletes and expiry.
    let mut seed: u64 = 7;
    let mut next = |bound: usize| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        usize::try_from(seed >> 33).unwrap() % bound
    };
    let mut deltas = 0;
    let mut mismatches = 0;
    for step in 0_usize..120 {
        let agent = next(agents.len());
        let parent = agents[agent].id.to_string();
        match next(5) {
            0 | 1 => {
                let entry = new_entry(
                    &format!("spiffe://td/workload/{step}"),
                    &parent,
                    &[&format!("unix:uid:{step}")],
                );
                let stored = datastore.create_entry(&entry, NOW).await.expect("create");
                created.push(stored.id);
            }
            2 if !created.is_empty() => {
                let target = created[next(created.len())].clone();
                let mut entry = new_entry(
                    &format!("spiffe://td/workload/moved-{step}"),
                    &parent,
                    &[&format!("unix:uid:{step}")],
                );
                if next(4) == 0 {
                    entry.expires_at = Some(NOW - 1);
                }
                let _ = datastore.update_entry(&target, &entry, NOW).await;
            }
            3 if !created.is_empty() => {
                let target = created.swap_remove(next(created.len()));
                datastore.delete_entry(&target).await.expect("delete");
            }
            _ => {
                // A nested entry under another workload, reached through it.
                let entry = new_entry(
                    &format!("spiffe://td/nested/{step}"),
                    &format!("spiffe://td/workload/{}", step.saturating_sub(1)),
                    &["unix:uid:0"],
                );
                let stored = datastore.create_entry(&entry, NOW).await.expect("create");
                created.push(stored.id);
            }
        }
        if step == 60 {
            // A node alias for the blue group changes the sets of agents a and b without
            // touching their entries.
            let alias = new_entry(
                "spiffe://td/alias/blue",
                "spiffe://td/spire/server",
                &["group:blue"],
            );
            datastore.create_entry(&alias, NOW).await.expect("alias");
            let under_alias = new_entry(
                "spiffe://td/shared",
                "spiffe://td/alias/blue",
                &["unix:uid:9"],
            );
            datastore
                .create_entry(&under_alias, NOW)
                .await
                .expect("entry under alias");
        }
        let all = datastore.list_all_entries().await.expect("list");
        for (index, agent) in agents.iter().enumerate() {
            let expected = agent.expected(&datastore).await;
            // An expired entry under the agent's own parents is the agent's too.
            let parents: HashSet<&SpiffeId> = all
                .iter()
                .filter(|entry| expected.contains_key(&entry.id))
                .map(|entry| &entry.spiffe_id)
                .chain([&agent.id])
                .collect();
            held[index].extend(
                all.iter()
                    .filter(|entry| parents.contains(&entry.parent_id))
                    .map(|entry| entry.id.clone()),
            );
            held[index].extend(expected.into_keys());
        }
        // Agents sync at different paces, so deltas span one or several changes.
        for (index, agent) in agents.iter_mut().enumerate() {
            if (step + index) % (index + 1) != 0 {
                continue;
            }
            match agent.sync(&cache, &held[index]).await {
                Outcome::Delta => deltas += 1,
                Outcome::Full => {}
                Outcome::Mismatch => mismatches += 1,
            }
            assert_eq!(
                agent.copy,
                agent.expected(&datastore).await,
                "agent {} after step {step}",
                agent.id
            );
        }
    }
    eprintln!("{deltas} deltas, {mismatches} mismatches");
    assert!(deltas > 100, "most syncs must be deltas, got {deltas}");
    // A delta misses only entries that moved because an entry above them changed.
    assert!(
        mismatches * 20 < deltas,
        "{mismatches} deltas left a copy unlike the server's, of {deltas}"
    );
}

#[tokio::test]
async fn alias_change_sends_the_whole_set() {
    let (_dir, datastore, cache) = open().await;
    let mut agent = Agent::new("a", &["group:blue"]);
    let own = new_entry("spiffe://td/own", agent.id.as_str(), &["unix:uid:1"]);
    datastore.create_entry(&own, NOW).await.expect("create");
    assert_eq!(
        agent.sync(&cache, &HashSet::new()).await,
        Outcome::Full,
        "first sync is full"
    );
    let before = agent.revision;

    let alias = new_entry(
        "spiffe://td/alias",
        "spiffe://td/spire/server",
        &["group:blue"],
    );
    datastore.create_entry(&alias, NOW).await.expect("alias");
    let view = cache
        .view_for(&agent.id, &agent.selectors, before, NOW)
        .await
        .expect("view");
    assert!(view.full, "an alias change must not be sent as a delta");
}

#[tokio::test]
async fn unchanged_index_reads_one_row() {
    let (_dir, datastore, cache) = open().await;
    let own = new_entry(
        "spiffe://td/own",
        "spiffe://td/spire/agent/join_token/a",
        &["unix:uid:1"],
    );
    datastore.create_entry(&own, NOW).await.expect("create");
    cache.refresh().await.expect("load");
    let agent = id("spiffe://td/spire/agent/join_token/a");
    let view = cache.view_for(&agent, &[], 0, NOW).await.expect("view");
    let again = cache
        .view_for(&agent, &[], view.revision, NOW)
        .await
        .expect("view");
    assert!(!again.full);
    assert!(again.entries.is_empty());
    assert!(again.removed.is_empty());
    assert_eq!(again.digest, view.digest);
    assert_eq!(again.count, 1);
}

#[tokio::test]
async fn delta_names_no_entry_under_an_alias_the_agent_does_not_match() {
    let (_store, datastore, cache) = open().await;
    let agent = Agent::new("a", &["group:blue"]);
    let alias = new_entry(
        "spiffe://td/alias/red",
        "spiffe://td/spire/server",
        &["group:red"],
    );
    datastore.create_entry(&alias, NOW).await.expect("alias");
    let under = new_entry(
        "spiffe://td/red/workload",
        "spiffe://td/alias/red",
        &["unix:uid:1"],
    );
    let under = datastore.create_entry(&under, NOW).await.expect("entry");
    let first = cache
        .view_for(&agent.id, &agent.selectors, 0, NOW)
        .await
        .expect("view");
    assert_eq!(first.count, 0);

    datastore.delete_entry(&under.id).await.expect("delete");
    let delta = cache
        .view_for(&agent.id, &agent.selectors, first.revision, NOW)
        .await
        .expect("view");
    assert!(!delta.full);
    assert!(
        delta.removed.is_empty(),
        "the agent learned an ID under an alias it does not match: {:?}",
        delta.removed
    );
}

/// Opens an index over one real entry and loads it.
async fn index_with_one_entry() -> (Store, Datastore, EntryCache, RegistrationEntry) {
    let (store, datastore, cache) = open().await;
    let parent = "spiffe://td/spire/agent/join_token/a";
    let real = datastore
        .create_entry(&new_entry("spiffe://td/real", parent, &["unix:uid:1"]), NOW)
        .await
        .expect("create");
    cache.refresh().await.expect("load");
    (store, datastore, cache, real)
}

/// Puts a copy of `real` under another ID into the index, as a read of another history would.
fn plant_copy(state: &mut State, real: &RegistrationEntry) {
    let mut planted = real.clone();
    planted.id = "planted-entry".to_owned();
    planted.spiffe_id = id("spiffe://td/planted");
    state.insert(planted, &id("spiffe://td/spire/server"));
    state.all = None;
}

/// Refreshes the index and returns the IDs of its entries.
async fn ids_after_refresh(cache: &EntryCache) -> Vec<String> {
    cache.refresh().await.expect("refresh");
    let all = cache.all().await.expect("all");
    all.iter().map(|entry| entry.id.clone()).collect()
}

/// An index that got ahead of the primary's change counter read data the primary never had,
/// as from a promoted replica that took writes. The next refresh must replace it with the
/// primary's entries instead of waiting for the primary to reach that revision.
#[tokio::test]
async fn index_ahead_of_primary_reloads() {
    let (_dir, datastore, cache, real) = index_with_one_entry().await;
    let primary_revision = datastore.current_revision().await.expect("revision");
    {
        let mut state = cache.write();
        plant_copy(&mut state, &real);
        state.revision = Some(primary_revision + 100);
    }

    let ids = ids_after_refresh(&cache).await;
    assert_eq!(ids, vec![real.id.clone()], "the planted entry must be gone");
    assert_eq!(cache.read().revision, Some(primary_revision));
}

/// The primary reached the index's revision again after losing writes (a failover to a
/// standby that had not received them), so the same revision carries another token. The next
/// refresh must replace the index instead of reading the changes after that revision.
#[tokio::test]
async fn index_with_lost_history_reloads() {
    let (_dir, datastore, cache, real) = index_with_one_entry().await;
    let revision = datastore.current_revision().await.expect("revision");
    let (_, token) = datastore
        .current_revision_and_token_of(revision)
        .await
        .expect("token");
    assert_eq!(
        cache.read().token,
        token,
        "the index keeps its revision's token"
    );
    {
        let mut state = cache.write();
        plant_copy(&mut state, &real);
        state.token = token.map(|token| token.wrapping_add(1));
    }

    let ids = ids_after_refresh(&cache).await;
    assert_eq!(ids, vec![real.id.clone()], "the planted entry must be gone");
    assert_eq!(cache.read().token, token);
}
