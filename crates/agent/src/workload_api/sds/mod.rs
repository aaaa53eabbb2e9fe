//! Envoy's Secret Discovery Service (SDS v3) on the Workload API socket.
//!
//! Callers are attested exactly as for the Workload API (PermissionDenied when no entry
//! matches), but without the `workload.spiffe.io` header, which Envoy does not send. Requests
//! that arrive before the first sync wait for it (Unavailable after the first-sync timeout), so
//! the response never depends on when Envoy connected. StreamSecrets follows the xDS
//! state-of-the-world protocol: every response carries a version and a nonce. A request that
//! repeats the last nonce with the same resource names is an ACK and gets nothing. A request
//! with `error_detail` is a NACK, logged at warn and given no response, and a request with a stale
//! nonce is ignored. After every cache change each stream gets a new response if, and only
//! if, the resources it requested changed. Calls are counted in the Workload API call metrics
//! with the methods `StreamSecrets` and `FetchSecrets`.

mod resources;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use envoy_types::pb::google::protobuf::Any;
use futures::StreamExt;
use tokio::sync::watch;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};
use twid_attestation::workload::WorkloadAttestor;
use twid_config::SdsConfig;

use super::{Caller, attested_caller, no_identity, record, responses, stopped};
use crate::cache::Cache;

use resources::{Resources, SECRET_TYPE_URL, build};

/// The SDS service state shared by all connections.
pub(crate) struct SecretDiscovery {
    cache: Cache,
    attestor: Arc<dyn WorkloadAttestor>,
    config: Arc<SdsConfig>,
    first_sync_timeout: Duration,
    shutdown: Option<watch::Receiver<bool>>,
}

impl SecretDiscovery {
    /// Creates the service over `cache`, attesting callers with `attestor`.
    pub(crate) fn new(
        cache: Cache,
        attestor: Arc<dyn WorkloadAttestor>,
        config: SdsConfig,
        first_sync_timeout: Duration,
    ) -> Self {
        Self {
            cache,
            attestor,
            config: Arc::new(config),
            first_sync_timeout,
            shutdown: None,
        }
    }

    /// Ends every open stream once `shutdown` turns true.
    pub(crate) fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }
}

/// Rejects a request for any type but `Secret`; an empty type URL is accepted, as Envoy
/// leaves it out on some SDS requests.
fn check_type_url(request: &DiscoveryRequest) -> Result<(), Status> {
    if request.type_url.is_empty() || request.type_url == SECRET_TYPE_URL {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "type_url {:?} is not served by SDS; use {SECRET_TYPE_URL:?}",
        request.type_url
    )))
}

fn new_nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The xDS state of one StreamSecrets stream.
#[derive(Default)]
struct StreamState {
    /// Resource names of the last accepted request; `None` before the first request.
    names: Option<BTreeSet<String>>,
    /// Version counter; incremented whenever the resources sent change.
    version: u64,
    nonce: String,
    resources: Option<Vec<Any>>,
}

impl StreamState {
    /// Returns a response for `resources`, with a new version if they differ from the last
    /// ones sent, and always a new nonce.
    fn respond(&mut self, resources: Vec<Any>) -> DiscoveryResponse {
        if self.resources.as_ref() != Some(&resources) {
            self.version += 1;
        }
        self.nonce = new_nonce();
        self.resources = Some(resources.clone());
        DiscoveryResponse {
            version_info: self.version.to_string(),
            resources,
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: self.nonce.clone(),
            ..DiscoveryResponse::default()
        }
    }

    fn requested(&self) -> Vec<String> {
        self.names.iter().flatten().cloned().collect()
    }
}

/// Action a stream takes on one incoming request.
#[derive(Debug, PartialEq, Eq)]
enum Incoming {
    /// Build and send the requested resources.
    Respond,
    /// ACK, NACK or stale request: send nothing.
    Ignore,
}

/// Applies the xDS rules to `request` and updates `state`.
fn classify(state: &mut StreamState, request: &DiscoveryRequest) -> Incoming {
    let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
    let answered = state.resources.is_some();
    if answered && !request.response_nonce.is_empty() && request.response_nonce != state.nonce {
        tracing::debug!(
            nonce = %request.response_nonce,
            "ignoring SDS request with a stale nonce"
        );
        return Incoming::Ignore;
    }
    if let Some(error) = &request.error_detail {
        tracing::warn!(
            code = error.code,
            error = %error.message,
            version = %request.version_info,
            nonce = %request.response_nonce,
            resources = ?names,
            "Envoy rejected an SDS response (NACK); waiting for the next change"
        );
        state.names = Some(names);
        return Incoming::Ignore;
    }
    let same_names = state.names.as_ref() == Some(&names);
    if answered && same_names && request.response_nonce == state.nonce {
        tracing::debug!(version = %request.version_info, "SDS response acknowledged");
        return Incoming::Ignore;
    }
    state.names = Some(names);
    Incoming::Respond
}

