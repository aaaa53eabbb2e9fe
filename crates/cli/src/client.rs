//! gRPC channels over Unix sockets for the admin API and the Workload API.

use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

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
    let result = Endpoint::try_from("http://localhost")?
        .connect_with_connector(connector)
        .await;
    result.map_err(|error| {
        let hint = connect_hint(path, &error);
        // The transport error's own text adds only "transport error", and its sources repeat
        // the OS error, so the message names the OS error once.
        match first_io_error(&error) {
            Some(io) => anyhow::anyhow!("failed to connect to {}: {io}; {hint}", path.display()),
            None => anyhow::Error::new(error)
                .context(format!("failed to connect to {}: {hint}", path.display())),
        }
    })
}

/// Returns the first I/O error in `error`'s source chain, `error` included.
fn first_io_error<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e std::io::Error> {
    let mut source = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = current.source();
    }
    None
}

/// Hint for a socket that the caller may not open.
const PERMISSION_HINT: &str =
    "permission denied on the socket or its directory; run as the owner or as root";

/// Returns what to check after a failed connection to the socket at `path`. A socket the
/// caller may not open fails with EACCES, which needs a different fix than a socket without a
/// listener. The hint reads the connection's own error first, because `stat` succeeds on a
/// socket whose `connect` is denied.
fn connect_hint(path: &Path, error: &(dyn std::error::Error + 'static)) -> &'static str {
    if first_io_error(error).is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied) {
        return PERMISSION_HINT;
    }
    match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => PERMISSION_HINT,
        Err(_) => "no socket there: is the process running? Give its socket with --socket-path",
        Ok(metadata) if metadata.is_dir() => {
            "this is a directory: give the socket inside it with --socket-path"
        }
        Ok(metadata) if !metadata.file_type().is_socket() => {
            "this is not a socket: give the process's socket with --socket-path"
        }
        Ok(_) => "is the process running, and is this its socket? Give another with --socket-path",
    }
}

/// Connects to a server's admin API.
///
/// `path` comes from `--socket-path`, which takes a path or a `unix:` address, as for the
/// Workload API commands.
pub(crate) async fn admin(path: &Path) -> anyhow::Result<AdminClient<Channel>> {
    let path = flag_socket(path.to_path_buf())?;
    Ok(AdminClient::new(unix_channel(&path).await?))
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
/// same value works in both places. Schemes match without regard to case, as in the variable.
pub(crate) fn workload_socket(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        return flag_socket(path);
    }
    match std::env::var_os("SPIFFE_ENDPOINT_SOCKET") {
        // A value that is not UTF-8 is an error, not an unset variable. Falling back to the
        // default socket would hand the workload another agent's identities.
        Some(value) => match value.to_str() {
            Some(value) => endpoint_path("SPIFFE_ENDPOINT_SOCKET", value),
            None => anyhow::bail!(
                "invalid SPIFFE_ENDPOINT_SOCKET {:?}: an endpoint address must be valid UTF-8",
                value.display()
            ),
        },
        None => Ok(PathBuf::from(DEFAULT_AGENT_SOCKET)),
    }
}

/// Returns the socket path that `--socket-path` gives: `path` itself, or the path of the `unix:`
/// address it contains.
fn flag_socket(path: PathBuf) -> anyhow::Result<PathBuf> {
    if !has_endpoint_scheme(path.as_os_str().as_encoded_bytes()) {
        return Ok(path);
    }
    let Some(value) = path.to_str() else {
        anyhow::bail!(
            "invalid --socket-path {:?}: an endpoint address must be valid UTF-8",
            path.display()
        );
    };
    endpoint_path("--socket-path", value)
}

/// Returns whether `value` starts with the `unix:` or `tcp:` scheme, in any case.
fn has_endpoint_scheme(value: &[u8]) -> bool {
    ["unix:", "tcp:"].iter().any(|scheme| {
        value
            .get(..scheme.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(scheme.as_bytes()))
    })
}

