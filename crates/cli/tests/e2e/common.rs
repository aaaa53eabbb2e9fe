//! Starting real `twid` server and agent processes for end-to-end tests.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use twid_config::ServerConfig;
use twid_datastore::{DatabaseType, DatastoreConfig};
use twid_spiffe::TrustDomain;

pub(crate) const TRUST_DOMAIN: &str = "example.org";

/// The environment variable that selects the datastore of the servers these tests start:
/// `sqlite` (the default) or `postgres`.
pub(crate) const DATASTORE_ENV: &str = "TWID_TEST_DATASTORE";

/// Returns a command that runs the `twid` binary under test.
pub(crate) fn twid() -> Command {
    Command::new(env!("CARGO_BIN_EXE_twid"))
}

/// Returns the repository root.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Returns the Python interpreter of the test venv, or `None` (with a skip line) when the
/// venv is missing.
pub(crate) fn python() -> Option<PathBuf> {
    let path = std::env::var_os("TWID_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    if path.exists() {
        Some(path)
    } else {
        println!(
            "python venv not found at {}, skipping (run scripts/test.sh)",
            path.display()
        );
        None
    }
}

/// Returns whether the tests run as root, which tests that switch uids need.
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A temporary directory with a short path, because Unix socket paths are limited to 107
/// bytes. Directories are world-traversable so that workloads under other uids can reach the
/// agent socket inside.
pub(crate) struct TempDir {
    path: PathBuf,
    /// The PostgreSQL database of the in-process server configured here, dropped with the
    /// directory.
    server_database: Mutex<Option<TestDatabase>>,
}