/// Runs one StreamSecrets stream until the client or the agent ends it.
fn secret_stream(
    mut caller: Caller,
    mut requests: Streaming<DiscoveryRequest>,
    config: Arc<SdsConfig>,
    mut shutdown: Option<watch::Receiver<bool>>,
) -> BoxStream<DiscoveryResponse> {
    let stream = async_stream::stream! {
        let mut state = StreamState::default();
        // Set when a request or a change found a requested SVID not yet signed; the next
        // cache change then builds again.
        let mut waiting = false;
        loop {
            let from_request = tokio::select! {
                request = requests.next() => {
                    let request = match request {
                        Some(Ok(request)) => request,
                        Some(Err(status)) => {
                            tracing::debug!(%status, "SDS stream ended by the client");
                            break;
                        }
                        None => break,
                    };
                    if let Err(status) = check_type_url(&request) {
                        yield Err(status);
                        break;
                    }
                    if classify(&mut state, &request) == Incoming::Ignore {
                        continue;
                    }
                    true
                }
                changed = caller.updates.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if state.names.is_none() {
                        continue;
                    }
                    false
                }
                () = stopped(&mut shutdown) => {
                    yield Err(Status::unavailable("the agent is shutting down"));
                    break;
                }
            };
            let snapshot = caller.updates.borrow_and_update().clone();
            let names = state.requested();
            match build(&snapshot, &caller.identity, &names, &config) {
                Ok(Resources::Ready(resources)) => {
                    let changed = state.resources.as_ref() != Some(&resources);
                    if from_request || waiting || changed {
                        waiting = false;
                        let response = state.respond(resources);
                        tracing::debug!(
                            version = %response.version_info,
                            resources = ?names,
                            "sending SDS response"
                        );
                        yield Ok(response);
                    }
                }
                Ok(Resources::Pending) => waiting = true,
                Err(status) => {
                    yield Err(status);
                    break;
                }
            }
        }
    };
    Box::pin(stream)
}

#[tonic::async_trait]
impl SecretDiscoveryService for SecretDiscovery {
    type DeltaSecretsStream = BoxStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = BoxStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "DeltaSecrets is not supported by this agent; use StreamSecrets",
        ))
    }

    #[tracing::instrument(name = "sds_stream_secrets", skip_all)]
    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let started = Instant::now();
        let result = self.open_stream(request).await;
        record("StreamSecrets", &result, started);
        result.map(Response::new)
    }

    #[tracing::instrument(name = "sds_fetch_secrets", skip_all)]
    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let started = Instant::now();
        let result = self.fetch(request).await;
        record("FetchSecrets", &result, started);
        result.map(Response::new)
    }
}

impl SecretDiscovery {
    async fn open_stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<BoxStream<DiscoveryResponse>, Status> {
        let caller = attested_caller(
            &self.cache,
            &self.attestor,
            self.first_sync_timeout,
            &request,
        )
        .await?;
        let snapshot = caller.updates.borrow().clone();
        if responses::identities(&snapshot, &caller.identity.selectors).is_empty() {
            return Err(no_identity(&caller.identity));
        }
        tracing::debug!(uid = caller.identity.peer.uid, "SDS stream opened");
        Ok(secret_stream(
            caller,
            request.into_inner(),
            Arc::clone(&self.config),
            self.shutdown.clone(),
        ))
    }

    async fn fetch(&self, request: Request<DiscoveryRequest>) -> Result<DiscoveryResponse, Status> {
        check_type_url(request.get_ref())?;
        let caller = attested_caller(
            &self.cache,
            &self.attestor,
            self.first_sync_timeout,
            &request,
        )
        .await?;
        let snapshot = caller.updates.borrow().clone();
        let names = &request.get_ref().resource_names;
        match build(&snapshot, &caller.identity, names, &self.config)? {
            Resources::Ready(resources) => Ok(DiscoveryResponse {
                version_info: snapshot.generation.to_string(),
                resources,
                type_url: SECRET_TYPE_URL.to_owned(),
                nonce: new_nonce(),
                ..DiscoveryResponse::default()
            }),
            Resources::Pending => Err(Status::unavailable(
                "a requested X.509-SVID is not signed yet; retry later",
            )),
        }
    }
}
