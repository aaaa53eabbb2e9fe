//! Starting and stopping the agent: the Workload API socket, telemetry listeners, the identity
//! and first sync ([`crate::startup`]), the sync loop with its Watch stream, and the Workload
//! API server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use twid_attestation::node::evidence::Collector;
use twid_attestation::workload::WorkloadAttestor;
use twid_attestation::workload::unix::UnixAttestor;
use twid_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use twid_spiffe::SpiffeId;
use twid_telemetry::Health;

use crate::cache::Cache;
use crate::node::NodeJwtIssuer;
use crate::settings::AgentSettings;
use crate::sync::RetryState;
use crate::workload_api::attestation::AttestationRelay;
use crate::workload_api::{NodeWitIssuer, SecretDiscovery, WorkloadApi};
use crate::{AgentError, listener, startup, watcher};

/// How long [`AgentHandle::shutdown`] waits for each task before aborting it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Tunables that are not part of the configuration file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentOptions {
    /// Time between syncs with the server; `None` uses the configuration's `sync_interval`.
    pub sync_interval: Option<Duration>,
    /// How long a Workload API call that arrives before the first sync waits for it.
    pub first_sync_timeout: Duration,
    /// An evidence collector that replaces the one the configuration's `NodeAttestor` block
    /// selects, for tests and embedders. The agent then attests with the node attestor named
    /// after the collector's kind (such as `tdx`), unless the configuration names one.
    pub collector: Option<Arc<dyn Collector>>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            sync_interval: None,
            first_sync_timeout: Duration::from_secs(10),
            collector: None,
        }
    }
}

/// The agent process as a library; see [`Agent::start`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Agent;

/// A running agent. Dropping it without [`AgentHandle::shutdown`] stops its tasks too, but
/// leaves the socket file behind.
#[derive(Debug)]
pub struct AgentHandle {
    socket_path: PathBuf,
    agent_id: SpiffeId,
    cache: Cache,
    health: Health,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    telemetry: Vec<JoinHandle<std::io::Result<()>>>,
}

impl AgentHandle {
    /// Returns the Workload API socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Returns the agent's own SPIFFE ID, such as
    /// `spiffe://<td>/spire/agent/join_token/<token>` or `spiffe://<td>/spire/agent/tdx/<mrtd>`.
    pub fn agent_id(&self) -> &SpiffeId {
        &self.agent_id
    }

    /// Returns the agent's health state: ready once the first sync succeeded, not ready again
    /// after the server rejected the agent or its SVID expired.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Waits until the first sync with the server has been published to workloads.
    ///
    /// # Errors
    /// Returns [`AgentError::FirstSyncTimeout`] when that takes longer than `timeout`.
    pub async fn wait_first_sync(&self, timeout: Duration) -> Result<(), AgentError> {
        let mut updates = self.cache.subscribe();
        let synced = updates.wait_for(|snapshot| snapshot.generation > 0);
        match tokio::time::timeout(timeout, synced).await {
            // The sender lives in `self.cache`, so the channel cannot close while we wait.
            Ok(_) => Ok(()),
            Err(_) => Err(AgentError::FirstSyncTimeout(timeout)),
        }
    }

    /// Stops syncing and serving (open Workload API streams end with Unavailable), waits up
    /// to 5 s for each task, and removes the socket file.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for mut task in std::mem::take(&mut self.tasks) {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "agent task ended abnormally"),
                Err(_) => {
                    tracing::warn!("an agent task did not stop within 5s; aborting it");
                    task.abort();
                }
            }
        }
        for task in std::mem::take(&mut self.telemetry) {
            task.abort();
        }
        if let Err(error) = std::fs::remove_file(&self.socket_path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(%error, path = %self.socket_path.display(), "failed to remove the socket file");
        }
        tracing::info!("agent stopped");
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for task in &self.telemetry {
            task.abort();
        }
    }
}

