//! grpcio (gRPC C-core) and tonic clients against a tonic server on this crate's Unix socket.
//!
//! C-core sends the percent-encoded socket path as `:authority`, which h2 rejects; these tests
//! show that a server behind [`twid_uds::incoming`] serves such a client and that a plain
//! tonic server does not. The Python interpreter is `$TWID_PYTHON`, else `.venv/bin/python`
//! in the workspace root (`scripts/test.sh` installs it). Without one that imports `grpc`,
//! the Python tests print a skip line and pass, except under CI (`CI` set), where they fail.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codegen::BoxStream;
use tonic::transport::{Endpoint, Server, Uri};
use tonic::{Code, Request, Response, Status};
use twid_proto::WORKLOAD_API_HEADER;
use twid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use twid_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use twid_proto::workload::{JwtBundlesRequest, JwtBundlesResponse, X509svidRequest};
use twid_uds::{PeerCredentials, UdsConnectInfo};

/// Upper bound for one Python client run, interpreter start included.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(60);

/// The bundle map every FetchJWTBundles call returns.
fn expected_response() -> JwtBundlesResponse {
    let bundles = HashMap::from([
        (
            "spiffe://example.org".to_owned(),
            br#"{"keys":[{"kty":"EC","kid":"k1","crv":"P-256","x":"AA","y":"AA"}]}"#.to_vec(),
        ),
        (
            "spiffe://federated.test".to_owned(),
            br#"{"keys":[]}"#.to_vec(),
        ),
    ]);
    JwtBundlesResponse { bundles }
}

/// Credentials of each FetchJWTBundles caller, `None` where the connection carried no
/// [`UdsConnectInfo`] (a plain tonic server).
type CallLog = Arc<Mutex<Vec<Option<PeerCredentials>>>>;

/// A Workload API that implements FetchJWTBundles only and records each call.
#[derive(Default)]
struct FixedBundles {
    calls: CallLog,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for FixedBundles {
    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<BoxStream<JwtBundlesResponse>>, Status> {
        let header = request.metadata().get(WORKLOAD_API_HEADER);
        if header.and_then(|value| value.to_str().ok()) != Some("true") {
            return Err(Status::invalid_argument(
                "security header missing from request",
            ));
        }
        let peer = request
            .extensions()
            .get::<UdsConnectInfo>()
            .map(|info| info.peer);
        self.calls.lock().expect("call log lock").push(peer);
        let responses = tokio_stream::iter([Ok(expected_response())]);
        Ok(Response::new(Box::pin(responses)))
    }
}

/// A running server; dropping it without [`stop`](Self::stop) leaves the task to the runtime.
struct TestServer {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    calls: CallLog,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    /// Starts a server on a fresh socket, with `:authority` repair or as plain tonic.
    fn start(with_repair: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("workload.sock");
        let service = FixedBundles::default();
        let calls = Arc::clone(&service.calls);
        let router = Server::builder().add_service(SpiffeWorkloadApiServer::new(service));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let signal = async move {
            let _ = stopped.await;
        };
        let task = if with_repair {
            let listener = twid_uds::bind(&socket, 0o700).expect("bind");
            let incoming = twid_uds::incoming(listener);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal))
        } else {
            let listener = UnixListener::bind(&socket).expect("bind");
            let incoming = UnixListenerStream::new(listener);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal))
        };
        Self {
            _dir: dir,
            socket,
            calls,
            shutdown,
            task,
        }
    }

    fn recorded_calls(&self) -> Vec<Option<PeerCredentials>> {
        self.calls.lock().expect("call log lock").clone()
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server must stop within 10 s");
        result
            .expect("server task")
            .expect("server must exit cleanly");
    }
}

/// Returns a Python interpreter that imports `grpc`, or `None` after printing why not.
fn python_with_grpcio() -> Option<PathBuf> {
    let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("TWID_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join(".venv/bin/python"));
    let imports_grpc = std::process::Command::new(&python)
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if imports_grpc {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} cannot import grpc; CI installs it with scripts/test.sh",
        python.display()
    );
    println!(
        "python grpcio not available, skipping ({})",
        python.display()
    );
    None
}

/// What a client script printed: the status and each response message.
#[derive(Debug)]
struct PythonOutcome {
    /// Pid of the Python process, as the server should see it in SO_PEERCRED.
    pid: i32,
    code: String,
    details: String,
    responses: Vec<Vec<u8>>,
}

