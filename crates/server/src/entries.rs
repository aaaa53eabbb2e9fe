//! An in-memory index of every registration entry, kept current from the datastore's
//! `entry_changes` feed, and the per-agent views that Sync sends from it.
//!
//! The index reads every entry once, at the first use, and afterwards only the entries written
//! since the revision it reflects. It groups entries by parent ID, so authorizing an agent costs
//! time in the number of entries it is authorized for, not in the number of entries stored. It
//! also remembers which entries changed at which revision since it started (up to
//! [`MAX_CHANGE_LOG`] of them), which lets Sync send an agent only what changed since the
//! revision of the agent's copy.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::Mutex;
use twid_datastore::{Datastore, EntrySnapshot};
use twid_proto::types as pb;
use twid_spiffe::{SpiffeId, TrustDomain};
use twid_types::{EntriesDigest, RegistrationEntry, Selector};

use crate::ServerError;
use crate::convert::entry_to_pb;

/// Maximum entry changes the index remembers. An agent whose copy is older than the oldest
/// remembered change receives every entry.
const MAX_CHANGE_LOG: usize = 200_000;

/// One entry as the index keeps it.
#[derive(Debug)]
pub(crate) struct IndexedEntry {
    pub(crate) entry: RegistrationEntry,
    /// The entry as Sync sends it, converted once.
    pub(crate) pb: pb::Entry,
    /// The entry's term of [`EntriesDigest`].
    term: u128,
    /// Whether the entry has a hardware evidence selector, which only direct workload
    /// attestation may match.
    evidence: bool,
}

impl IndexedEntry {
    fn new(entry: RegistrationEntry) -> Self {
        Self {
            pb: entry_to_pb(&entry),
            term: EntriesDigest::term(&entry.id, entry.revision_number),
            evidence: twid_types::has_evidence_selector(&entry.selectors),
            entry,
        }
    }
}

/// One entry write that the index applied.
#[derive(Debug)]
struct Change {
    id: String,
    /// The entry's parent before the write, when the index held it. An agent may hold the
    /// entry only if that parent or the current one is among its authorized parents.
    old_parent: Option<SpiffeId>,
}

#[derive(Default)]
struct State {
    /// The datastore revision the index reflects; `None` before the first load.
    revision: Option<u64>,
    /// The change token of `revision`, or `None` when it has none.
    token: Option<i64>,
    /// The oldest revision from which [`State::changes`] is complete.
    horizon: u64,
    /// The highest hint revision that a refresh has covered, see [`EntryCache::refresh_for_hint`].
    hint_seen: u64,
    entries: HashMap<String, Arc<IndexedEntry>>,
    /// Entry IDs by parent ID, including expired entries and entries with evidence selectors,
    /// which authorization skips.
    by_parent: HashMap<SpiffeId, HashSet<String>>,
    /// IDs of node alias entries: those whose parent is the server.
    aliases: HashSet<String>,
    /// The entries written at each revision after `horizon`.
    changes: BTreeMap<u64, Vec<Change>>,
    change_count: usize,
    /// Revisions after `horizon` that wrote a node alias entry, which may change any agent's
    /// authorized set without changing its entries.
    alias_changes: BTreeSet<u64>,
    /// Every entry as one list, built on demand and dropped at each change.
    all: Option<Arc<Vec<RegistrationEntry>>>,
}

impl State {
    fn insert(&mut self, entry: RegistrationEntry, server_id: &SpiffeId) {
        let indexed = Arc::new(IndexedEntry::new(entry));
        let id = indexed.entry.id.clone();
        self.by_parent
            .entry(indexed.entry.parent_id.clone())
            .or_default()
            .insert(id.clone());
        if &indexed.entry.parent_id == server_id {
            self.aliases.insert(id.clone());
        }
        self.entries.insert(id, indexed);
    }

    /// Removes entry `id` and returns it.
    fn remove(&mut self, id: &str) -> Option<Arc<IndexedEntry>> {
        let old = self.entries.remove(id)?;
        if let Some(children) = self.by_parent.get_mut(&old.entry.parent_id) {
            children.remove(id);
            if children.is_empty() {
                self.by_parent.remove(&old.entry.parent_id);
            }
        }
        self.aliases.remove(id);
        Some(old)
    }

    /// Forgets the oldest changes beyond [`MAX_CHANGE_LOG`] and moves the horizon past them.
    fn trim_changes(&mut self) {
        while self.change_count > MAX_CHANGE_LOG {
            let Some((revision, ids)) = self.changes.pop_first() else {
                break;
            };
            self.change_count -= ids.len();
            self.horizon = revision;
        }
        let horizon = self.horizon;
        self.alias_changes.retain(|&revision| revision > horizon);
    }

