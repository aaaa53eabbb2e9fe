//! The SPIFFE Workload API on the agent's Unix socket.
//!
//! Every RPC first checks the `workload.spiffe.io: true` header (InvalidArgument otherwise),
//! then the request fields, then attests the caller from its peer credentials and serves only
//! the entries whose selectors are all among the caller's (PermissionDenied when there are
//! none). Calls that arrive before the first sync wait for it up to `first_sync_timeout`, then
//! get Unavailable. Identities are ordered by entry creation time, then entry ID; the first is
//! the default. Streams send the caller's full state again after every change of it, and end
//! with Unavailable when the agent shuts down.

pub(crate) mod attestation;
mod caller;
mod jwt;
mod responses;
mod sds;
#[cfg(test)]
mod tests;
mod wit;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};
use twid_attestation::workload::WorkloadAttestor;
use twid_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use twid_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest,
    WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest, X509svidResponse,
};
use twid_telemetry::names;

use crate::cache::{Cache, Snapshot};
use caller::Identity;
pub(crate) use jwt::{IssuedJwt, JwtIssuer};
use responses::X509View;
pub(crate) use sds::SecretDiscovery;
pub(crate) use wit::{NodeWitIssuer, WitIssuer};

/// The Workload API service state shared by all connections.
pub(crate) struct WorkloadApi {
    cache: Cache,
    attestor: Arc<dyn WorkloadAttestor>,
    jwt: jwt::JwtSvids,
    /// WIT-SVID signing; without it the WIT-SVID RPCs return Unimplemented.
    wit: Option<Arc<wit::WitSvids>>,
    first_sync_timeout: Duration,
    shutdown: Option<watch::Receiver<bool>>,
}

/// An attested caller with a receiver positioned to see the current snapshot as changed.
struct Caller {
    identity: Identity,
    updates: watch::Receiver<Arc<Snapshot>>,
    cache: Cache,
}

impl Caller {
    /// Records that the caller requested its identities in `snapshot`, so that the sync loop
    /// keeps their SVIDs signed, and signs missing ones now, when the agent holds more entries
    /// than `x509_svid_cache_max_size`.
    fn request_identities(&self, snapshot: &Snapshot) {
        let entries = responses::requested_identities(snapshot, &self.identity.selectors);
        self.cache
            .request_entries(&entries, crate::sync::unix_now());
    }
}

impl WorkloadApi {
    /// Creates the service over `cache`, attesting callers with `attestor` and obtaining
    /// JWT-SVIDs through `issuer`.
    pub(crate) fn new(
        cache: Cache,
        attestor: Arc<dyn WorkloadAttestor>,
        issuer: Arc<dyn JwtIssuer>,
        first_sync_timeout: Duration,
    ) -> Self {
        Self {
            cache,
            attestor,
            jwt: jwt::JwtSvids::new(issuer),
            wit: None,
            first_sync_timeout,
            shutdown: None,
        }
    }

    /// Ends every open stream once `shutdown` turns true, so a graceful server shutdown does
    /// not wait for streaming clients.
    pub(crate) fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Serves the WIT-SVID profile, obtaining WITs through `issuer`.
    pub(crate) fn with_wit(mut self, issuer: Arc<dyn WitIssuer>) -> Self {
        self.wit = Some(Arc::new(wit::WitSvids::new(issuer)));
        self
    }

