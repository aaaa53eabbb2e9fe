//! Node and workload attestation.
//!
//! - [`workload`]: the [`WorkloadAttestor`](workload::WorkloadAttestor) trait the agent runs
//!   for every Workload API caller, and the `unix` attestor.
//! - [`node`]: node attestation types; [`node::join_token`] generates join tokens.
//!
//! Selectors use SPIRE's syntax (type `unix`, value `uid:1000`), so registration entries
//! written for SPIRE match the same workloads here.

#![forbid(unsafe_code)]

mod error;
pub mod node;
pub mod workload;

pub use error::AttestationError;
