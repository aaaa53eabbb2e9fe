//! Settings that the server and the agent share: logging, `health_checks` and `telemetry`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::ConfigError;
use crate::document::{Schema, Section};
use crate::values;

/// The error of the `FromStr` implementations for the enumerated settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting} {input:?}, expected {expected}")]
pub struct ParseValueError {
    setting: &'static str,
    input: String,
    expected: &'static str,
}

impl ParseValueError {
    pub(crate) fn new(setting: &'static str, input: &str, expected: &'static str) -> Self {
        Self {
            setting,
            input: input.to_owned(),
            expected,
        }
    }

    /// Returns the message without the input, for errors that show the value already.
    pub(crate) fn reason(&self) -> String {
        format!("invalid {}, expected {}", self.setting, self.expected)
    }
}

/// Reads a string key as an enumerated setting.
pub(crate) fn enumerated<T>(expr: &hcl_edit::expr::Expression) -> Result<T, String>
where
    T: FromStr<Err = ParseValueError>,
{
    values::string(expr)?
        .parse()
        .map_err(|error: ParseValueError| error.reason())
}

/// Minimum severity of log lines, the `log_level` key. Parsing ignores case, so SPIRE's
/// `"DEBUG"` and `"debug"` both work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// Everything, including per-request detail.
    Debug,
    /// Lifecycle events. This is the default.
    #[default]
    Info,
    /// Problems that the process recovers from.
    Warn,
    /// Failures only.
    Error,
}

impl LogLevel {
    /// Returns the lowercase name: `"debug"`, `"info"`, `"warn"` or `"error"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Ok(Self::Debug),
            "info" => Ok(Self::Info),
            "warn" => Ok(Self::Warn),
            "error" => Ok(Self::Error),
            _ => Err(ParseValueError::new(
                "log level",
                s,
                "DEBUG, INFO, WARN or ERROR",
            )),
        }
    }
}

/// Format of log lines, the `log_format` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines. This is the default.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Returns the configuration spelling: `"text"` or `"json"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogFormat {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(ParseValueError::new("log format", s, "text or json")),
        }
    }
}

impl From<LogFormat> for twid_telemetry::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => Self::Text,
            LogFormat::Json => Self::Json,
        }
    }
}

/// The HTTP health check listener, the top-level `health_checks` block. The names and defaults
/// are SPIRE's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChecks {
    /// Whether the listener runs. Default `false`.
    pub listener_enabled: bool,
    /// IP literal or `localhost`. Default `"localhost"`.
    pub bind_address: String,
    /// Default 80.
    pub bind_port: u16,
    /// Liveness path. Default `/live`.
    pub live_path: String,
    /// Readiness path. Default `/ready`.
    pub ready_path: String,
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self {
            listener_enabled: false,
            bind_address: "localhost".to_owned(),
            bind_port: 80,
            live_path: "/live".to_owned(),
            ready_path: "/ready".to_owned(),
        }
    }
}

impl HealthChecks {
    /// Returns the socket address to listen on, mapping `localhost` to 127.0.0.1 without DNS.
    ///
    /// # Errors
    /// Returns [`ConfigError::InvalidAddress`] when `bind_address` is neither an IP literal nor
    /// `localhost`, which a loaded file never has because loading validates it.
    pub fn address(&self) -> Result<SocketAddr, ConfigError> {
        listen_address(&self.bind_address, self.bind_port)
    }
}

/// Metrics exporters, the top-level `telemetry` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Telemetry {
    /// The Prometheus scrape endpoint, or `None` when the `Prometheus` block is absent.
    pub prometheus: Option<Prometheus>,
}

/// The Prometheus scrape endpoint, `telemetry { Prometheus { host = ... port = ... } }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prometheus {
    /// IP literal or `localhost`. Default `"localhost"`.
    pub host: String,
    /// Required in the file.
    pub port: u16,
}

impl Prometheus {
    /// Returns the socket address to listen on, mapping `localhost` to 127.0.0.1 without DNS.
    ///
    /// # Errors
    /// Returns [`ConfigError::InvalidAddress`] when `host` is neither an IP literal nor
    /// `localhost`, which a loaded file never has because loading validates it.
    pub fn address(&self) -> Result<SocketAddr, ConfigError> {
        listen_address(&self.host, self.port)
    }
}

fn listen_address(host: &str, port: u16) -> Result<SocketAddr, ConfigError> {
    values::resolve_ip(host)
        .map(|ip| SocketAddr::new(ip, port))
        .map_err(|reason| ConfigError::InvalidAddress {
            address: host.to_owned(),
            reason,
        })
}

/// Reads a host key that must resolve without DNS, keeping the text as written.
fn listen_host(expr: &hcl_edit::expr::Expression) -> Result<String, String> {
    let host = values::string(expr)?;
    values::resolve_ip(&host)?;
    Ok(host)
}

const HEALTH_CHECKS: Schema = Schema {
    keys: &[
        "listener_enabled",
        "bind_address",
        "bind_port",
        "live_path",
        "ready_path",
    ],
    hints: &[],
    nested: None,
};

