//! Process-wide `tracing` subscriber setup.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use crate::TelemetryError;

/// Set once the first [`init_logging`] call has installed (or tried to install) a subscriber.
static INSTALLED: OnceLock<()> = OnceLock::new();

/// Output format of log lines, as the `log_format` configuration key selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Returned by [`init_logging`]; hold it for the life of the process.
///
/// Logging writes to stderr synchronously, so dropping the guard currently flushes nothing.
/// It exists so that a buffered writer can be added without changing callers.
#[derive(Debug)]
#[must_use = "hold the guard for the life of the process"]
pub struct LogGuard {
    _private: (),
}

/// Installs the global `tracing` subscriber that writes to stderr.
///
/// `level` is DEBUG, INFO, WARN or ERROR in any case. When the `RUST_LOG` environment variable
/// is set and not empty, its filter directives replace `level`. Calls after the first one in a
/// process validate `level` and return `Ok` without changing anything. If another subscriber
/// was installed before the first call, that subscriber stays in place.
///
/// # Errors
/// Returns [`TelemetryError::InvalidLevel`] for any other level and
/// [`TelemetryError::InvalidFilter`] when `RUST_LOG` does not parse.
pub fn init_logging(level: &str, format: LogFormat) -> Result<LogGuard, TelemetryError> {
    let level = parse_level(level)?;
    if INSTALLED.get().is_some() {
        return Ok(LogGuard { _private: () });
    }
    let filter = build_filter(level, std::env::var("RUST_LOG").ok())?;
    INSTALLED.get_or_init(|| install(filter, format));
    Ok(LogGuard { _private: () })
}

/// Maps a configured level name to a filter directive.
fn parse_level(level: &str) -> Result<&'static str, TelemetryError> {
    match level.to_ascii_uppercase().as_str() {
        "DEBUG" => Ok("debug"),
        "INFO" => Ok("info"),
        "WARN" => Ok("warn"),
        "ERROR" => Ok("error"),
        _ => Err(TelemetryError::InvalidLevel(level.to_owned())),
    }
}

/// Builds the filter from `RUST_LOG` when it is set and not empty, else from `level`.
fn build_filter(level: &str, rust_log: Option<String>) -> Result<EnvFilter, TelemetryError> {
    match rust_log.filter(|value| !value.trim().is_empty()) {
        Some(value) => EnvFilter::try_new(&value)
            .map_err(|source| TelemetryError::InvalidFilter { value, source }),
        None => Ok(EnvFilter::new(level)),
    }
}

fn install(filter: EnvFilter, format: LogFormat) {
    use std::io::IsTerminal as _;
    // Colour codes only help a terminal; in files and log collectors they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // `try_init` fails only when a global subscriber already exists (a test harness or an
    // embedding program installed one); keeping that subscriber is the intended outcome.
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_levels_in_any_case() {
        assert_eq!(parse_level("debug").unwrap(), "debug");
        assert_eq!(parse_level("Info").unwrap(), "info");
        assert_eq!(parse_level("WARN").unwrap(), "warn");
        assert_eq!(parse_level("error").unwrap(), "error");
    }

    #[test]
    fn rejects_unknown_level() {
        let err = parse_level("verbose").unwrap_err();
        assert!(matches!(err, TelemetryError::InvalidLevel(ref l) if l == "verbose"));
        assert!(err.to_string().contains("\"verbose\""));
    }

    #[test]
    fn rust_log_overrides_level() {
        let filter = build_filter("info", Some("twid=trace".into())).unwrap();
        assert_eq!(filter.to_string(), "twid=trace");
    }

    #[test]
    fn empty_rust_log_keeps_level() {
        let filter = build_filter("warn", Some("  ".into())).unwrap();
        assert_eq!(filter.to_string(), "warn");
    }

    #[test]
    fn invalid_rust_log_is_an_error() {
        let err = build_filter("info", Some("twid=loud".into())).unwrap_err();
        assert!(matches!(err, TelemetryError::InvalidFilter { .. }));
    }

    #[test]
    fn second_init_is_a_no_op() {
        let first = init_logging("debug", LogFormat::Json);
        assert!(first.is_ok());
        let second = init_logging("INFO", LogFormat::Text);
        assert!(second.is_ok());
        assert!(init_logging("loud", LogFormat::Text).is_err());
    }
}