    /// Attests the caller and waits for the first sync.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        attested_caller(
            &self.cache,
            &self.attestor,
            self.first_sync_timeout,
            request,
        )
        .await
    }

    /// Opens a stream after checking that the caller has at least one identity now, so the
    /// open itself fails with PermissionDenied as clients expect.
    async fn open_stream<Q, T, F>(
        &self,
        request: Request<Q>,
        build: F,
    ) -> Result<BoxStream<T>, Status>
    where
        T: PartialEq + Clone + Send + 'static,
        F: Fn(&Snapshot, &Identity) -> Result<Option<T>, Status> + Send + 'static,
    {
        caller::check_security_header(&request)?;
        let caller = self.caller(&request).await?;
        let snapshot = caller.updates.borrow().clone();
        if responses::identities(&snapshot, &caller.identity.selectors).is_empty() {
            return Err(no_identity(&caller.identity));
        }
        Ok(watch_stream(caller, self.shutdown.clone(), build))
    }

    async fn fetch_jwt(&self, request: Request<JwtsvidRequest>) -> Result<JwtsvidResponse, Status> {
        caller::check_security_header(&request)?;
        jwt::check_fetch_request(request.get_ref())?;
        let caller = self.caller(&request).await?;
        let snapshot = caller.updates.borrow().clone();
        self.jwt
            .fetch(&snapshot, &caller.identity, request.into_inner())
            .await
    }

    async fn fetch_wit(
        &self,
        request: Request<WitsvidRequest>,
    ) -> Result<BoxStream<WitsvidResponse>, Status> {
        caller::check_security_header(&request)?;
        let Some(svids) = &self.wit else {
            return Err(wit_unimplemented());
        };
        wit::check_fetch_request(request.get_ref())?;
        let caller = self.caller(&request).await?;
        Arc::clone(svids).stream(
            caller,
            self.shutdown.clone(),
            request.into_inner().spiffe_id,
        )
    }

    async fn validate_jwt(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<ValidateJwtsvidResponse, Status> {
        caller::check_security_header(&request)?;
        jwt::check_validate_request(request.get_ref())?;
        let caller = self.caller(&request).await?;
        let snapshot = caller.updates.borrow().clone();
        jwt::validate(&snapshot, &caller.identity, request.get_ref())
    }
}

/// Attests the caller of `request` and waits up to `first_sync_timeout` for the first sync,
/// so every caller sees a synced cache; Unavailable after the timeout.
async fn attested_caller<T>(
    cache: &Cache,
    attestor: &Arc<dyn WorkloadAttestor>,
    first_sync_timeout: Duration,
    request: &Request<T>,
) -> Result<Caller, Status> {
    let peer = caller::peer_credentials(request)?;
    let identity = caller::attest(attestor, peer).await?;
    let mut updates = cache.subscribe();
    let wait = updates.wait_for(|snapshot| snapshot.generation > 0);
    match tokio::time::timeout(first_sync_timeout, wait).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) | Err(_) => {
            return Err(Status::unavailable(
                "the agent has not synced with its server yet; retry later",
            ));
        }
    }
    updates.mark_changed();
    let caller = Caller {
        identity,
        updates,
        cache: cache.clone(),
    };
    caller.request_identities(&caller.updates.borrow());
    Ok(caller)
}

/// Builds the PermissionDenied status for a caller that matches no entry, or only entries
/// whose SVID the server revoked.
fn no_identity(caller: &Identity) -> Status {
    let selectors: Vec<String> = caller.selectors.iter().map(ToString::to_string).collect();
    tracing::debug!(
        ?selectors,
        uid = caller.peer.uid,
        "no registration entry with a current SVID matches the caller"
    );
    Status::permission_denied(format!(
        "no identity issued: no identity is registered for this caller, or the server revoked \
         the SVIDs of those that are ({})",
        caller::describe(&caller.peer)
    ))
}

/// Records the call counter and latency histogram for one RPC.
fn record<T>(method: &'static str, result: &Result<T, Status>, started: Instant) {
    let code = match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    let code = format!("{code:?}");
    metrics::counter!(names::WORKLOAD_API_CALLS_TOTAL,
        names::LABEL_METHOD => method, names::LABEL_CODE => code)
    .increment(1);
    metrics::histogram!(names::WORKLOAD_API_LATENCY_SECONDS, names::LABEL_METHOD => method)
        .record(started.elapsed().as_secs_f64());
}

/// Waits until `shutdown` turns true or its sender is gone; never returns without a receiver.
async fn stopped(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(receiver) => {
            let _ = receiver.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    }
}

/// Streams `build(snapshot)` now and after every change that alters the message; a build error
/// ends the stream with that status. `None` means "nothing to send yet".
fn watch_stream<T, F>(
    mut caller: Caller,
    mut shutdown: Option<watch::Receiver<bool>>,
    build: F,
) -> BoxStream<T>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(&Snapshot, &Identity) -> Result<Option<T>, Status> + Send + 'static,
{
    let stream = async_stream::stream! {
        let mut last: Option<T> = None;
        loop {
            tokio::select! {
                changed = caller.updates.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = stopped(&mut shutdown) => {
                    yield Err(Status::unavailable("the agent is shutting down"));
                    break;
                }
            }
            let snapshot = caller.updates.borrow_and_update().clone();
            // Every update renews the caller's request, so that its SVIDs stay cached, and an
            // identity that the update added without an SVID is signed now.
            caller.request_identities(&snapshot);
            match build(&snapshot, &caller.identity) {
                Ok(Some(message)) if last.as_ref() != Some(&message) => {
                    last = Some(message.clone());
                    yield Ok(message);
                }
                Ok(_) => {}
                Err(status) => {
                    yield Err(status);
                    break;
                }
            }
        }
    };
    Box::pin(stream)
}