/// Runs `tests/py/<script>` against `socket` and parses its `key=value` lines.
async fn run_python(python: &Path, script: &str, socket: &Path) -> PythonOutcome {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let child = tokio::process::Command::new(python)
        .arg(&script)
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python");
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .expect("python pid");
    let output = tokio::time::timeout(PYTHON_TIMEOUT, child.wait_with_output())
        .await
        .expect("python client timed out")
        .expect("python client output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        script.display(),
        output.status
    );

    let mut code = None;
    let mut details = String::new();
    let mut responses = Vec::new();
    for line in stdout.lines() {
        if let Some(hex_message) = line.strip_prefix("response=") {
            responses.push(hex::decode(hex_message).expect("response line must be hex"));
        } else if let Some(value) = line.strip_prefix("code=") {
            code = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("details=") {
            details = value.to_owned();
        }
    }
    let code = code.unwrap_or_else(|| panic!("no code= line in output:\n{stdout}\n{stderr}"));
    PythonOutcome {
        pid,
        code,
        details,
        responses,
    }
}

#[tokio::test]
async fn python_fetches_jwt_bundles() {
    let Some(python) = python_with_grpcio() else {
        return;
    };
    let server = TestServer::start(true);

    let outcome = run_python(&python, "fetch_jwt_bundles.py", &server.socket).await;
    assert_eq!(outcome.code, "OK", "details: {}", outcome.details);
    assert_eq!(outcome.responses.len(), 1, "{outcome:?}");
    let response = JwtBundlesResponse::decode(outcome.responses[0].as_slice())
        .expect("python received a valid JWTBundlesResponse");
    assert_eq!(response, expected_response());

    let calls = server.recorded_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let peer = calls[0].expect("connection must carry UdsConnectInfo");
    assert_eq!(peer.pid, Some(outcome.pid));
    assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
    server.stop().await;
}

#[tokio::test]
async fn python_unary_call_reaches_handler() {
    let Some(python) = python_with_grpcio() else {
        return;
    };
    let server = TestServer::start(true);

    // ValidateJWTSVID is not implemented by FixedBundles, so reaching the handler shows as
    // UNIMPLEMENTED; a rejected :authority would show as another code.
    let outcome = run_python(&python, "validate_jwtsvid.py", &server.socket).await;
    assert_eq!(
        outcome.code, "UNIMPLEMENTED",
        "details: {}",
        outcome.details
    );
    server.stop().await;
}

#[tokio::test]
async fn python_fails_without_repair() {
    let Some(python) = python_with_grpcio() else {
        return;
    };
    let server = TestServer::start(false);

    let outcome = run_python(&python, "fetch_jwt_bundles.py", &server.socket).await;
    // h2 resets the stream (RST_STREAM with PROTOCOL_ERROR) before any handler runs, and
    // grpcio 1.85 reports that as INTERNAL.
    assert_eq!(outcome.code, "INTERNAL", "{outcome:?}");
    assert!(outcome.responses.is_empty(), "{outcome:?}");
    assert!(
        server.recorded_calls().is_empty(),
        "the handler must not run"
    );
    server.stop().await;
}

/// Connects a tonic client to `socket` with `:authority: localhost`.
async fn tonic_client(socket: &Path) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let socket = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
    });
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .expect("connect");
    SpiffeWorkloadApiClient::new(channel)
}

#[tokio::test]
async fn tonic_client_fetches_jwt_bundles() {
    let server = TestServer::start(true);
    let mut client = tonic_client(&server.socket).await;

    let mut request = Request::new(JwtBundlesRequest {});
    request
        .metadata_mut()
        .insert(WORKLOAD_API_HEADER, "true".parse().expect("metadata value"));
    let mut stream = client
        .fetch_jwt_bundles(request)
        .await
        .expect("fetch_jwt_bundles")
        .into_inner();
    let first = stream.next().await.expect("one message").expect("message");
    assert_eq!(first, expected_response());
    assert!(
        stream.next().await.is_none(),
        "stream must end after one message"
    );

    let unimplemented = client
        .fetch_x509svid(Request::new(X509svidRequest {}))
        .await
        .expect_err("FetchX509SVID is not implemented");
    assert_eq!(unimplemented.code(), Code::Unimplemented);

    let missing_header = client
        .fetch_jwt_bundles(Request::new(JwtBundlesRequest {}))
        .await
        .expect_err("request without the security header");
    assert_eq!(missing_header.code(), Code::InvalidArgument);

    // The call without the header is rejected before it is recorded.
    let calls = server.recorded_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let peer = calls[0].expect("connection must carry UdsConnectInfo");
    let own_pid = i32::try_from(std::process::id()).expect("pid fits in i32");
    assert_eq!(peer.pid, Some(own_pid));
    drop(client);
    server.stop().await;
}
