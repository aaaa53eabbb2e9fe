//! Sync hints: how the server notifies agents holding a `Watch` stream that something they
//! depend on changed, so that they sync now instead of at their next interval.
//!
//! A hint carries no data, only a revision that grows with every change. The agent calls `Sync`
//! in response, which returns the current state. A watch channel keeps only the latest value, so
//! an agent that falls behind receives one hint for several changes and never a queue.
//!
//! On PostgreSQL several servers may share the database, so each server also turns the
//! datastore's change notifications into hints ([`follow_datastore_changes`]). A change that
//! this server already sends a hint for then sends two, its own and the notification's, which
//! costs each watching agent at most one extra sync.
//!
//! A change to registration entries reaches only the agents whose authorized entries it changed:
//! each Watch stream compares its agent's entries digest before and after (see
//! [`crate::entries::EntryCache::authorized_digest`]). Every other change reaches every agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use twid_datastore::{ChangeEvent, ChangeKind, ChangeListener};
use twid_spiffe::SpiffeId;

/// Maximum number of Watch streams one agent may have open at a time, over all its connections.
/// An agent needs one, and the others leave room for a stream that outlives its connection for
/// a moment while the agent reconnects.
pub(crate) const MAX_WATCH_STREAMS_PER_AGENT: usize = 4;

/// The hint reason of a change to registration entries only.
pub(crate) const ENTRY_REASON: &str = "entry";

/// The latest change, as watchers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    /// Grows by one with every [`Hints::notify`].
    pub(crate) revision: u64,
    /// The kind of change, for the agent's log.
    pub(crate) reason: &'static str,
    /// The revision of the latest change that was not only to registration entries. A Watch
    /// stream that has seen this revision may skip a later entry change that leaves its
    /// agent's authorized entries as they were.
    pub(crate) broadcast_revision: u64,
}

/// The sender side, shared by everything that changes agent-visible state.
pub(crate) struct Hints {
    sender: watch::Sender<Change>,
    /// Open Watch streams per agent SPIFFE ID.
    streams: Arc<Mutex<HashMap<SpiffeId, usize>>>,
    /// The signed revocation list, which every revocation makes stale like a hint. It lives
    /// here because `Hints` is the change notifier that every part of the server reaches.
    pub(crate) revocation_list: crate::revocation::ListCache,
}

impl Hints {
    pub(crate) fn new() -> Self {
        let (sender, _) = watch::channel(Change {
            revision: 0,
            reason: "connected",
            broadcast_revision: 0,
        });
        Self {
            sender,
            streams: Arc::new(Mutex::new(HashMap::new())),
            revocation_list: crate::revocation::ListCache::new(),
        }
    }

    /// Reserves one of the agent's [`MAX_WATCH_STREAMS_PER_AGENT`] Watch streams until the
    /// returned slot is dropped.
    ///
    /// # Errors
    /// Returns the number of streams the agent has open when all are taken.
    pub(crate) fn open_stream(&self, agent_id: &SpiffeId) -> Result<StreamSlot, usize> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let open = streams.entry(agent_id.clone()).or_insert(0);
        if *open >= MAX_WATCH_STREAMS_PER_AGENT {
            return Err(*open);
        }
        *open += 1;
        Ok(StreamSlot {
            agent_id: agent_id.clone(),
            streams: Arc::clone(&self.streams),
        })
    }

    /// Returns the number of Watch streams the agent has open.
    #[cfg(test)]
    pub(crate) fn open_streams(&self, agent_id: &SpiffeId) -> usize {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.get(agent_id).copied().unwrap_or(0)
    }

    /// Records a change and wakes every watcher. `reason` is `"entry"` for a change to
    /// registration entries only, which each Watch stream forwards only when its agent's
    /// authorized entries changed.
    pub(crate) fn notify(&self, reason: &'static str) {
        self.sender.send_modify(|change| {
            change.revision += 1;
            change.reason = reason;
            if reason != ENTRY_REASON {
                change.broadcast_revision = change.revision;
            }
        });
    }

    /// Returns a receiver that is notified of every later change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Change> {
        self.sender.subscribe()
    }

    /// Wakes every watcher for a change that the datastore reported, made through this server
    /// or another one. A revocation, an unknown change and a resync also make the signed
    /// revocation list stale, because each may have stored revoked credentials.
    ///
    /// `Sync` returns this server's bundle (`Shared::bundle`), the union of every replica's
    /// authorities, which [`follow_datastore_changes`] reloads before this wakes the agents.
    pub(crate) fn notify_datastore_change(&self, event: ChangeEvent) {
        let reason = match event {
            ChangeEvent::Changed(kind) => kind.as_str(),
            ChangeEvent::Unknown => "change",
            ChangeEvent::Resync => "resync",
        };
        if !matches!(
            event,
            ChangeEvent::Changed(
                ChangeKind::Entry
                    | ChangeKind::Agent
                    | ChangeKind::Bundle
                    | ChangeKind::Policy
                    | ChangeKind::Authorities
            )
        ) {
            self.revocation_list.invalidate();
        }
        self.notify(reason);
    }
}