    /// Returns the entries `agent_id` is authorized for at `now`, by the rule of
    /// [`twid_types::authorized_entries`], ordered by creation time and then ID.
    fn authorized(
        &self,
        agent_id: &SpiffeId,
        agent_selectors: &[Selector],
        server_id: &SpiffeId,
        now: i64,
    ) -> Vec<&Arc<IndexedEntry>> {
        let mut pending: Vec<&SpiffeId> = vec![agent_id];
        let mut alias_ids: Vec<&Arc<IndexedEntry>> = self
            .aliases
            .iter()
            .filter_map(|id| self.entries.get(id))
            .filter(|alias| !alias.entry.is_expired(now))
            .filter(|alias| &alias.entry.parent_id == server_id)
            .filter(|alias| twid_types::selectors_match(&alias.entry.selectors, agent_selectors))
            .collect();
        alias_ids.sort_by(|a, b| order(a).cmp(&order(b)));
        pending.extend(alias_ids.iter().map(|alias| &alias.entry.spiffe_id));

        // `visited` contains every ID already expanded, so a cycle of parents ends the walk.
        let mut visited: HashSet<&SpiffeId> = HashSet::new();
        let mut found: Vec<&Arc<IndexedEntry>> = Vec::new();
        while let Some(parent) = pending.pop() {
            if !visited.insert(parent) {
                continue;
            }
            let Some(children) = self.by_parent.get(parent) else {
                continue;
            };
            for child in children {
                let Some(indexed) = self.entries.get(child) else {
                    continue;
                };
                if indexed.evidence || indexed.entry.is_expired(now) {
                    continue;
                }
                found.push(indexed);
                pending.push(&indexed.entry.spiffe_id);
            }
        }
        found.sort_by(|a, b| order(a).cmp(&order(b)));
        found
    }
}

fn order(indexed: &IndexedEntry) -> (i64, &str) {
    (indexed.entry.created_at, indexed.entry.id.as_str())
}

/// The entries part of one agent's Sync stream.
#[derive(Debug)]
pub(crate) struct EntriesView {
    /// Whether `entries` is the whole authorized set rather than the changes.
    pub(crate) full: bool,
    pub(crate) entries: Vec<Arc<IndexedEntry>>,
    pub(crate) removed: Vec<String>,
    pub(crate) revision: u64,
    pub(crate) digest: EntriesDigest,
    pub(crate) count: usize,
    /// The trust domains that the authorized entries federate with.
    pub(crate) federates_with: BTreeSet<TrustDomain>,
}

/// Every registration entry, indexed in memory and refreshed from the datastore's change feed.
pub(crate) struct EntryCache {
    datastore: Datastore,
    server_id: SpiffeId,
    state: RwLock<State>,
    /// Held while refreshing, so concurrent callers read the datastore once.
    refreshing: Mutex<()>,
}

