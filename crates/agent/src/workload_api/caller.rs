//! Caller identification: the security header check and workload attestation from the
//! kernel's peer credentials.

use std::sync::Arc;

use tonic::{Request, Status};
use twid_attestation::workload::WorkloadAttestor;
use twid_types::Selector;
use twid_uds::PeerCredentials;

/// An attested caller: its credentials and selectors.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) peer: PeerCredentials,
    pub(crate) selectors: Vec<Selector>,
}

/// Rejects a request unless it carries `workload.spiffe.io: true`, as the Workload API
/// standard requires of every call.
pub(crate) fn check_security_header<T>(request: &Request<T>) -> Result<(), Status> {
    let value = request.metadata().get(twid_proto::WORKLOAD_API_HEADER);
    if value.and_then(|v| v.to_str().ok()) == Some("true") {
        return Ok(());
    }
    Err(Status::invalid_argument(
        "security header missing from request: set the gRPC metadata workload.spiffe.io: true",
    ))
}

/// Reads the caller's credentials from the connection info `twid_uds` attached to the request.
pub(crate) fn peer_credentials<T>(request: &Request<T>) -> Result<PeerCredentials, Status> {
    request
        .extensions()
        .get::<twid_uds::UdsConnectInfo>()
        .map(|info| info.peer)
        .ok_or_else(|| {
            Status::internal(
                "peer credentials unavailable: the Workload API is served only on a Unix socket",
            )
        })
}

/// Runs `attestor` for `peer` on the blocking pool: attestors read procfs and may hash the
/// caller's executable.
///
/// A failed attestation gives the caller no selectors, so the call is rejected with
/// PermissionDenied and the attestor's reason.
pub(crate) async fn attest(
    attestor: &Arc<dyn WorkloadAttestor>,
    peer: PeerCredentials,
) -> Result<Identity, Status> {
    let attestor = Arc::clone(attestor);
    let outcome = tokio::task::spawn_blocking(move || attestor.attest(&peer))
        .await
        .map_err(|error| {
            tracing::error!(%error, "workload attestation task failed");
            Status::internal("workload attestation failed; see the agent log")
        })?;
    match outcome {
        Ok(selectors) => Ok(Identity { peer, selectors }),
        Err(error) => {
            tracing::debug!(uid = peer.uid, pid = ?peer.pid, %error, "workload attestation failed");
            Err(Status::permission_denied(format!(
                "no identity issued: workload attestation failed for this caller ({}): {error}",
                describe(&peer)
            )))
        }
    }
}

/// Describes the caller for messages: `uid 1000, gid 1000, pid 4242`.
pub(crate) fn describe(peer: &PeerCredentials) -> String {
    match peer.pid {
        Some(pid) => format!("uid {}, gid {}, pid {pid}", peer.uid, peer.gid),
        None => format!("uid {}, gid {}", peer.uid, peer.gid),
    }
}
