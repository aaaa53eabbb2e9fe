//! The agent's settings taken from its configuration, checked once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use twid_attestation::node::evidence::Collector;
use twid_attestation::node::evidence::configfs_tsm::ConfigfsTsmCollector;
use twid_attestation::node::evidence::exec::ExecCollector;
use twid_attestation::node::evidence::tpm::{TpmCollector, TpmSettings};

use twid_attestation::workload::unix::UnixAttestorOptions;
use twid_spiffe::TrustDomain;

use crate::{AgentError, AgentOptions};

/// The format of the operator's trust bundle file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BundleFormat {
    /// PEM `CERTIFICATE` blocks.
    Pem,
    /// A SPIFFE bundle document (JWK Set with `x509-svid` keys).
    Spiffe,
}

impl BundleFormat {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Pem => "PEM",
            Self::Spiffe => "SPIFFE",
        }
    }
}

/// The `/live` and `/ready` listener.
#[derive(Debug, Clone)]
pub(crate) struct HealthListener {
    pub(crate) address: SocketAddr,
    pub(crate) live_path: String,
    pub(crate) ready_path: String,
}

/// The agent's settings, independent of the configuration file format.
#[derive(Clone)]
pub(crate) struct AgentSettings {
    pub(crate) trust_domain: TrustDomain,
    /// The server replicas' node API addresses, in the order the agent tries them.
    pub(crate) server_addresses: Vec<twid_config::ServerAddress>,
    pub(crate) socket_path: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) trust_bundle: Option<(PathBuf, BundleFormat)>,
    pub(crate) insecure_bootstrap: bool,
    pub(crate) join_token: Option<String>,
    pub(crate) sync_interval: Duration,
    /// Maximum workload SVIDs signed by a tainted authority that one sync round replaces.
    pub(crate) taint_batch_size: usize,
    /// Pause between two rounds that replace SVIDs of a tainted authority.
    pub(crate) taint_batch_interval: Duration,
    /// Workload X.509-SVIDs kept signed while more entries are authorized; requested entries
    /// are signed beyond it.
    pub(crate) x509_svid_cache_max_size: usize,
    pub(crate) first_sync_timeout: Duration,
    pub(crate) health: Option<HealthListener>,
    pub(crate) prometheus: Option<SocketAddr>,
    pub(crate) unix_attestor: UnixAttestorOptions,
    pub(crate) sds: twid_config::SdsConfig,
    /// The evidence node attestor and its collector; `None` means join token attestation.
    pub(crate) evidence: Option<EvidenceSettings>,
}

/// An evidence node attestor: the name sent to the server and the collector.
#[derive(Clone, Debug)]
pub(crate) struct EvidenceSettings {
    pub(crate) attestor: String,
    pub(crate) collector: Arc<dyn Collector>,
}

impl std::fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The join token is a credential until the server consumes it, so it is never shown.
        f.debug_struct("AgentSettings")
            .field("trust_domain", &self.trust_domain)
            .field("server_addresses", &self.server_addresses)
            .field("socket_path", &self.socket_path)
            .field("data_dir", &self.data_dir)
            .field("trust_bundle", &self.trust_bundle)
            .field("insecure_bootstrap", &self.insecure_bootstrap)
            .field("join_token_set", &self.join_token.is_some())
            .field("sync_interval", &self.sync_interval)
            .field("taint_batch_size", &self.taint_batch_size)
            .field("taint_batch_interval", &self.taint_batch_interval)
            .field("x509_svid_cache_max_size", &self.x509_svid_cache_max_size)
            .field("first_sync_timeout", &self.first_sync_timeout)
            .field("health", &self.health)
            .field("prometheus", &self.prometheus)
            .field("unix_attestor", &self.unix_attestor)
            .field("sds", &self.sds)
            .field("evidence", &self.evidence)
            .finish()
    }
}