impl TempDir {
    pub(crate) fn new() -> Self {
        let base = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("twid-")
            .tempdir_in(base)
            .expect("temp dir should be creatable")
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            path: dir,
            server_database: Mutex::new(None),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the development configuration of an in-process server whose data directory is
    /// `<dir>/server`. Under `TWID_TEST_DATASTORE=postgres` its datastore is a PostgreSQL
    /// database that the first call creates, later calls reuse (so a restarted server finds
    /// its data), and this directory drops.
    pub(crate) fn dev_server_config(&self, trust_domain: TrustDomain) -> ServerConfig {
        let mut config = ServerConfig::new_dev(trust_domain, &self.path.join("server"));
        if postgres_selected() {
            let mut database = self.server_database.lock().unwrap();
            let database = database.get_or_insert_with(TestDatabase::create_required);
            config.datastore = DatastoreConfig {
                ro_connection_string: None,
                database_type: DatabaseType::Postgres,
                connection_string: database.url(),
            };
        }
        config
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Returns whether `TWID_TEST_DATASTORE` selects PostgreSQL for the servers these tests start.
///
/// # Panics
/// Panics when the variable is set to anything but `sqlite` or `postgres`, so that a typo
/// cannot turn the PostgreSQL pass into a second SQLite pass.
pub(crate) fn postgres_selected() -> bool {
    let selected =
        std::env::var_os(DATASTORE_ENV).map(|value| value.to_string_lossy().into_owned());
    match selected.as_deref() {
        None | Some("sqlite") => false,
        Some("postgres") => true,
        Some(other) => {
            panic!("invalid {DATASTORE_ENV} value {other:?}, expected sqlite or postgres")
        }
    }
}

/// Runs `sql` with psql on `database` at 127.0.0.1:5432 as user postgres and returns the
/// unaligned output, or the error output when psql fails.
pub(crate) fn psql(database: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-d",
            database,
        ])
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .map_err(|error| format!("psql failed to run: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// Runs `sql` on `database` and panics when psql fails.
pub(crate) fn psql_ok(database: &str, sql: &str) -> String {
    psql(database, sql).unwrap_or_else(|error| panic!("psql {sql:?} failed: {error}"))
}

/// A PostgreSQL database created for a test and dropped with `DROP DATABASE ... WITH (FORCE)`
/// when the guard is dropped, even after a failed assertion.
pub(crate) struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// Creates a fresh database, or returns `None` with a skip line when the connection to
    /// PostgreSQL fails. Tests that need PostgreSQL whatever `TWID_TEST_DATASTORE` selects use
    /// this.
    pub(crate) fn create() -> Option<Self> {
        if let Err(error) = psql("postgres", "SELECT 1") {
            println!("postgres not available, skipping: {error}");
            return None;
        }
        Some(Self::create_named())
    }

    /// Creates a fresh database for a server under `TWID_TEST_DATASTORE=postgres`.
    ///
    /// # Panics
    /// Panics when PostgreSQL is unreachable, because skipping would pass the PostgreSQL run
    /// without testing anything.
    pub(crate) fn create_required() -> Self {
        if let Err(error) = psql("postgres", "SELECT 1") {
            panic!(
                "{DATASTORE_ENV}=postgres, but PostgreSQL at 127.0.0.1:5432 (user postgres) is \
                 unreachable: {error}"
            );
        }
        Self::create_named()
    }

    /// Creates `twid_e2e_<pid>_<nanoseconds since 1970>_<sequence>`, a name unique across the
    /// test processes that run at the same time and across earlier runs.
    fn create_named() -> Self {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let name = format!("twid_e2e_{}_{nanos}_{sequence}", std::process::id());
        psql_ok("postgres", &format!("CREATE DATABASE {name}"));
        Self { name }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// Returns the `DataStore "sql"` plugin block for this database, for use inside a
    /// `plugins` block.
    pub(crate) fn plugin_block(&self) -> String {
        format!(
            "  DataStore \"sql\" {{\n    plugin_data {{\n      database_type = \"postgres\"\n      \
             connection_string = \"{}\"\n    }}\n  }}\n",
            self.url()
        )
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = psql("postgres", &sql) {
            eprintln!("failed to drop test database {}: {error}", self.name);
        }
    }
}

/// Returns the server's datastore as `TWID_TEST_DATASTORE` selects it, for `blocks`, the
/// configuration text after the `server` block. Under `postgres`, unless `blocks` already
/// configures a `DataStore`, this creates a database and returns it with `blocks` extended by
/// its `DataStore` block. Otherwise the database is `None` and `blocks` comes back unchanged.
pub(crate) fn server_datastore(blocks: &str) -> (Option<TestDatabase>, String) {
    if !postgres_selected() || blocks.contains("DataStore") {
        return (None, blocks.to_owned());
    }
    let database = TestDatabase::create_required();
    let plugin = database.plugin_block();
    // A configuration file may hold only one `plugins` block.
    let blocks = match blocks.find("plugins {") {
        Some(start) => {
            let body = start + "plugins {".len();
            format!("{}\n{plugin}{}", &blocks[..body], &blocks[body..])
        }
        None => format!("{blocks}plugins {{\n{plugin}}}\n"),
    };
    (Some(database), blocks)
}

/// Returns a TCP port that was free a moment ago on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Runs a twid command and returns its output.
pub(crate) fn run(args: &[&str]) -> Output {
    twid().args(args).output().expect("twid should run")
}

/// Runs a twid command that must succeed and returns its stdout.
pub(crate) fn run_ok(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "twid {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A running `twid server run` process.
pub(crate) struct ServerProcess {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
    pub socket: PathBuf,
    pub config: PathBuf,
    /// The PostgreSQL database that `TWID_TEST_DATASTORE=postgres` gave this server. Restarts
    /// keep it, and it is dropped after the process is killed.
    pub database: Option<TestDatabase>,
}

impl ServerProcess {
    /// Writes a server configuration into `dir` (with `extra` appended inside the `server`
    /// block) and starts the server.
    pub(crate) fn start(dir: &Path, extra: &str) -> Self {
        Self::start_with_blocks(dir, extra, "")
    }

    /// Like [`ServerProcess::start`], with `blocks` appended after the `server` block. The
    /// datastore is the one [`server_datastore`] returns.
    pub(crate) fn start_with_blocks(dir: &Path, extra: &str, blocks: &str) -> Self {
        let (database, blocks) = server_datastore(blocks);
        let port = free_port();
        let socket = dir.join("private/server.sock");
        let config = dir.join("server.conf");
        let text = format!(
            "server {{\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{port}\"\n  \
             trust_domain = \"{TRUST_DOMAIN}\"\n  data_dir = \"{data}\"\n  \
             socket_path = \"{socket}\"\n  log_level = \"DEBUG\"\n{extra}\n}}\n{blocks}\n",
            data = dir.join("server-data").display(),
            socket = socket.display(),
        );
        std::fs::write(&config, text).unwrap();
        let mut server = Self {
            child: None,
            dir: dir.to_path_buf(),
            port,
            socket,
            config,
            database,
        };
        server.spawn();
        server
    }

    /// Starts (or restarts) the process with the same configuration.
    pub(crate) fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let child = twid()
            .args(["server", "run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("server should start");
        self.child = Some(child);
        let socket = self.socket.clone();
        wait_until(Duration::from_secs(30), "the server admin socket", || {
            run(&[
                "healthcheck",
                "--shallow",
                "--socket-path",
                socket.to_str().unwrap(),
            ])
            .status
            .success()
        });
    }

    pub(crate) fn socket_arg(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Stops the process with SIGTERM and waits for it.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    pub(crate) fn generate_token(&self) -> String {
        let out = run_ok(&["token", "generate", "--socket-path", self.socket_arg()]);
        out.trim()
            .strip_prefix("Token: ")
            .expect("token line")
            .to_owned()
    }

    /// Writes the bundle as PEM for agents to bootstrap from.
    pub(crate) fn write_bundle(&self, path: &Path) {
        let pem = run_ok(&["bundle", "show", "--socket-path", self.socket_arg()]);
        std::fs::write(path, pem).unwrap();
    }

    pub(crate) fn create_entry(
        &self,
        spiffe_id: &str,
        parent_id: &str,
        selectors: &[&str],
    ) -> String {
        let mut args = vec![
            "entry",
            "create",
            "--spiffe-id",
            spiffe_id,
            "--parent-id",
            parent_id,
            "--socket-path",
            self.socket_arg(),
            "--output",
            "json",
        ];
        for selector in selectors {
            args.extend(["--selector", selector]);
        }
        let out = run_ok(&args);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        json["id"].as_str().unwrap().to_owned()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A running `twid agent run` process.
pub(crate) struct AgentProcess {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl AgentProcess {
    /// Writes an agent configuration and starts the agent; returns once its socket exists.
    pub(crate) fn start(dir: &Path, server: &ServerProcess, token: &str) -> Self {
        Self::start_with(dir, server, token, "")
    }

    /// Like [`AgentProcess::start`], with `extra` appended inside the `agent` block.
    pub(crate) fn start_with(dir: &Path, server: &ServerProcess, token: &str, extra: &str) -> Self {
        let socket = dir.join("agent.sock");
        let bundle = dir.join("bootstrap.pem");
        server.write_bundle(&bundle);
        let config = dir.join("agent.conf");
        let text = format!(
            "agent {{\n  trust_domain = \"{TRUST_DOMAIN}\"\n  server_address = \"127.0.0.1\"\n  \
             server_port = \"{port}\"\n  socket_path = \"{socket}\"\n  data_dir = \"{data}\"\n  \
             trust_bundle_path = \"{bundle}\"\n  join_token = \"{token}\"\n  \
             log_level = \"DEBUG\"\n{extra}\n}}\n\
             plugins {{\n  WorkloadAttestor \"unix\" {{\n    plugin_data {{\n      \
             discover_workload_path = true\n    }}\n  }}\n}}\n",
            port = server.port,
            socket = socket.display(),
            data = dir.join("agent-data").display(),
            bundle = bundle.display(),
        );
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = twid()
            .args(["agent", "run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent should start");
        let agent = Self {
            child: Some(child),
            socket,
            dir: dir.to_path_buf(),
        };
        let socket = agent.socket.clone();
        wait_until(Duration::from_secs(30), "the agent socket", || {
            socket.exists()
        });
        agent
    }

    pub(crate) fn socket_arg(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Returns the agent's join-token SPIFFE ID.
pub(crate) fn agent_id(token: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/spire/agent/join_token/{token}")
}

/// Writes `contents` to a file and returns its path as a string.
pub(crate) fn write_file(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    path.to_str().unwrap().to_owned()
}
