//! Agent-side evidence collection for node attestation in a TEE or on a TPM.
//!
//! The server sends a nonce; the agent computes the binding report data from it and the public
//! key of its new SVID, and a [`Collector`] requests from the platform for evidence that carries that
//! report data. Each platform interface sits behind the trait so tests can drive node
//! attestation without the hardware.

use twid_evidence::{Envelope, Kind};

pub mod configfs_tsm;
pub mod exec;
pub mod tpm;

/// The reason a collector could not produce evidence.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The platform interface is missing, for example no `/dev/tpmrm0` or configfs-tsm folder.
    #[error("{interface} is not available: {reason}")]
    Unavailable { interface: String, reason: String },
    /// The interface exists but the request failed.
    #[error("{interface} failed: {reason}")]
    Failed { interface: String, reason: String },
}

/// A source of evidence of one kind, bound to caller-chosen report data.
pub trait Collector: Send + Sync + std::fmt::Debug {
    /// Returns the kind of evidence this collector produces.
    fn kind(&self) -> Kind;

    /// Produces evidence whose report data (or `user_data`, or TPM `extraData`) is exactly
    /// `report_data`. Blocking: callers run it on a blocking thread.
    fn collect(&self, report_data: &[u8; 64]) -> Result<Envelope, CollectError>;
}