impl AgentSettings {
    /// Converts the loaded configuration, applying the overrides in `options`.
    pub(crate) fn from_config(
        config: twid_config::AgentConfig,
        options: &AgentOptions,
    ) -> Result<Self, AgentError> {
        let trust_bundle = config.trust_bundle_path.map(|path| {
            let format = match config.trust_bundle_format {
                twid_config::TrustBundleFormat::Pem => BundleFormat::Pem,
                twid_config::TrustBundleFormat::Spiffe => BundleFormat::Spiffe,
            };
            (path, format)
        });
        let health = if config.health_checks.listener_enabled {
            Some(HealthListener {
                address: config.health_checks.address().map_err(invalid_address)?,
                live_path: config.health_checks.live_path.clone(),
                ready_path: config.health_checks.ready_path.clone(),
            })
        } else {
            None
        };
        let prometheus = config
            .telemetry
            .prometheus
            .as_ref()
            .map(|prometheus| prometheus.address().map_err(invalid_address))
            .transpose()?;
        let evidence = evidence_settings(config.evidence_attestor.as_ref(), options)?;
        let settings = Self {
            trust_domain: config.trust_domain,
            server_addresses: config.server_addresses,
            socket_path: config.socket_path,
            data_dir: config.data_dir,
            trust_bundle,
            insecure_bootstrap: config.insecure_bootstrap,
            join_token: config.join_token.filter(|token| !token.is_empty()),
            sync_interval: options.sync_interval.unwrap_or(config.sync_interval),
            taint_batch_size: config.taint_batch_size,
            taint_batch_interval: config.taint_batch_interval,
            x509_svid_cache_max_size: config.x509_svid_cache_max_size,
            first_sync_timeout: options.first_sync_timeout,
            health,
            prometheus,
            unix_attestor: UnixAttestorOptions {
                discover_workload_path: config.unix_attestor.discover_workload_path,
                workload_size_limit: config.unix_attestor.workload_size_limit,
            },
            sds: config.sds,
            evidence,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Rejects values the agent cannot run with.
    pub(crate) fn validate(&self) -> Result<(), AgentError> {
        if self.server_addresses.is_empty() {
            return Err(AgentError::Config(
                "no server address: set server_address to the server's host name or IP address"
                    .to_owned(),
            ));
        }
        for address in &self.server_addresses {
            if address.host.is_empty() {
                return Err(AgentError::Config(format!(
                    "server address {address} has an empty host: set it to the server's host \
                     name or IP address"
                )));
            }
            if address.port == 0 {
                return Err(AgentError::Config(format!(
                    "server address {address} has port 0: set it to the port of the server's \
                     node API"
                )));
            }
        }
        if self.socket_path.as_os_str().is_empty() {
            return Err(AgentError::Config("socket_path is empty".to_owned()));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(AgentError::Config("data_dir is empty".to_owned()));
        }
        if self.sync_interval.is_zero() {
            return Err(AgentError::Config(
                "sync_interval is 0: set a positive duration such as 5s".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Builds the collector the configuration selects, or takes the one from `options`.
fn evidence_settings(
    attestor: Option<&twid_config::EvidenceNodeAttestor>,
    options: &AgentOptions,
) -> Result<Option<EvidenceSettings>, AgentError> {
    if let Some(collector) = &options.collector {
        let name = attestor.map_or_else(
            || twid_config::attestor_name(collector.kind()).to_owned(),
            |attestor| attestor.name.clone(),
        );
        return Ok(Some(EvidenceSettings {
            attestor: name,
            collector: Arc::clone(collector),
        }));
    }
    let Some(attestor) = attestor else {
        return Ok(None);
    };
    let collector: Arc<dyn Collector> = match &attestor.collector {
        twid_config::CollectorConfig::ConfigfsTsm { tsm_path } => {
            Arc::new(ConfigfsTsmCollector::new(attestor.kind, tsm_path.clone()))
        }
        twid_config::CollectorConfig::Exec { command } => {
            Arc::new(ExecCollector::new(attestor.kind, command.clone()))
        }
        twid_config::CollectorConfig::Tpm(tpm) => {
            let defaults = TpmSettings::default();
            Arc::new(TpmCollector::new(TpmSettings {
                tcti: tpm.tcti.clone().unwrap_or(defaults.tcti),
                ak_handle_or_context: tpm
                    .ak_handle
                    .map_or(defaults.ak_handle_or_context, |handle| {
                        format!("0x{handle:08x}")
                    }),
                bank: tpm.pcr_bank.clone(),
                pcrs: tpm.pcrs.clone(),
                event_log_path: None,
            }))
        }
    };
    Ok(Some(EvidenceSettings {
        attestor: attestor.name.clone(),
        collector,
    }))
}

fn invalid_address(error: twid_config::ConfigError) -> AgentError {
    AgentError::Config(error.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Settings for tests, pointing at `127.0.0.1:port` with everything else off.
    pub(crate) fn test_settings(dir: &std::path::Path, port: u16) -> AgentSettings {
        AgentSettings {
            trust_domain: TrustDomain::new("example.org").expect("trust domain"),
            server_addresses: vec![twid_config::ServerAddress {
                host: "127.0.0.1".to_owned(),
                port,
            }],
            socket_path: dir.join("agent.sock"),
            data_dir: dir.join("data"),
            trust_bundle: None,
            insecure_bootstrap: false,
            join_token: None,
            sync_interval: Duration::from_secs(5),
            taint_batch_size: 100,
            taint_batch_interval: Duration::from_secs(1),
            x509_svid_cache_max_size: 1000,
            first_sync_timeout: Duration::from_secs(1),
            health: None,
            prometheus: None,
            unix_attestor: UnixAttestorOptions::default(),
            sds: twid_config::SdsConfig::default(),
            evidence: None,
        }
    }

    #[test]
    fn debug_hides_join_token() {
        let dir = std::path::Path::new("/tmp");
        let mut settings = test_settings(dir, 8081);
        settings.join_token = Some("secret-token-value".to_owned());
        let debug_output = format!("{settings:?}");
        assert!(
            !debug_output.contains("secret-token-value"),
            "{debug_output}"
        );
        assert!(
            debug_output.contains("join_token_set: true"),
            "{debug_output}"
        );
    }

    #[test]
    fn zero_port_and_interval_are_rejected() {
        let dir = std::path::Path::new("/tmp");
        let mut settings = test_settings(dir, 0);
        assert!(settings.validate().is_err());
        settings.server_addresses[0].port = 8081;
        assert!(settings.validate().is_ok());
        settings.sync_interval = Duration::ZERO;
        assert!(settings.validate().is_err());
    }
}
