//! A digest of an agent's authorized entry set that server and agent compute independently, so
//! that an agent which applied a partial Sync can tell whether its copy matches the server's.
//!
//! The digest is the sum modulo 2^128 of one term per entry. A sum does not depend on order and
//! lets either side add or remove one entry without touching the others. It detects accidental
//! divergence, not tampering: the Sync stream itself is authenticated by mutual TLS.

use aws_lc_rs::digest::{SHA256, digest};

/// The order-independent digest of a set of `(entry ID, revision number)` pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EntriesDigest(u128);

impl EntriesDigest {
    /// Returns the term one entry contributes: the first 16 bytes, read little-endian, of
    /// SHA-256 over the ID, a zero byte and the revision number in decimal.
    pub fn term(entry_id: &str, revision_number: i64) -> u128 {
        let mut input = Vec::with_capacity(entry_id.len() + 21);
        input.extend_from_slice(entry_id.as_bytes());
        input.push(0);
        input.extend_from_slice(revision_number.to_string().as_bytes());
        let hash = digest(&SHA256, &input);
        let mut first = [0_u8; 16];
        first.copy_from_slice(&hash.as_ref()[..16]);
        u128::from_le_bytes(first)
    }

    /// Adds a term computed by [`EntriesDigest::term`].
    pub fn add(&mut self, term: u128) {
        self.0 = self.0.wrapping_add(term);
    }

    /// Removes a term that was added before.
    pub fn remove(&mut self, term: u128) {
        self.0 = self.0.wrapping_sub(term);
    }

    /// Returns the 16 little-endian bytes sent in `SyncResponse.entries_digest`.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    /// Reads the wire form, or returns `None` unless `bytes` has exactly 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let array: [u8; 16] = bytes.try_into().ok()?;
        Some(Self(u128::from_le_bytes(array)))
    }
}

impl FromIterator<u128> for EntriesDigest {
    fn from_iter<I: IntoIterator<Item = u128>>(terms: I) -> Self {
        let mut digest = Self::default();
        for term in terms {
            digest.add(term);
        }
        digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_order_and_undoes_removal() {
        let a = EntriesDigest::term("a", 0);
        let b = EntriesDigest::term("b", 3);
        let forward: EntriesDigest = [a, b].into_iter().collect();
        let backward: EntriesDigest = [b, a].into_iter().collect();
        assert_eq!(forward, backward);
        let mut only_a = forward;
        only_a.remove(b);
        assert_eq!(only_a, [a].into_iter().collect());
        assert_eq!(
            EntriesDigest::from_bytes(&forward.to_bytes()),
            Some(forward)
        );
        assert_eq!(EntriesDigest::from_bytes(&[0; 15]), None);
    }

    #[test]
    fn revision_changes_the_term() {
        assert_ne!(EntriesDigest::term("a", 0), EntriesDigest::term("a", 1));
        // The separator keeps ("a1", 0) and ("a", 10) apart.
        assert_ne!(EntriesDigest::term("a1", 0), EntriesDigest::term("a", 10));
    }

    #[test]
    fn term_matches_the_documented_construction() {
        let hash = digest(&SHA256, b"entry-1\x0042");
        let expected = u128::from_le_bytes(hash.as_ref()[..16].try_into().unwrap());
        assert_eq!(EntriesDigest::term("entry-1", 42), expected);
    }
}
