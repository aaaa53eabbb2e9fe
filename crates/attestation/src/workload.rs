//! Workload attestation: turning the process at the other end of a Workload API connection
//! into selectors.

pub mod unix;

pub use twid_types::Selector;
pub use twid_uds::PeerCredentials;

use crate::AttestationError;

/// A workload attestor: inspects the caller of a Workload API request and returns the
/// selectors that describe it.
///
/// `attest` blocks: it reads procfs and may hash the caller's executable (tens of MiB), so an
/// async caller runs it in `tokio::task::spawn_blocking`.
pub trait WorkloadAttestor: Send + Sync {
    /// Returns the attestor name, which is also the type of every selector it returns.
    fn name(&self) -> &'static str;

    /// Collects the selectors of the process described by `caller`.
    ///
    /// # Errors
    ///
    /// Returns an [`AttestationError`] when the attestor cannot collect every selector it is
    /// configured to produce; a partial selector set is never returned.
    fn attest(&self, caller: &PeerCredentials) -> Result<Vec<Selector>, AttestationError>;
}
