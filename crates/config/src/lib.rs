//! Configuration files of the twid server and agent, and of `twid helper`.
//!
//! The files are HCL and use SPIRE's key names and block layout wherever the setting means the
//! same, so a SPIRE operator can read them and many SPIRE files load unchanged. Anything twid
//! does not implement (an unknown key, a SPIRE-only setting, a plugin twid lacks) is an error
//! rather than silently ignored. Every error names the file and line, and usually the key and
//! value: `server.conf:3: bind_port = "abc": invalid port, expected an integer 1-65535`.
//!
//! `docs/configuration.md` lists every server and agent key with its default, and
//! `docs/helper.md` every helper key (spiffe-helper's names).

#![forbid(unsafe_code)]

mod agent;
mod common;
mod document;
mod duration;
mod env;
mod error;
mod evidence;
mod federation;
mod helper;
mod issuers;
mod plugins;
mod server;
mod values;

use std::path::Path;

pub use agent::{AgentConfig, SdsConfig, ServerAddress, TrustBundleFormat, UnixAttestorConfig};
pub use common::{HealthChecks, LogFormat, LogLevel, ParseValueError, Prometheus, Telemetry};
pub use duration::{format_duration, parse_duration};
pub use error::ConfigError;
pub use evidence::{
    CollectorConfig, DEFAULT_PCR_BANK, DEFAULT_TPM_PCRS, DEFAULT_TSM_PATH, DocumentPolicy,
    EvidenceAttestorConfig, EvidenceNodeAttestor, TpmCollectorConfig, attestor_name,
    document_policies, evidence_kind,
};
pub use federation::{
    BundleEndpointConfig, EndpointProfile, FederatesWithConfig, FederationConfig, ServingProfile,
    bundle_endpoint_url_str,
};
pub use helper::{HelperConfig, HelperFileFormat, JwtSvidFile};
pub use issuers::{JwtIssuerConfig, OidcDiscoveryConfig};
pub use server::{CaSubject, KeyManager, KeyType, ServerConfig, UpstreamAuthorityDisk};

/// Reads a configuration file, expanding environment variables when asked to.
fn read_file(path: &Path, expand_env: bool) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !expand_env {
        return Ok(text);
    }
    env::expand(&text, &path.display().to_string(), |name| {
        std::env::var(name)
    })
}
