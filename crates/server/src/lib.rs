//! The twid server: the certificate authority of one trust domain.
//!
//! [`Server::start`] opens the datastore and the issuance log and loads or creates the CA. It
//! binds the node API (gRPC over mutual TLS, for agents) and the admin API (gRPC on a local
//! Unix socket, for the `twid` command line). Then it starts the background tasks: CA
//! rotation, server SVID renewal and join token pruning. It returns once every listener is
//! bound, so a caller may connect right away.

#![forbid(unsafe_code)]

mod admin_api;
mod ca;
mod collateral_fetch;
mod convert;
mod entries;
mod error;
mod evidence;
mod federation;
mod federation_admin;
mod federation_endpoint;
mod federation_fetch;
mod hints;
mod identity;
mod instance;
mod issuers;
mod localauthority;
mod node_api;
mod node_evidence;
mod policy;
mod provenance;
mod revocation;
mod tasks;
#[cfg(test)]
mod test_support;
mod upstream;
mod verification_api;
mod wit;
mod workload_attestation;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use twid_config::ServerConfig;
use twid_datastore::Datastore;
use twid_telemetry::Health;

pub use error::ServerError;
pub use issuers::OidcKeys;
pub use policy::{
    MAX_POLICY_JWS_BYTES, OwnerKey, POLICY_JWS_TYPE, PolicyDocument, PolicyError, SignedPolicy,
    sign_document,
};

use crate::ca::{CaManager, CaSettings};
use crate::entries::EntryCache;
use crate::identity::ServerIdentity;
use crate::issuers::{IssuerKeySource, IssuerRegistry, IssuerSettings, KeyStore};

/// State shared by the APIs and the background tasks.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) datastore: Datastore,
    pub(crate) ca: CaManager,
    pub(crate) entries: EntryCache,
    pub(crate) identity: ServerIdentity,
    pub(crate) health: Health,
    /// The trust domain's bundle as syncs hand it out; replaced on every rotation.
    pub(crate) bundle: ArcSwap<twid_proto::types::Bundle>,
    /// The `jwt_issuer` blocks with their keys.
    pub(crate) issuers: Arc<IssuerRegistry>,
    /// Serializes bundle publication, so that an older key set never overwrites a newer one.
    pub(crate) publish_lock: tokio::sync::Mutex<()>,
    /// The `NodeAttestor` blocks of evidence kinds, by name.
    pub(crate) evidence: evidence::EvidenceAttestors,
    /// The tamper-evident log of every SVID issued and every request rejected.
    pub(crate) issuance_log: provenance::Provenance,
    /// Sync hints for agents holding a `Watch` stream; see [`hints::Hints`].
    pub(crate) hints: hints::Hints,
    /// The signed appraisal policy versions; see [`policy::PolicyStore`].
    pub(crate) policies: policy::PolicyStore,
    /// Federation relationships' refresh state; see [`federation::Federation`].
    pub(crate) federation: federation::Federation,
}

/// A running server. Dropping it does not stop the server; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    node_api_address: SocketAddr,
    admin_socket: PathBuf,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    health: Health,
    oidc_keys: OidcKeys,
    oidc: Option<twid_oidc::OidcHandle>,
    bundle_endpoint: Option<SocketAddr>,
    /// The lock on the data directory, released when the handle drops.
    _data_dir_lock: std::fs::File,
}

/// Entry point of the server.
pub struct Server;

