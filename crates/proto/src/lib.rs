//! Generated gRPC code for the three APIs twid speaks.
//!
//! - [`workload`]: the SPIFFE Workload API (no protobuf package, as the standard fixes it).
//! - [`node`]: the agent-to-server API over mutual TLS.
//! - [`admin`]: the command line's API on the server's local socket.
//! - [`attestation`]: evidence verification for relying parties.
//! - [`workload_attestation`]: direct attestation of workloads in TEEs.
//! - [`types`]: messages shared by the node and admin APIs.

#![allow(missing_docs, unreachable_pub, unused_qualifications, clippy::all)]

/// SPIFFE Workload API messages and service (`/SpiffeWorkloadAPI/<Method>`).
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// The generated packages, nested as protobuf package names require.
pub mod twid {
    pub mod types {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/twid.types.v1.rs"));
        }
    }
    pub mod node {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/twid.node.v1.rs"));
        }
    }
    pub mod admin {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/twid.admin.v1.rs"));
        }
    }
    pub mod attestation {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/twid.attestation.v1.rs"));
        }
    }
    pub mod workload_attestation {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/twid.workload_attestation.v1.rs"));
        }
    }
}

/// Messages shared by the node and admin APIs.
pub use twid::types::v1 as types;

/// The node API: agent to server over mutual TLS.
pub use twid::node::v1 as node;

/// The verification API: evidence in, a signed attestation result out, for any relying party.
pub use twid::attestation::v1 as attestation;

/// Direct workload attestation: a workload in a TEE sends evidence and receives SVIDs for its key.
pub use twid::workload_attestation::v1 as workload_attestation;

/// The admin API: command line to server over the local Unix socket.
pub use twid::admin::v1 as admin;

/// The name of the gRPC metadata key every Workload API request must carry with value `true`.
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";

/// Reads a whole Sync stream into one [`node::SyncResponse`]: the first message's bundles,
/// revocations and `full` flag, the entries and removed IDs of every message in order, and the
/// last message's revision, digest and count.
///
/// # Errors
/// Returns the status that ended the stream, or `DataLoss` for a stream with no message.
pub async fn collect_sync(
    mut stream: tonic::Streaming<node::SyncResponse>,
) -> Result<node::SyncResponse, tonic::Status> {
    let mut merged: Option<node::SyncResponse> = None;
    while let Some(mut message) = stream.message().await? {
        match merged.as_mut() {
            None => merged = Some(message),
            Some(merged) => {
                merged.entries.append(&mut message.entries);
                merged
                    .removed_entry_ids
                    .append(&mut message.removed_entry_ids);
                merged.entries_revision = message.entries_revision;
                merged.entries_digest = message.entries_digest;
                merged.entries_count = message.entries_count;
            }
        }
    }
    merged.ok_or_else(|| tonic::Status::data_loss("the server ended the Sync stream empty"))
}