fn build_x509(snapshot: &Snapshot, caller: &Identity) -> Result<Option<X509svidResponse>, Status> {
    match responses::x509_view(snapshot, &caller.selectors) {
        X509View::NoIdentity => Err(no_identity(caller)),
        X509View::Pending => Ok(None),
        X509View::Ready(message) => Ok(Some(message)),
    }
}

fn build_x509_bundles(
    snapshot: &Snapshot,
    caller: &Identity,
) -> Result<Option<X509BundlesResponse>, Status> {
    let entries = responses::identities(snapshot, &caller.selectors);
    if entries.is_empty() {
        return Err(no_identity(caller));
    }
    Ok(Some(responses::x509_bundles(snapshot, &entries)))
}

/// Builds the Unimplemented status that the WIT-SVID RPCs return on an agent built without a
/// WIT issuer, as the Workload API standard requires.
fn wit_unimplemented() -> Status {
    Status::unimplemented("WIT-SVIDs are not supported by this agent")
}

fn build_wit_bundles(
    snapshot: &Snapshot,
    caller: &Identity,
) -> Result<Option<WitBundlesResponse>, Status> {
    let entries = responses::identities(snapshot, &caller.selectors);
    if entries.is_empty() {
        return Err(no_identity(caller));
    }
    Ok(Some(wit::wit_bundles(snapshot, &entries)))
}

fn build_jwt_bundles(
    snapshot: &Snapshot,
    caller: &Identity,
) -> Result<Option<JwtBundlesResponse>, Status> {
    let entries = responses::identities(snapshot, &caller.selectors);
    if entries.is_empty() {
        return Err(no_identity(caller));
    }
    Ok(Some(responses::jwt_bundles(snapshot, &entries)))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    #[tracing::instrument(name = "fetch_x509_svid", skip_all)]
    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<BoxStream<X509svidResponse>>, Status> {
        let started = Instant::now();
        let result = self.open_stream(request, build_x509).await;
        record("FetchX509SVID", &result, started);
        result.map(Response::new)
    }

    #[tracing::instrument(name = "fetch_x509_bundles", skip_all)]
    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<BoxStream<X509BundlesResponse>>, Status> {
        let started = Instant::now();
        let result = self.open_stream(request, build_x509_bundles).await;
        record("FetchX509Bundles", &result, started);
        result.map(Response::new)
    }

    #[tracing::instrument(name = "fetch_jwt_svid", skip_all)]
    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let started = Instant::now();
        let result = self.fetch_jwt(request).await;
        record("FetchJWTSVID", &result, started);
        result.map(Response::new)
    }

    #[tracing::instrument(name = "fetch_jwt_bundles", skip_all)]
    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<BoxStream<JwtBundlesResponse>>, Status> {
        let started = Instant::now();
        let result = self.open_stream(request, build_jwt_bundles).await;
        record("FetchJWTBundles", &result, started);
        result.map(Response::new)
    }

    #[tracing::instrument(name = "validate_jwt_svid", skip_all)]
    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let started = Instant::now();
        let result = self.validate_jwt(request).await;
        record("ValidateJWTSVID", &result, started);
        result.map(Response::new)
    }

    #[tracing::instrument(name = "fetch_wit_svid", skip_all)]
    async fn fetch_witsvid(
        &self,
        request: Request<WitsvidRequest>,
    ) -> Result<Response<BoxStream<WitsvidResponse>>, Status> {
        let started = Instant::now();
        let result = self.fetch_wit(request).await;
        record("FetchWITSVID", &result, started);
        result.map(Response::new)
    }

    #[tracing::instrument(name = "fetch_wit_bundles", skip_all)]
    async fn fetch_wit_bundles(
        &self,
        request: Request<WitBundlesRequest>,
    ) -> Result<Response<BoxStream<WitBundlesResponse>>, Status> {
        let started = Instant::now();
        let result = if self.wit.is_some() {
            self.open_stream(request, build_wit_bundles).await
        } else {
            caller::check_security_header(&request).and(Err(wit_unimplemented()))
        };
        record("FetchWITBundles", &result, started);
        result.map(Response::new)
    }
}