impl Server {
    /// Starts a server and returns once its listeners are bound.
    ///
    /// # Errors
    /// Fails when the datastore cannot be opened or migrated, the CA keys or the issuance log
    /// checkpoint key cannot be read or written, or a listener cannot be bound; the error
    /// names the path or address.
    pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
        let now = SystemTime::now();
        let trust_domain = config.trust_domain.clone();
        if config.telemetry.prometheus.is_some() {
            // Install the recorder before the CA loads, so the metrics it records at start-up
            // are not lost.
            twid_telemetry::install_metrics_recorder();
        }
        issuers::check_key_files(&config.jwt_issuers)?;
        let evidence = evidence::EvidenceAttestors::load(&config.evidence_attestors)?;
        let policies = policy::PolicyStore::load(&config)?;
        ca::create_private_dir(&config.data_dir)?;
        let data_dir_lock = lock_data_dir(&config.data_dir)?;
        let datastore = open_datastore(&config).await?;
        // Listening starts before anything is served, so no change made after start-up is
        // missed.
        let change_listener = datastore.listen_for_changes().await?;
        let issuance_log = provenance::open(&config.data_dir, &datastore)?;
        provenance::check_at_start(&issuance_log).await;
        let instance_id = instance::load_or_create(&config.data_dir)?;
        let ca =
            CaManager::load_or_create(ca_settings(&config, instance_id), datastore.clone(), now)
                .await?;
        let issuers = Arc::new(load_issuers(&config, &datastore, now).await?);
        let server_id = twid_types::server_id(&trust_domain);
        let identity = ServerIdentity::new(server_id.clone(), config.default_x509_svid_ttl);
        identity.refresh(&ca.snapshot(), now)?;
        let health = Health::new();
        let config_federates_with = config.federation.federates_with.clone();
        let shared = Arc::new(Shared {
            entries: EntryCache::new(datastore.clone(), server_id),
            config,
            datastore,
            ca,
            identity,
            health: health.clone(),
            bundle: ArcSwap::from_pointee(twid_proto::types::Bundle::default()),
            issuers: Arc::clone(&issuers),
            publish_lock: tokio::sync::Mutex::new(()),
            evidence,
            issuance_log,
            hints: hints::Hints::new(),
            federation: federation::Federation::new(&config_federates_with),
            policies,
        });
        tasks::publish_bundle(&shared).await?;
        federation::apply_config(&shared).await?;

        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let node_api_address = node_api::serve(&shared, &shutdown, &mut tasks).await?;
        let admin_socket = admin_api::serve(&shared, &shutdown, &mut tasks).await?;
        let bundle_endpoint = federation_endpoint::serve(&shared, &shutdown, &mut tasks).await?;
        tasks::spawn_background(&shared, &shutdown, &mut tasks);
        tasks.spawn(
            federation::refresh_loop(Arc::clone(&shared), shutdown.clone())
                .instrument(tracing::info_span!("federation")),
        );
        if let Some(listener) = change_listener {
            let follow =
                hints::follow_datastore_changes(Arc::clone(&shared), listener, shutdown.clone());
            tasks.spawn(follow.instrument(tracing::info_span!("change_listener")));
        }
        twid_telemetry_listeners(&shared, &shutdown, &mut tasks).await?;
        let oidc_keys = OidcKeys::new(issuers);
        let oidc = start_oidc_discovery(&shared, &oidc_keys, &health).await?;
        health.set_ready(true);
        tracing::info!(
            trust_domain = %shared.config.trust_domain,
            node_api = %node_api_address,
            admin_socket = %admin_socket.display(),
            "server started"
        );
        Ok(ServerHandle {
            node_api_address,
            admin_socket,
            shutdown,
            tasks,
            health,
            oidc_keys,
            oidc,
            bundle_endpoint,
            _data_dir_lock: data_dir_lock,
        })
    }
}

/// Takes an exclusive lock on the data directory, so that a second server started on it
/// fails before it writes to the datastore, publishes a bundle or binds a port. The lock is
/// on the directory itself, not on a file in it, so deleting or replacing a file cannot
/// release it. The operating system releases it when the process exits, however it exits.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    let handle = std::fs::File::open(dir).map_err(|source| ServerError::io(dir, source))?;
    match handle.try_lock() {
        Ok(()) => Ok(handle),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another twid server is running with this data directory; stop it, or start \
                 this one with another (`data_dir` in the server configuration, `--data-dir` \
                 for `twid dev`)",
            ),
        )),
        Err(std::fs::TryLockError::Error(source)) => Err(ServerError::io(dir, source)),
    }
}

impl ServerHandle {
    /// Returns the address the node API listens on (useful when the configured port is 0).
    pub fn node_api_address(&self) -> SocketAddr {
        self.node_api_address
    }

    /// Returns the path of the admin API socket.
    pub fn admin_socket(&self) -> &std::path::Path {
        &self.admin_socket
    }

    /// Returns the health flags served on `/live` and `/ready`.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Returns the public keys of the configured JWT issuers.
    pub fn oidc_keys(&self) -> &OidcKeys {
        &self.oidc_keys
    }

    /// Returns the address of the OIDC discovery endpoint, `None` when it is not enabled.
    pub fn oidc_address(&self) -> Option<SocketAddr> {
        self.oidc.as_ref().map(twid_oidc::OidcHandle::local_addr)
    }

    /// Returns the address of the SPIFFE bundle endpoint, `None` when it is not configured.
    pub fn bundle_endpoint_address(&self) -> Option<SocketAddr> {
        self.bundle_endpoint
    }

    /// Stops accepting requests, lets in-flight ones finish for up to five seconds, and stops
    /// the background tasks.
    pub async fn shutdown(mut self) {
        self.health.set_ready(false);
        if let Some(oidc) = self.oidc.take() {
            oidc.shutdown().await;
        }
        self.shutdown.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("server tasks did not stop within 5s; aborting them");
            self.tasks.abort_all();
        }
        let _ = std::fs::remove_file(&self.admin_socket);
        tracing::info!("server stopped");
    }
}

async fn open_datastore(config: &ServerConfig) -> Result<Datastore, ServerError> {
    let datastore = Datastore::open(&config.datastore).await?;
    if datastore.database_type() == twid_datastore::DatabaseType::Postgres
        && config.key_manager.keys_path().is_none()
    {
        // Replicas publish and trust each other's authorities through stored CA state, which
        // the memory key manager does not write.
        tracing::warn!(
            "KeyManager \"memory\" on a PostgreSQL datastore: other server replicas will \
             neither publish nor trust this server's CA, so agents cannot fail over to or from \
             it; use KeyManager \"disk\" for replicas"
        );
    }
    Ok(datastore)
}

