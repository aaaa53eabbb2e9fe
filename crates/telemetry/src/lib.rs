//! Process telemetry for the server and the agent: logging setup, the Prometheus metrics
//! recorder and its `/metrics` listener, and the `/live` and `/ready` health listener.
//!
//! Everything here is process-wide and idempotent, because `twid dev` runs a server and an
//! agent in one process and tests call the setup functions repeatedly.

#![forbid(unsafe_code)]

pub mod health;
pub mod logging;
pub mod metrics;

pub use health::{Health, serve_health};
pub use logging::{LogFormat, LogGuard, init_logging};
pub use metrics::{install_metrics_recorder, names, serve_prometheus};

/// Errors from setting up logging or starting a telemetry listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The log level is not one of DEBUG, INFO, WARN or ERROR.
    #[error("invalid log level {0:?}: expected DEBUG, INFO, WARN or ERROR")]
    InvalidLevel(String),
    /// `RUST_LOG` is set but is not a valid filter directive.
    #[error("invalid RUST_LOG filter {value:?}: {source}")]
    InvalidFilter {
        /// The value of `RUST_LOG`.
        value: String,
        /// The parser's error.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A listener could not bind its address.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: std::net::SocketAddr,
        /// The I/O error from `bind`.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod test_http;
