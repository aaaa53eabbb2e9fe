//! Sync hints: how the server tells agents holding a `Watch` stream that something they depend
//! on changed, so that they sync now instead of at their next interval.
//!
//! A hint carries no data, only a revision that grows with every change; the agent answers it
//! with `Sync`, which returns the current state. A watch channel keeps only the latest value, so
//! an agent that falls behind sees one hint for several changes and never a queue.
//!
//! Limit: every change wakes every connected agent, and each then syncs in full. Hints that name
//! the affected agents, and syncs that carry only what changed, are needed for large fleets.

use tokio::sync::watch;

/// The latest change, as watchers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    /// Grows by one with every [`Hints::notify`].
    pub(crate) revision: u64,
    /// What changed, for the agent's log.
    pub(crate) reason: &'static str,
}

/// The sender side, shared by everything that changes agent-visible state.
#[derive(Debug)]
pub(crate) struct Hints {
    sender: watch::Sender<Change>,
}

impl Hints {
    pub(crate) fn new() -> Self {
        let (sender, _) = watch::channel(Change {
            revision: 0,
            reason: "connected",
        });
        Self { sender }
    }

    /// Records a change and wakes every watcher.
    pub(crate) fn notify(&self, reason: &'static str) {
        self.sender.send_modify(|change| {
            change.revision += 1;
            change.reason = reason;
        });
    }

    /// Returns a receiver that sees every later change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Change> {
        self.sender.subscribe()
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
}