/// Returns the socket path of the SPIFFE endpoint address `value`. Errors name `setting`, the
/// flag or variable that gave it.
fn endpoint_path(setting: &str, value: &str) -> anyhow::Result<PathBuf> {
    match twid_spiffe::endpoint::EndpointAddress::parse(value) {
        Ok(twid_spiffe::endpoint::EndpointAddress::Unix(path)) => Ok(path),
        Ok(_) => anyhow::bail!(
            "{setting} {value:?} is a TCP address, but this command connects to Unix sockets only"
        ),
        // The parse error quotes the value.
        Err(error) => anyhow::bail!("invalid {setting}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    // Bench targets include this file by path, and their harness drops the tests, so the
    // tests name what they use instead of importing it.
    #[test]
    fn socket_flag_accepts_unix_addresses() {
        let cases = [
            ("/run/twid/agent.sock", "/run/twid/agent.sock"),
            ("relative/agent.sock", "relative/agent.sock"),
            ("unix:///run/twid/agent.sock", "/run/twid/agent.sock"),
            ("unix:/run/twid/agent.sock", "/run/twid/agent.sock"),
        ];
        for (flag, expected) in cases {
            let resolved = super::workload_socket(Some(std::path::PathBuf::from(flag)));
            assert_eq!(
                resolved.unwrap(),
                std::path::PathBuf::from(expected),
                "flag {flag}"
            );
        }
    }

    #[test]
    fn socket_flag_rejects_bad_addresses() {
        let error = |flag: &str| {
            super::workload_socket(Some(std::path::PathBuf::from(flag)))
                .unwrap_err()
                .to_string()
        };
        let tcp = error("tcp://127.0.0.1:8081");
        assert!(
            tcp.starts_with("--socket-path \"tcp://127.0.0.1:8081\" is a TCP address"),
            "{tcp}"
        );
        let upper_tcp = error("TCP://127.0.0.1:8081");
        assert!(upper_tcp.contains("is a TCP address"), "{upper_tcp}");
        let relative = error("unix:relative.sock");
        assert!(
            relative
                .starts_with("invalid --socket-path: unix endpoint address \"unix:relative.sock\""),
            "{relative}"
        );
        let newline = error("unix:/tmp/a\nb?x");
        assert!(!newline.contains('\n'), "{newline}");
    }

    #[test]
    fn admin_socket_flag_takes_unix_address() {
        let resolved = super::flag_socket(std::path::PathBuf::from("unix:///run/twid/server.sock"));
        assert_eq!(
            resolved.unwrap(),
            std::path::PathBuf::from("/run/twid/server.sock")
        );
    }

    #[test]
    fn socket_flag_scheme_ignores_case() {
        let resolved = super::workload_socket(Some(std::path::PathBuf::from(
            "UNIX:///run/twid/agent.sock",
        )));
        assert_eq!(
            resolved.unwrap(),
            std::path::PathBuf::from("/run/twid/agent.sock")
        );
    }

    #[test]
    fn socket_flag_rejects_non_utf8_address() {
        use std::os::unix::ffi::OsStrExt;
        let flag = std::ffi::OsStr::from_bytes(b"unix:/tmp/\xff.sock");
        let error = super::workload_socket(Some(std::path::PathBuf::from(flag)))
            .unwrap_err()
            .to_string();
        assert!(error.contains("must be valid UTF-8"), "{error}");
    }

    #[test]
    fn connect_hint_names_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        let connection_refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases = [
            (dir.path().to_path_buf(), "is a directory"),
            (file, "is not a socket"),
            (dir.path().join("missing.sock"), "no socket there"),
        ];
        for (path, expected) in cases {
            let hint = super::connect_hint(&path, &connection_refused);
            assert!(hint.contains(expected), "{}: {hint}", path.display());
        }
    }
}
