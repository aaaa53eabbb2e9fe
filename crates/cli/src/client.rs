//! gRPC channels over Unix sockets for the admin API and the Workload API.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use twid_proto::admin::admin_client::AdminClient;
use twid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// The admin socket of a server started with its default configuration.
pub(crate) const DEFAULT_SERVER_SOCKET: &str = "/tmp/twid-server/private/api.sock";

/// The Workload API socket of an agent started with its default configuration.
pub(crate) const DEFAULT_AGENT_SOCKET: &str = "/tmp/twid-agent/public/api.sock";

/// Opens a gRPC channel to a Unix socket.
///
/// The URI host is never used for routing; tonic sends it as `:authority`.
pub(crate) async fn unix_channel(path: &Path) -> anyhow::Result<Channel> {
    let socket = path.to_path_buf();
    let connector = tower::service_fn(move |_| {
        let socket = socket.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(&socket).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // A socket the caller may not open fails with EACCES, which needs a different fix than a
    // socket without a listener, so the hint depends on the error.
    let hint = match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            "permission denied on the socket or its directory; run as the owner or as root"
        }
        Err(_) => "no socket there: is the process running? Give its socket with --socket-path",
        Ok(_) => "is the process running, and is this its socket? Give another with --socket-path",
    };
    Endpoint::try_from("http://localhost")?
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("failed to connect to {}: {hint}", path.display()))
}

/// Connects to a server's admin API.
pub(crate) async fn admin(path: &Path) -> anyhow::Result<AdminClient<Channel>> {
    Ok(AdminClient::new(unix_channel(path).await?))
}

/// Adds the `workload.spiffe.io: true` header that the Workload API requires on every call.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WorkloadHeader;

impl Interceptor for WorkloadHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(
            twid_proto::WORKLOAD_API_HEADER,
            MetadataValue::from_static("true"),
        );
        Ok(request)
    }
}

/// A Workload API client that sends the required header.
pub(crate) type WorkloadClient = SpiffeWorkloadApiClient<
    tonic::service::interceptor::InterceptedService<Channel, WorkloadHeader>,
>;

/// Connects to an agent's Workload API.
pub(crate) async fn workload(path: &Path) -> anyhow::Result<WorkloadClient> {
    let channel = unix_channel(path).await?;
    Ok(SpiffeWorkloadApiClient::with_interceptor(
        channel,
        WorkloadHeader,
    ))
}

/// Resolves the Workload API socket: the flag, else `SPIFFE_ENDPOINT_SOCKET`, else the default.
///
/// The flag takes a path, or a `unix:` address as `SPIFFE_ENDPOINT_SOCKET` does, so that the
/// same value works in both places.
pub(crate) fn workload_socket(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        return match path.to_str() {
            Some(text) if text.starts_with("unix:") || text.starts_with("tcp:") => {
                endpoint_path(&format!("--socket-path {text}"), text)
            }
            _ => Ok(path),
        };
    }
    match std::env::var("SPIFFE_ENDPOINT_SOCKET") {
        Ok(value) => endpoint_path(&format!("SPIFFE_ENDPOINT_SOCKET={value}"), &value),
        Err(_) => Ok(PathBuf::from(DEFAULT_AGENT_SOCKET)),
    }
}

/// Returns the socket path of the SPIFFE endpoint address `value`. Errors name `setting`,
/// the flag or variable with its value.
fn endpoint_path(setting: &str, value: &str) -> anyhow::Result<PathBuf> {
    match twid_spiffe::endpoint::EndpointAddress::parse(value) {
        Ok(twid_spiffe::endpoint::EndpointAddress::Unix(path)) => Ok(path),
        Ok(_) => {
            anyhow::bail!(
                "{setting} is a TCP address, but this command connects to Unix sockets only"
            )
        }
        Err(error) => anyhow::bail!("invalid {setting}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    // Bench targets include this file by path, and their harness drops the tests, so the
    // tests name what they use instead of importing it.
    #[test]
    fn socket_flag_accepts_unix_addresses() {
        let resolve = |flag: &str| super::workload_socket(Some(std::path::PathBuf::from(flag)));
        assert_eq!(
            resolve("/run/twid/agent.sock").unwrap(),
            std::path::PathBuf::from("/run/twid/agent.sock")
        );
        assert_eq!(
            resolve("relative/agent.sock").unwrap(),
            std::path::PathBuf::from("relative/agent.sock")
        );
        assert_eq!(
            resolve("unix:///run/twid/agent.sock").unwrap(),
            std::path::PathBuf::from("/run/twid/agent.sock")
        );
        assert_eq!(
            resolve("unix:/run/twid/agent.sock").unwrap(),
            std::path::PathBuf::from("/run/twid/agent.sock")
        );
    }

    #[test]
    fn socket_flag_rejects_bad_addresses() {
        let tcp = super::workload_socket(Some(std::path::PathBuf::from("tcp://127.0.0.1:8081")))
            .unwrap_err()
            .to_string();
        assert!(
            tcp.contains("--socket-path tcp://127.0.0.1:8081 is a TCP address"),
            "{tcp}"
        );
        let relative = super::workload_socket(Some(std::path::PathBuf::from("unix:relative.sock")))
            .unwrap_err()
            .to_string();
        assert!(
            relative.starts_with("invalid --socket-path unix:relative.sock"),
            "{relative}"
        );
    }
}
