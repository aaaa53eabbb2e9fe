//! The agent's error type.

use std::path::PathBuf;
use std::time::Duration;

/// An error that stopped the agent from starting or from reaching its server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A configuration value is unusable.
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// Reading or writing a file in the data directory or the trust bundle failed.
    #[error("failed to access {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Key generation, CSR creation or key parsing failed.
    #[error("{0}")]
    Crypto(String),
    /// A certificate, chain or bundle from disk or from the server is malformed.
    #[error("invalid SVID or bundle: {0}")]
    InvalidSvid(String),
    /// Building the TLS configuration for the server connection failed.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] twid_tls::TlsError),
    /// There is no way to trust the server for the first attestation.
    #[error(
        "no trust bundle for the server: set trust_bundle_path to the server's CA certificates \
         or set insecure_bootstrap = true"
    )]
    NoBootstrapTrust,
    /// The agent has no stored SVID and no join token to attest with.
    #[error(
        "no join token: the agent has no usable stored SVID in its data directory, so it needs \
         join_token to attest"
    )]
    MissingJoinToken,
    /// The evidence collector failed to produce evidence for the server's challenge.
    #[error("evidence collection failed: {0}")]
    Collect(String),
    /// The server rejected or failed the attestation.
    #[error("attestation failed: {message} (gRPC code {code:?})")]
    Attestation {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's status message.
        message: String,
    },
    /// The server rejected the agent's stored SVID and there is no join token to attest again.
    #[error(
        "the server rejected the stored agent SVID: {message}; set a new join_token to attest \
         again"
    )]
    Rejected {
        /// The server's status message.
        message: String,
    },
    /// A node API call failed.
    #[error("node API call {call} failed: {message} (gRPC code {code:?})")]
    Rpc {
        /// The RPC name.
        call: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's status message.
        message: String,
    },
    /// Binding the Workload API socket failed.
    #[error("failed to bind the Workload API socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Starting the health or metrics listener failed.
    #[error("failed to start a telemetry listener: {0}")]
    Telemetry(#[from] twid_telemetry::TelemetryError),
    /// The first sync with the server did not finish in time.
    #[error("the agent did not complete its first sync with the server within {0:?}")]
    FirstSyncTimeout(Duration),
}

impl AgentError {
    /// Wraps a failed node API call.
    pub(crate) fn rpc(call: &'static str, status: &tonic::Status) -> Self {
        Self::Rpc {
            call,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    /// Returns whether a node API call failed at the connection level, so that another server
    /// replica may serve it: Unavailable (refused, reset or closed connections) and
    /// DeadlineExceeded (no response within the call limit).
    ///
    /// NOTE: a call in flight when the server's connection closes fails with Unknown
    /// ("transport error"), which is not counted here. The retry on the same address then
    /// fails with Unavailable and moves on, which costs one retry delay.
    pub(crate) fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            Self::Rpc {
                code: tonic::Code::Unavailable | tonic::Code::DeadlineExceeded,
                ..
            }
        )
    }

    /// Returns whether the server rejected the agent itself: it returns PermissionDenied for
    /// an evicted or banned agent or a superseded SVID, and Unauthenticated for a missing or
    /// invalid client certificate.
    pub(crate) fn is_agent_rejected(&self) -> bool {
        matches!(
            self,
            Self::Rpc {
                code: tonic::Code::PermissionDenied | tonic::Code::Unauthenticated,
                ..
            }
        )
    }
}
