//! A bounded in-memory cache of proof IDs (`jti`) seen while the proofs were still valid.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use aws_lc_rs::digest::{Context, SHA256};

use crate::WimseError;

/// The number of unexpired proofs [`ReplayCache::default`] remembers.
///
/// Each entry takes an estimated 100 bytes, because its 32-byte key is stored in both a
/// hash map and an ordered set. So a full default cache uses roughly 10 MB (an estimate,
/// not a measurement).
pub const DEFAULT_REPLAY_CACHE_CAPACITY: usize = 100_000;

/// Remembers each accepted proof until it expires, to reject a second use.
///
/// Entries are keyed by the SHA-256 of the sender and `jti`, so memory per entry does not
/// depend on the length of the `jti`. An entry is dropped once its expiry has passed.
/// When the cache contains `capacity` unexpired entries, new proofs are rejected with
/// [`WimseError::ReplayCacheFull`] rather than forgetting a proof that could still be
/// replayed.
///
/// NOTE: The cache is local to one process. Replicas behind a load balancer each keep
/// their own, so a proof replayed to another replica is not detected.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    expiry_by_key: HashMap<[u8; 32], i64>,
    /// The same entries ordered by expiry, so expired ones are removed from the front.
    by_expiry: BTreeSet<(i64, [u8; 32])>,
}

impl ReplayCache {
    /// Creates a cache that remembers at most `capacity` unexpired proofs.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::new(CacheState::default()),
        }
    }

    /// Returns the maximum number of unexpired entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Returns the number of entries, including expired ones not yet removed.
    pub fn len(&self) -> usize {
        self.lock().expiry_by_key.len()
    }

    /// Returns whether the cache has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `jti` from `sender` until `expires_at` (Unix seconds), after removing
    /// entries that expired by `now`.
    ///
    /// # Errors
    /// Returns [`WimseError::ReplayedProof`] when the pair is already recorded and
    /// unexpired, and [`WimseError::ReplayCacheFull`] when `capacity` unexpired entries are
    /// recorded.
    pub fn insert_unseen(
        &self,
        sender: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), WimseError> {
        let key = entry_key(sender, jti);
        let mut state = self.lock();
        state.remove_expired(now);
        if state.expiry_by_key.contains_key(&key) {
            return Err(WimseError::ReplayedProof(jti.to_owned()));
        }
        if state.expiry_by_key.len() >= self.capacity {
            return Err(WimseError::ReplayCacheFull(self.capacity));
        }
        state.expiry_by_key.insert(key, expires_at);
        state.by_expiry.insert((expires_at, key));
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // The map and set operations do not panic short of allocation failure, which
        // aborts, so a poisoned lock still guards consistent state.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_CACHE_CAPACITY)
    }
}

impl CacheState {
    fn remove_expired(&mut self, now: i64) {
        while let Some(&(expiry, key)) = self.by_expiry.first() {
            if expiry > now {
                break;
            }
            self.by_expiry.pop_first();
            self.expiry_by_key.remove(&key);
        }
    }
}

/// Hashes the sender and `jti` with a length prefix, so that distinct pairs never share a
/// byte string.
fn entry_key(sender: &str, jti: &str) -> [u8; 32] {
    let mut context = Context::new(&SHA256);
    context.update(&(sender.len() as u64).to_be_bytes());
    context.update(sender.as_bytes());
    context.update(jti.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_use_is_rejected() {
        let cache = ReplayCache::new(10);
        assert_eq!(cache.insert_unseen("spiffe://a/b", "j1", 100, 0), Ok(()));
        assert_eq!(
            cache.insert_unseen("spiffe://a/b", "j1", 100, 50),
            Err(WimseError::ReplayedProof("j1".into()))
        );
        assert_eq!(cache.insert_unseen("spiffe://a/c", "j1", 100, 50), Ok(()));
    }

    #[test]
    fn entries_expire_at_their_expiry() {
        let cache = ReplayCache::new(10);
        cache.insert_unseen("s", "j1", 100, 0).unwrap();
        assert_eq!(cache.insert_unseen("s", "j1", 200, 100), Ok(()));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn full_cache_rejects_new_entries() {
        let cache = ReplayCache::new(2);
        cache.insert_unseen("s", "j1", 100, 0).unwrap();
        cache.insert_unseen("s", "j2", 200, 0).unwrap();
        assert_eq!(
            cache.insert_unseen("s", "j3", 100, 0),
            Err(WimseError::ReplayCacheFull(2))
        );
        // Once the first entry expires there is room again.
        assert_eq!(cache.insert_unseen("s", "j3", 300, 100), Ok(()));
    }
}
