//! One module per top-level command.

pub(crate) mod agents;
pub(crate) mod api;
pub(crate) mod attest;
pub(crate) mod attest_workload;
pub(crate) mod aws;
pub(crate) mod bundle;
pub(crate) mod dev;
pub(crate) mod entry;
pub(crate) mod federation;
pub(crate) mod healthcheck;
pub(crate) mod helper;
pub(crate) mod localauthority;
pub(crate) mod log;
pub(crate) mod oidc_provider;
pub(crate) mod policy;
pub(crate) mod revoke;
pub(crate) mod run;
pub(crate) mod svid;
pub(crate) mod token;
pub(crate) mod wimse;
pub(crate) mod write_dir;

use std::time::Duration;

/// Parses a TTL flag: a Go-style duration (`10m`, `1h30m`) or a bare number of seconds, as
/// SPIRE's integer `-ttl` flags take.
pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    twid_config::parse_duration(text).map_err(|error| error.to_string())
}