/// Removes the socket file and stops the telemetry listeners when the start fails halfway.
struct StartGuard {
    socket_path: PathBuf,
    telemetry: Vec<JoinHandle<std::io::Result<()>>>,
    armed: bool,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for task in &self.telemetry {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

impl Agent {
    /// Starts an agent from its configuration.
    ///
    /// The agent binds the Workload API socket first, so a socket in use does not waste the
    /// join token. It then starts the health and metrics listeners, re-uses the stored SVID or
    /// attests with the join token, and runs the first sync. Last it starts the sync loop and
    /// the Workload API. An unreachable server after attestation is not an error, because the
    /// sync loop keeps retrying, and the agent turns ready after its first successful sync.
    ///
    /// # Errors
    /// Fails for an invalid configuration, a socket that cannot be bound, or an unusable data
    /// directory or trust bundle. It also fails for a missing, invalid, used or expired join
    /// token (with the server's message), and for a stored SVID that the server rejects when
    /// there is no join token.
    pub async fn start(
        config: twid_config::AgentConfig,
        options: AgentOptions,
    ) -> Result<AgentHandle, AgentError> {
        let settings = AgentSettings::from_config(config, &options)?;
        Self::start_with(settings).await
    }

    /// Starts an agent from checked settings with the unix workload attestor.
    pub(crate) async fn start_with(settings: AgentSettings) -> Result<AgentHandle, AgentError> {
        let attestor: Arc<dyn WorkloadAttestor> =
            Arc::new(UnixAttestor::new(settings.unix_attestor));
        Self::start_with_attestor(settings, attestor).await
    }

    /// Starts an agent from checked settings, attesting workloads with `attestor`.
    pub(crate) async fn start_with_attestor(
        settings: AgentSettings,
        attestor: Arc<dyn WorkloadAttestor>,
    ) -> Result<AgentHandle, AgentError> {
        settings.validate()?;
        crate::state::create_private_dir(&settings.data_dir)?;
        let incoming = listener::bind(&settings.socket_path)?;
        let mut guard = StartGuard {
            socket_path: settings.socket_path.clone(),
            telemetry: Vec::new(),
            armed: true,
        };
        let health = Health::new();
        if let Some(listener) = &settings.health {
            let task = twid_telemetry::serve_health(
                listener.address,
                &listener.live_path,
                &listener.ready_path,
                health.clone(),
            )
            .await?;
            guard.telemetry.push(task);
        }
        if let Some(address) = settings.prometheus {
            guard
                .telemetry
                .push(twid_telemetry::serve_prometheus(address).await?);
        }

        let cache = Cache::new(settings.trust_domain.id_string());
        let (mut syncer, first) = startup::establish(&settings, &cache, &health).await?;
        let agent_id = syncer.agent.check()?;
        let connection = Arc::clone(&syncer.connection);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(3);
        let mut retry = RetryState::new();
        if let Some(delay) = syncer
            .after_sync(first, &mut retry, settings.sync_interval)
            .await
        {
            let hints = Arc::new(Notify::new());
            let watch = watcher::run(
                Arc::clone(&connection),
                Arc::clone(&hints),
                shutdown_rx.clone(),
            );
            tasks.push(tokio::spawn(watch));
            let run = syncer.run(
                settings.sync_interval,
                delay,
                retry,
                hints,
                shutdown_rx.clone(),
            );
            tasks.push(tokio::spawn(run));
        }

        let sds = SecretDiscovery::new(
            cache.clone(),
            Arc::clone(&attestor),
            settings.sds.clone(),
            settings.first_sync_timeout,
        )
        .with_shutdown(shutdown_rx.clone());
        let api = WorkloadApi::new(
            cache.clone(),
            attestor,
            Arc::new(NodeJwtIssuer {
                connection: Arc::clone(&connection),
            }),
            settings.first_sync_timeout,
        )
        .with_wit(Arc::new(NodeWitIssuer {
            connection: Arc::clone(&connection),
        }))
        .with_shutdown(shutdown_rx.clone());
        let server = connection.address();
        let relay = crate::workload_api::attestation::service(connection);
        tasks.push(tokio::spawn(serve(api, sds, relay, incoming, shutdown_rx)));
        tracing::info!(
            agent_id = %agent_id,
            socket = %settings.socket_path.display(),
            %server,
            "agent started; Workload API listening"
        );

        guard.armed = false;
        Ok(AgentHandle {
            socket_path: settings.socket_path,
            agent_id,
            cache,
            health,
            shutdown,
            tasks,
            telemetry: std::mem::take(&mut guard.telemetry),
        })
    }
}

/// Serves the Workload API, SDS and the workload attestation relay on one socket, where gRPC
/// routes each call by its service name.
async fn serve(
    api: WorkloadApi,
    sds: SecretDiscovery,
    relay: AttestationRelay,
    incoming: listener::Incoming,
    mut shutdown: watch::Receiver<bool>,
) {
    let result = tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::new(api))
        .add_service(SecretDiscoveryServiceServer::new(sds))
        .add_service(relay)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "the Workload API server stopped");
    }
}

#[cfg(test)]
mod tests;