/// Reads the top-level `health_checks` block, or the defaults when it is absent.
pub(crate) fn health_checks(root: &Section<'_>) -> Result<HealthChecks, ConfigError> {
    let mut checks = HealthChecks::default();
    let Some(section) = root.section("health_checks")? else {
        return Ok(checks);
    };
    section.check_keys(&HEALTH_CHECKS)?;
    if let Some(enabled) = section.optional("listener_enabled", values::boolean)? {
        checks.listener_enabled = enabled;
    }
    if let Some(address) = section.optional("bind_address", listen_host)? {
        checks.bind_address = address;
    }
    if let Some(port) = section.optional("bind_port", values::port)? {
        checks.bind_port = port;
    }
    if let Some(path) = section.optional("live_path", values::http_path)? {
        checks.live_path = path;
    }
    if let Some(path) = section.optional("ready_path", values::http_path)? {
        checks.ready_path = path;
    }
    Ok(checks)
}

const SPIRE_ONLY_COLLECTOR: &str = "twid exports metrics only through the Prometheus block";

const TELEMETRY: Schema = Schema {
    keys: &["Prometheus"],
    hints: &[
        ("DogStatsd", SPIRE_ONLY_COLLECTOR),
        ("Statsd", SPIRE_ONLY_COLLECTOR),
        ("M3", SPIRE_ONLY_COLLECTOR),
        ("InMem", SPIRE_ONLY_COLLECTOR),
        ("MetricPrefix", ""),
        ("EnableTrustDomainLabel", ""),
        ("EnableHostnameLabel", ""),
        ("AllowedPrefixes", ""),
        ("BlockedPrefixes", ""),
        ("AllowedLabels", ""),
        ("BlockedLabels", ""),
    ],
    nested: None,
};

const PROMETHEUS: Schema = Schema {
    keys: &["host", "port"],
    hints: &[("tls", "")],
    nested: None,
};

/// Reads the top-level `telemetry` block. Without it, no exporter runs.
pub(crate) fn telemetry(root: &Section<'_>) -> Result<Telemetry, ConfigError> {
    let Some(section) = root.section("telemetry")? else {
        return Ok(Telemetry::default());
    };
    section.check_keys(&TELEMETRY)?;
    let Some(prometheus) = section.section("Prometheus")? else {
        return Ok(Telemetry::default());
    };
    prometheus.check_keys(&PROMETHEUS)?;
    let host = prometheus
        .optional("host", listen_host)?
        .unwrap_or_else(|| "localhost".to_owned());
    let port = prometheus.required("port", values::port)?;
    Ok(Telemetry {
        prometheus: Some(Prometheus { host, port }),
    })
}

/// Reads `log_level` and `log_format` from the `server` or `agent` block.
pub(crate) fn logging(section: &Section<'_>) -> Result<(LogLevel, LogFormat), ConfigError> {
    let level = section
        .optional("log_level", enumerated::<LogLevel>)?
        .unwrap_or_default();
    let format = section
        .optional("log_format", enumerated::<LogFormat>)?
        .unwrap_or_default();
    Ok((level, format))
}

/// Reads the required `trust_domain` key.
pub(crate) fn trust_domain(section: &Section<'_>) -> Result<twid_spiffe::TrustDomain, ConfigError> {
    section.required("trust_domain", |expr| {
        let text = values::non_empty_string(expr)?;
        twid_spiffe::TrustDomain::new(&text)
            .map_err(|error| format!("invalid trust domain: {error}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_parses_any_case() {
        for (input, expected) in [
            ("DEBUG", LogLevel::Debug),
            ("debug", LogLevel::Debug),
            ("Info", LogLevel::Info),
            ("WARN", LogLevel::Warn),
            ("error", LogLevel::Error),
        ] {
            assert_eq!(input.parse::<LogLevel>(), Ok(expected), "{input}");
        }
        let error = "TRACE".parse::<LogLevel>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid log level \"TRACE\", expected DEBUG, INFO, WARN or ERROR"
        );
    }

    #[test]
    fn log_level_as_str_lowercase() {
        assert_eq!(LogLevel::Debug.as_str(), "debug");
        assert_eq!(LogLevel::Info.as_str(), "info");
        assert_eq!(LogLevel::Warn.as_str(), "warn");
        assert_eq!(LogLevel::Error.as_str(), "error");
    }

    #[test]
    fn log_format_maps_to_telemetry() {
        assert_eq!(
            twid_telemetry::LogFormat::from(LogFormat::Json),
            twid_telemetry::LogFormat::Json
        );
        assert_eq!(
            twid_telemetry::LogFormat::from(LogFormat::Text),
            twid_telemetry::LogFormat::Text
        );
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn listen_address_resolves_localhost() {
        let checks = HealthChecks::default();
        assert_eq!(checks.address().unwrap(), "127.0.0.1:80".parse().unwrap());
        let prometheus = Prometheus {
            host: "::1".to_owned(),
            port: 9988,
        };
        assert_eq!(prometheus.address().unwrap(), "[::1]:9988".parse().unwrap());
        let bad = Prometheus {
            host: "metrics.example.org".to_owned(),
            port: 9988,
        };
        let error = bad.address().unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid listen address \"metrics.example.org\""),
            "{error}"
        );
    }
}