impl EntryCache {
    pub(crate) fn new(datastore: Datastore, server_id: SpiffeId) -> Self {
        Self {
            datastore,
            server_id,
            state: RwLock::new(State::default()),
            refreshing: Mutex::new(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Brings the index up to the datastore's current revision: one query while nothing
    /// changed, the changed entries otherwise, and every entry at the first call or when the
    /// change rows the index needs were pruned.
    pub(crate) async fn refresh(&self) -> Result<(), ServerError> {
        let _refreshing = self.refreshing.lock().await;
        self.refresh_locked().await
    }

    /// Refreshes unless a refresh already covered hint `revision`, so that the Watch streams of
    /// many agents woken by one hint query the datastore once between them.
    pub(crate) async fn refresh_for_hint(&self, revision: u64) -> Result<(), ServerError> {
        if self.read().hint_seen >= revision {
            return Ok(());
        }
        let _refreshing = self.refreshing.lock().await;
        if self.read().hint_seen >= revision {
            return Ok(());
        }
        self.refresh_locked().await?;
        let mut state = self.write();
        state.hint_seen = state.hint_seen.max(revision);
        Ok(())
    }

    async fn refresh_locked(&self) -> Result<(), ServerError> {
        let known = self.read().revision;
        let Some(known) = known else {
            return self.load_all().await;
        };
        // The counter comes from the primary, so that a read-only replica serves the change
        // read only once it has replayed every write made so far, this server's included.
        let (current, known_token) = self.datastore.current_revision_and_token_of(known).await?;
        let index_token = self.read().token;
        if let Some(index_token) = index_token
            && known_token != Some(index_token)
        {
            // The primary's history at the index's revision is not the one the index read:
            // the database lost writes, as in a failover to a standby that had not received
            // them, and then reached that revision again. Changes after it would not show
            // what was lost.
            tracing::error!(
                index_revision = known,
                primary_revision = current,
                "the primary's history differs from the entry index's at the index's \
                 revision; reading every entry from the primary"
            );
            return self.load_all_from_primary().await;
        }
        if current == known {
            return Ok(());
        }
        if current < known {
            // The primary's counter never goes back, so the index read data the primary
            // never had: a read-only replica that was promoted and took writes, or an address
            // that reached another database. Nothing read so far can be trusted.
            tracing::error!(
                index_revision = known,
                primary_revision = current,
                "the entry index is ahead of the primary; reading every entry from the primary"
            );
            return self.load_all_from_primary().await;
        }
        let Some(changes) = self.datastore.entry_changes_since(known, current).await? else {
            tracing::info!(
                revision = known,
                "the entry changes since the index's revision were pruned; reading every entry"
            );
            return self.load_all().await;
        };
        let mut state = self.write();
        let mut latest: HashMap<&str, u64> = HashMap::new();
        for (revision, id) in &changes.changed {
            latest.insert(id.as_str(), *revision);
        }
        let mut old_parents: HashMap<&str, SpiffeId> = HashMap::new();
        for (&id, &revision) in &latest {
            if let Some(old) = state.remove(id) {
                if old.entry.parent_id == self.server_id {
                    state.alias_changes.insert(revision);
                }
                old_parents.insert(id, old.entry.parent_id.clone());
            }
        }
        for entry in changes.entries {
            let revision = latest
                .get(entry.id.as_str())
                .copied()
                .unwrap_or(changes.revision);
            if entry.parent_id == self.server_id {
                state.alias_changes.insert(revision);
            }
            state.insert(entry, &self.server_id);
        }
        for (revision, id) in &changes.changed {
            let old_parent = old_parents.get(id.as_str()).cloned();
            let change = Change {
                id: id.clone(),
                old_parent,
            };
            state.changes.entry(*revision).or_default().push(change);
            state.change_count += 1;
        }
        state.trim_changes();
        if changes.revision != known {
            state.token = changes.token;
        }
        state.revision = Some(changes.revision);
        state.all = None;
        tracing::debug!(
            revision = changes.revision,
            changed = latest.len(),
            entries = state.entries.len(),
            "entry index updated"
        );
        Ok(())
    }

    async fn load_all(&self) -> Result<(), ServerError> {
        let current = self.datastore.current_revision().await?;
        let loaded = self.datastore.entries_at_revision(current).await?;
        self.replace_all(loaded);
        Ok(())
    }

    async fn load_all_from_primary(&self) -> Result<(), ServerError> {
        let loaded = self.datastore.entries_at_revision_on_primary().await?;
        self.replace_all(loaded);
        Ok(())
    }

    /// Replaces the index with the entries of `snapshot`.
    fn replace_all(&self, snapshot: EntrySnapshot) {
        let revision = snapshot.revision;
        let mut fresh = State {
            revision: Some(revision),
            token: snapshot.token,
            horizon: revision,
            hint_seen: self.read().hint_seen,
            ..State::default()
        };
        for entry in snapshot.entries {
            fresh.insert(entry, &self.server_id);
        }
        tracing::info!(
            revision,
            entries = fresh.entries.len(),
            "entry index loaded"
        );
        *self.write() = fresh;
    }

    /// Returns all entries as of the datastore's current revision, oldest first.
    pub(crate) async fn all(&self) -> Result<Arc<Vec<RegistrationEntry>>, ServerError> {
        self.refresh().await?;
        if let Some(all) = self.read().all.as_ref() {
            return Ok(Arc::clone(all));
        }
        let mut state = self.write();
        let mut entries: Vec<&Arc<IndexedEntry>> = state.entries.values().collect();
        entries.sort_by(|a, b| order(a).cmp(&order(b)));
        let all = Arc::new(
            entries
                .iter()
                .map(|indexed| indexed.entry.clone())
                .collect(),
        );
        state.all = Some(Arc::clone(&all));
        Ok(all)
    }

    /// Returns the entries the agent may obtain SVIDs for: those parented to it, directly or
    /// through alias entries, and not expired at `now`.
    pub(crate) async fn authorized_for(
        &self,
        agent_id: &SpiffeId,
        agent_selectors: &[Selector],
        now: i64,
    ) -> Result<Vec<RegistrationEntry>, ServerError> {
        self.refresh().await?;
        let state = self.read();
        Ok(state
            .authorized(agent_id, agent_selectors, &self.server_id, now)
            .into_iter()
            .map(|indexed| indexed.entry.clone())
            .collect())
    }

    /// Returns, of the entries named by `ids`, those the agent is authorized for, keyed by ID.
    pub(crate) async fn authorized_among(
        &self,
        agent_id: &SpiffeId,
        agent_selectors: &[Selector],
        ids: &[&str],
        now: i64,
    ) -> Result<HashMap<String, RegistrationEntry>, ServerError> {
        self.refresh().await?;
        let wanted: HashSet<&str> = ids.iter().copied().collect();
        let state = self.read();
        Ok(state
            .authorized(agent_id, agent_selectors, &self.server_id, now)
            .into_iter()
            .filter(|indexed| wanted.contains(indexed.entry.id.as_str()))
            .map(|indexed| (indexed.entry.id.clone(), indexed.entry.clone()))
            .collect())
    }

    /// Returns the digest of the agent's authorized set without reading the datastore; call
    /// [`EntryCache::refresh_for_hint`] first.
    pub(crate) fn authorized_digest(
        &self,
        agent_id: &SpiffeId,
        agent_selectors: &[Selector],
        now: i64,
    ) -> EntriesDigest {
        let state = self.read();
        state
            .authorized(agent_id, agent_selectors, &self.server_id, now)
            .into_iter()
            .map(|indexed| indexed.term)
            .collect()
    }

    /// Returns what Sync sends the agent about entries, given the revision of the agent's
    /// copy (0 for none). The view is a delta when the index remembers every change since
    /// `known` and no node alias entry changed in that time; otherwise it is the whole set.
    pub(crate) async fn view_for(
        &self,
        agent_id: &SpiffeId,
        agent_selectors: &[Selector],
        known: u64,
        now: i64,
    ) -> Result<EntriesView, ServerError> {
        self.refresh().await?;
        let state = self.read();
        let revision = state.revision.unwrap_or_default();
        let authorized = state.authorized(agent_id, agent_selectors, &self.server_id, now);
        let digest: EntriesDigest = authorized.iter().map(|indexed| indexed.term).collect();
        let count = authorized.len();
        let federates_with: BTreeSet<TrustDomain> = authorized
            .iter()
            .flat_map(|indexed| indexed.entry.federates_with.iter().cloned())
            .collect();
        let delta_possible = known != 0
            && known >= state.horizon
            && known <= revision
            && state.alias_changes.range(known + 1..).next().is_none();
        if !delta_possible {
            return Ok(EntriesView {
                full: true,
                entries: authorized.into_iter().map(Arc::clone).collect(),
                removed: Vec::new(),
                revision,
                digest,
                count,
                federates_with,
            });
        }
        let by_id: HashMap<&str, &Arc<IndexedEntry>> = authorized
            .iter()
            .map(|indexed| (indexed.entry.id.as_str(), *indexed))
            .collect();
        // The parents under which the agent may hold an entry. A changed entry that is not
        // authorized now is removed only if it was or is under one of them, so the agent never
        // learns the IDs of other agents' entries.
        let mut parents: HashSet<&SpiffeId> = HashSet::from([agent_id]);
        // Only the aliases the agent belongs to: a delta does not change alias membership,
        // because an alias change sends the whole set.
        parents.extend(
            state
                .aliases
                .iter()
                .filter_map(|id| state.entries.get(id))
                .filter(|alias| {
                    twid_types::selectors_match(&alias.entry.selectors, agent_selectors)
                })
                .map(|alias| &alias.entry.spiffe_id),
        );
        parents.extend(authorized.iter().map(|indexed| &indexed.entry.spiffe_id));
        let mut touched: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut held_before: HashSet<&str> = HashSet::new();
        for change in state
            .changes
            .range(known + 1..)
            .flat_map(|(_, changes)| changes)
        {
            if seen.insert(change.id.as_str()) {
                touched.push(change.id.as_str());
            }
            if change
                .old_parent
                .as_ref()
                .is_some_and(|parent| parents.contains(parent))
            {
                held_before.insert(change.id.as_str());
            }
        }
        let mut entries = Vec::new();
        let mut removed = Vec::new();
        for id in touched {
            if let Some(indexed) = by_id.get(id) {
                entries.push(Arc::clone(indexed));
                continue;
            }
            let held_now = state
                .entries
                .get(id)
                .is_some_and(|indexed| parents.contains(&indexed.entry.parent_id));
            if held_now || held_before.contains(id) {
                removed.push(id.to_owned());
            }
        }
        Ok(EntriesView {
            full: false,
            entries,
            removed,
            revision,
            digest,
            count,
            federates_with,
        })
    }
}

#[cfg(test)]
mod tests;
