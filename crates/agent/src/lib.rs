//! The twid agent: attests to the server, syncs the entries it is authorized for, keeps their
//! X.509-SVIDs fresh, and serves them to local workloads over the SPIFFE Workload API.
//!
//! [`Agent::start`] takes a loaded [`twid_config::AgentConfig`] and returns an [`AgentHandle`].
//! The agent keeps its own key, SVID and the latest trust bundle in `data_dir`, so a restart
//! re-uses them and needs no new join token.

#![forbid(unsafe_code)]

mod agent;
mod bootstrap;
mod cache;
mod error;
mod jwks;
mod listener;
mod node;
mod reattest;
mod revocation;
mod settings;
mod startup;
mod state;
mod svid_manager;
mod sync;
#[cfg(test)]
mod test_support;
mod watcher;
mod workload_api;

pub use agent::{Agent, AgentHandle, AgentOptions};
pub use error::AgentError;
