//! A throwaway PostgreSQL primary with a streaming hot standby, each its own cluster in a
//! temporary directory on free loopback ports, for the tests of reads from a read-only
//! replica. The shared server on 127.0.0.1:5432 cannot serve: a standby copies a whole cluster
//! through a replication connection, which its access rules do not allow.
//!
//! The clusters are made with the server binaries of Debian's `postgresql` package (initdb,
//! pg_ctl, pg_basebackup, psql), which `scripts/test.sh` installs when they are missing. Run as
//! root, the tests run those programs as the `postgres` user, because initdb rejects root.
//! The e2e tests include this file by path, so it uses only the standard library and tempfile.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A primary, its standby and an optional standby of the standby, all stopped when this
/// value drops.
pub(crate) struct PgPair {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// Run the server programs as the `postgres` user (this process is root).
    as_postgres: bool,
    pub(crate) primary_port: u16,
    pub(crate) standby_port: u16,
}

impl PgPair {
    /// Creates the primary, copies it into the standby with `pg_basebackup`, starts both and
    /// waits until the standby streams from the primary.
    ///
    /// # Panics
    /// Panics with the failing command's output, or when the PostgreSQL server binaries are
    /// not installed.
    pub(crate) fn start() -> Self {
        let bin = server_binaries().unwrap_or_else(|| {
            panic!(
                "the PostgreSQL server programs (initdb, pg_ctl, pg_basebackup) are not under \
                 /usr/lib/postgresql/*/bin; install Debian's postgresql package \
                 (scripts/test.sh does) to run the read-only replica tests"
            )
        });
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("twid-pgpair-")
            .tempdir()
            .expect("create temp dir");
        // The postgres user must reach the cluster directories inside it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let pair = Self {
            bin,
            dir,
            as_postgres,
            primary_port: free_port(),
            standby_port: free_port(),
        };
        pair.init_primary();
        pair.start_cluster(&pair.primary_dir());
        pair.make_standby();
        pair.start_cluster(&pair.standby_dir());
        pair.wait_streaming();
        pair
    }

    pub(crate) fn primary_dir(&self) -> PathBuf {
        self.dir.path().join("primary")
    }

    pub(crate) fn standby_dir(&self) -> PathBuf {
        self.dir.path().join("standby")
    }

    /// Returns the URL of `database` on the primary.
    pub(crate) fn primary_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.primary_port
        )
    }

    /// Returns the URL of `database` on the standby.
    pub(crate) fn standby_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.standby_port
        )
    }

    /// Creates `database` on the primary and waits until the standby has it.
    pub(crate) fn create_database(&self, database: &str) {
        self.psql(
            self.primary_port,
            "postgres",
            &format!("CREATE DATABASE {database}"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let query = format!("SELECT count(*) FROM pg_database WHERE datname = '{database}'");
        while self.psql(self.standby_port, "postgres", &query).trim() != "1" {
            assert!(
                Instant::now() < deadline,
                "the standby did not replay CREATE DATABASE {database} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops WAL replay on the standby, which keeps serving reads from the state it had.
    pub(crate) fn pause_replay(&self) {
        self.psql(
            self.standby_port,
            "postgres",
            "SELECT pg_wal_replay_pause()",
        );
    }

    pub(crate) fn resume_replay(&self) {
        self.psql(
            self.standby_port,
            "postgres",
            "SELECT pg_wal_replay_resume()",
        );
    }

    /// Stops the standby at once, as a crash would.
    pub(crate) fn stop_standby(&self) {
        self.stop_cluster(&self.standby_dir());
    }

    /// Promotes the standby: it leaves recovery and accepts writes of its own.
    pub(crate) fn promote_standby(&self) {
        self.run_ok(
            "pg_ctl",
            &["-D", utf8(&self.standby_dir()), "-w", "promote"],
        );
    }

    pub(crate) fn start_standby(&self) {
        self.start_cluster(&self.standby_dir());
    }

    /// Runs `sql` with psql on the cluster at `port` and returns the unaligned output.
    ///
    /// # Panics
    /// Panics with psql's error output when it fails.
    pub(crate) fn psql(&self, port: u16, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql on port {port} failed for {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn init_primary(&self) {
        let data = self.primary_dir();
        self.make_owned_dir(&data);
        self.run_ok(
            "initdb",
            &[
                "-D",
                utf8(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        // initdb's access rules already trust replication connections from 127.0.0.1.
        append(
            &data.join("postgresql.conf"),
            &format!(
                "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
                 wal_level = replica\nmax_wal_senders = 4\nshared_buffers = 16MB\n\
                 fsync = off\nhot_standby = on\n",
                self.primary_port,
                data.display()
            ),
        );
    }

    fn make_standby(&self) {
        self.copy_cluster(self.primary_port, &self.standby_dir(), self.standby_port);
    }

    /// Returns the directory of the standby that [`PgPair::start_standby_of_standby`] makes.
    pub(crate) fn cascade_dir(&self) -> PathBuf {
        self.dir.path().join("cascade")
    }

    /// Makes and starts a third cluster on `port`, a streaming standby of the standby, and
    /// returns once it serves reads. Made after [`PgPair::promote_standby`], it is a standby
    /// of a copy whose history has left the primary's.
    pub(crate) fn start_standby_of_standby(&self, port: u16) {
        let data = self.cascade_dir();
        self.copy_cluster(self.standby_port, &data, port);
        self.start_cluster(&data);
    }

    /// Copies the cluster at `source_port` into `data` as a standby that listens on `port`.
    fn copy_cluster(&self, source_port: u16, data: &Path, port: u16) {
        self.make_owned_dir(data);
        self.run_ok(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &source_port.to_string(),
                "-U",
                "postgres",
                "-D",
                utf8(data),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
        );
        // Later lines win: the copied file still names the primary's port and socket.
        append(
            &data.join("postgresql.conf"),
            &format!(
                "port = {port}\nunix_socket_directories = '{}'\n",
                data.display()
            ),
        );
    }

    fn wait_streaming(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let streaming = self.psql(
                self.primary_port,
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            );
            if streaming.trim() == "1" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the standby did not start streaming within 30 s; its log:\n{}",
                std::fs::read_to_string(self.standby_dir().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_cluster(&self, data: &Path) {
        let log = data.join("log");
        self.run_ok(
            "pg_ctl",
            &[
                "-D",
                utf8(data),
                "-l",
                utf8(&log),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    fn stop_cluster(&self, data: &Path) {
        let _ = self.run(
            "pg_ctl",
            &["-D", utf8(data), "-m", "immediate", "-w", "stop"],
        );
    }

    fn make_owned_dir(&self, path: &Path) {
        std::fs::create_dir(path).expect("create cluster dir");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .expect("chmod cluster dir");
        if self.as_postgres {
            let status = Command::new("chown")
                .args(["postgres:", utf8(path)])
                .status()
                .expect("run chown");
            assert!(status.success(), "chown postgres {} failed", path.display());
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        command
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", path.display()))
    }

    fn run_ok(&self, program: &str, args: &[&str]) {
        let output = self.run(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        if self.cascade_dir().exists() {
            self.stop_cluster(&self.cascade_dir());
        }
        self.stop_cluster(&self.standby_dir());
        self.stop_cluster(&self.primary_dir());
    }
}

/// Returns the newest `/usr/lib/postgresql/<version>/bin` that contains the programs used here.
fn server_binaries() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            let complete = ["initdb", "pg_ctl", "pg_basebackup", "psql"]
                .iter()
                .all(|program| bin.join(program).exists());
            complete.then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind a loopback port")
}

fn append(path: &Path, text: &str) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open postgresql.conf");
    file.write_all(text.as_bytes())
        .expect("append to postgresql.conf");
}
