//! Attested agents.

use serde::{Deserialize, Serialize};
use twid_spiffe::SpiffeId;

use crate::Selector;

/// An agent that completed node attestation, as the server records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedAgent {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The node attestor that admitted the agent, for example `join_token`.
    pub attestation_type: String,
    /// Serial number of the agent's current X.509-SVID, as a decimal or hex string.
    pub x509_svid_serial: String,
    /// When the agent's current X.509-SVID expires, in unix seconds.
    pub x509_svid_expires_at: i64,
    /// Serial number of the agent's X.509-SVID before its latest renewal or re-attestation,
    /// kept until the agent first uses the current one.
    #[serde(default)]
    pub previous_x509_svid_serial: Option<String>,
    /// When the previous X.509-SVID expires, in unix seconds.
    #[serde(default)]
    pub previous_x509_svid_expires_at: Option<i64>,
    /// The node selectors the attestor produced.
    pub selectors: Vec<Selector>,
    /// Whether the agent is banned from re-attesting and renewing.
    pub banned: bool,
    /// When the agent attested, in unix seconds.
    pub attested_at: i64,
}