async fn load_issuers(
    config: &ServerConfig,
    datastore: &Datastore,
    now: SystemTime,
) -> Result<IssuerRegistry, ServerError> {
    let settings = IssuerSettings {
        default_token_ttl: config.default_jwt_svid_ttl,
        key_type: key_type(config.jwt_key_type),
        key_ttl: config.ca_ttl,
    };
    let store = config.key_manager.keys_path().map(|dir| KeyStore {
        keys_dir: dir.to_owned(),
        datastore: datastore.clone(),
    });
    IssuerRegistry::load(&config.jwt_issuers, settings, store, now).await
}

fn ca_settings(config: &ServerConfig, instance_id: String) -> CaSettings {
    CaSettings {
        trust_domain: config.trust_domain.clone(),
        key_type: key_type(config.ca_key_type),
        jwt_key_type: key_type(config.jwt_key_type),
        ca_ttl: config.ca_ttl,
        subject: twid_ca::CaSubject {
            country: config.ca_subject.country.clone(),
            organization: config.ca_subject.organization.clone(),
            common_name: config.ca_subject.common_name.clone(),
        },
        keys_dir: config.key_manager.keys_path().map(PathBuf::from),
        instance_id,
        upstream: config.upstream_authority.clone(),
    }
}

/// Maps the configured key type onto the CA's; the config crate keeps its own enum so that it
/// does not depend on the crypto crate.
fn key_type(configured: twid_config::KeyType) -> twid_ca::KeyType {
    match configured {
        twid_config::KeyType::EcP256 => twid_ca::KeyType::EcP256,
        twid_config::KeyType::EcP384 => twid_ca::KeyType::EcP384,
        twid_config::KeyType::Rsa2048 => twid_ca::KeyType::Rsa2048,
        twid_config::KeyType::Rsa4096 => twid_ca::KeyType::Rsa4096,
    }
}

/// Starts the OIDC discovery endpoint when `endpoints.oidc_discovery` enables it, with the
/// signed revocation list at `/revocations`.
async fn start_oidc_discovery(
    shared: &Arc<Shared>,
    keys: &OidcKeys,
    health: &Health,
) -> Result<Option<twid_oidc::OidcHandle>, ServerError> {
    let config = &shared.config;
    let Some(oidc) = config.oidc_discovery.as_ref().filter(|oidc| oidc.enabled) else {
        return Ok(None);
    };
    let tls = oidc.tls_cert_file.clone().zip(oidc.tls_key_file.clone());
    let source = IssuerKeySource {
        keys: keys.clone(),
        issuer: oidc.issuer.clone(),
    };
    let oidc_config = twid_oidc::OidcConfig {
        bind: SocketAddr::new(oidc.bind_address, oidc.bind_port),
        issuer: oidc.issuer.clone(),
        tls,
        cors_origins: oidc.cors_origins.clone(),
    };
    let revocations = revocation::SignedListSource {
        shared: Arc::clone(shared),
    };
    let handle = twid_oidc::serve_with_revocations(
        oidc_config,
        Arc::new(source),
        Some(Arc::new(revocations)),
        health.clone(),
    )
    .await?;
    if oidc.tls_cert_file.is_none() {
        tracing::warn!(
            address = %handle.local_addr(),
            issuer = %oidc.issuer,
            "OIDC discovery endpoint serves plain HTTP; put a TLS-terminating proxy in front, \
             AWS requires HTTPS"
        );
    }
    tracing::info!(
        address = %handle.local_addr(),
        issuer = %oidc.issuer,
        tls = oidc.tls_cert_file.is_some(),
        "OIDC discovery endpoint started"
    );
    Ok(Some(handle))
}

async fn twid_telemetry_listeners(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(), ServerError> {
    let config = &shared.config;
    if let Some(prometheus) = &config.telemetry.prometheus {
        let handle = twid_telemetry::serve_prometheus(prometheus.address()?).await?;
        tasks.spawn(stop_on_shutdown(handle, shutdown.clone()));
    }
    if config.health_checks.listener_enabled {
        let checks = &config.health_checks;
        let handle = twid_telemetry::serve_health(
            checks.address()?,
            &checks.live_path,
            &checks.ready_path,
            shared.health.clone(),
        )
        .await?;
        tasks.spawn(stop_on_shutdown(handle, shutdown.clone()).in_current_span());
    }
    Ok(())
}

/// Waits for a telemetry listener task, aborting it when the server shuts down because those
/// listeners never end on their own.
async fn stop_on_shutdown(
    mut handle: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        result = &mut handle => {
            if let Ok(Err(error)) = result {
                tracing::error!(%error, "telemetry listener failed");
            }
        }
        () = shutdown.cancelled() => handle.abort(),
    }
}
