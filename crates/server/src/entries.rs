//! An in-memory copy of every registration entry, reloaded only when the datastore's revision
//! counter moves, and the per-agent authorization computed from it.

use std::sync::Arc;

use tokio::sync::Mutex;
use twid_datastore::Datastore;
use twid_spiffe::SpiffeId;
use twid_types::{RegistrationEntry, Selector};

use crate::ServerError;

struct Snapshot {
    revision: u64,
    entries: Arc<Vec<RegistrationEntry>>,
}

/// Every registration entry, kept in memory so that a sync costs one revision query while
/// nothing changes.
pub(crate) struct EntryCache {
    datastore: Datastore,
    server_id: SpiffeId,
    snapshot: Mutex<Option<Snapshot>>,
}

impl EntryCache {
    pub(crate) fn new(datastore: Datastore, server_id: SpiffeId) -> Self {
        Self {
            datastore,
            server_id,
            snapshot: Mutex::new(None),
        }
    }

    /// Returns all entries as of the datastore's current revision.
    pub(crate) async fn all(&self) -> Result<Arc<Vec<RegistrationEntry>>, ServerError> {
        let revision = self.datastore.current_revision().await?;
        let mut snapshot = self.snapshot.lock().await;
        if let Some(current) = snapshot.as_ref().filter(|s| s.revision == revision) {
            return Ok(Arc::clone(&current.entries));
        }
        let entries = Arc::new(self.datastore.list_all_entries().await?);
        *snapshot = Some(Snapshot {
            revision,
            entries: Arc::clone(&entries),
        });
        Ok(entries)
    }

    /// Returns the entries the agent may obtain SVIDs for: those parented to it, directly or
    /// through alias entries, and not expired at `now`.
    pub(crate) async fn authorized_for(
        &self,
        agent_id: &SpiffeId,
        agent_selectors: &[Selector],
        now: i64,
    ) -> Result<Vec<RegistrationEntry>, ServerError> {
        let entries = self.all().await?;
        let authorized = twid_types::authorized_entries(
            agent_id,
            agent_selectors,
            &entries,
            &self.server_id,
            now,
        );
        Ok(authorized.into_iter().cloned().collect())
    }
}