/// Turns every change notification of the datastore into a hint until `shutdown`. The
/// listener reconnects by itself after a lost connection and then reports a resync. A change
/// of another replica's authorities, an unknown change and a resync first reload the other
/// replicas' authorities, so that the bundle and the TLS trust include them.
pub(crate) async fn follow_datastore_changes(
    shared: Arc<crate::Shared>,
    mut listener: ChangeListener,
    shutdown: CancellationToken,
) {
    tracing::info!("following the datastore's change notifications");
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = listener.recv() => event,
        };
        tracing::debug!(?event, "datastore change notification");
        if matches!(
            event,
            ChangeEvent::Changed(ChangeKind::Authorities)
                | ChangeEvent::Unknown
                | ChangeEvent::Resync
        ) && let Err(error) = crate::tasks::reload_peer_authorities(&shared).await
        {
            tracing::error!(
                error = %crate::tasks::error_chain(&error),
                "reloading other replicas' authorities failed; the rotation task retries"
            );
        }
        shared.hints.notify_datastore_change(event);
    }
}

/// One open Watch stream of an agent, released on drop.
pub(crate) struct StreamSlot {
    agent_id: SpiffeId,
    streams: Arc<Mutex<HashMap<SpiffeId, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = streams.get_mut(&self.agent_id) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.agent_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_see_the_latest_revision_only() {
        let hints = Hints::new();
        let mut receiver = hints.subscribe();
        hints.notify("entry");
        hints.notify("revocation");
        receiver.changed().await.unwrap();
        let change = *receiver.borrow_and_update();
        assert_eq!(change.revision, 2);
        assert_eq!(change.reason, "revocation");
        assert!(!receiver.has_changed().unwrap());
    }

    #[tokio::test]
    async fn datastore_changes_wake_watchers() {
        let hints = Hints::new();
        let mut receiver = hints.subscribe();
        let cases = [
            (ChangeEvent::Changed(ChangeKind::Entry), "entry", false),
            (ChangeEvent::Changed(ChangeKind::Agent), "agent", false),
            (ChangeEvent::Changed(ChangeKind::Bundle), "bundle", false),
            (ChangeEvent::Changed(ChangeKind::Policy), "policy", false),
            (
                ChangeEvent::Changed(ChangeKind::Authorities),
                "authorities",
                false,
            ),
            (
                ChangeEvent::Changed(ChangeKind::Revocation),
                "revocation",
                true,
            ),
            (ChangeEvent::Unknown, "change", true),
            (ChangeEvent::Resync, "resync", true),
        ];
        for (revision, (event, reason, invalidates)) in (1..).zip(cases) {
            let generation = hints.revocation_list.generation();
            hints.notify_datastore_change(event);
            assert!(receiver.has_changed().unwrap(), "{event:?} woke no watcher");
            let change = *receiver.borrow_and_update();
            assert_eq!(change.revision, revision, "{event:?}");
            assert_eq!(change.reason, reason, "{event:?}");
            assert_eq!(
                hints.revocation_list.generation() != generation,
                invalidates,
                "{event:?} revocation list invalidation"
            );
        }
    }

    #[test]
    fn stream_slots_capped_per_agent() {
        let hints = Hints::new();
        let agent = SpiffeId::new("spiffe://example.org/spire/agent/join_token/a").unwrap();
        let other = SpiffeId::new("spiffe://example.org/spire/agent/join_token/b").unwrap();
        let mut slots: Vec<StreamSlot> = (0..MAX_WATCH_STREAMS_PER_AGENT)
            .map(|_| hints.open_stream(&agent).expect("a free slot"))
            .collect();
        assert_eq!(
            hints.open_stream(&agent).err(),
            Some(MAX_WATCH_STREAMS_PER_AGENT)
        );
        let other_slot = hints
            .open_stream(&other)
            .expect("other agents are not limited");

        slots.pop();
        assert_eq!(hints.open_streams(&agent), MAX_WATCH_STREAMS_PER_AGENT - 1);
        let reopened = hints.open_stream(&agent).expect("a released slot");

        drop(reopened);
        drop(slots);
        assert_eq!(hints.open_streams(&agent), 0);
        assert_eq!(hints.open_streams(&other), 1);
        drop(other_slot);
        assert_eq!(hints.open_streams(&other), 0);
    }
}
