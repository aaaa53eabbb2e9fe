//! The `twid server run` processes under test: their configuration files, start and stop, the
//! PostgreSQL database that replicas share, and the counters read from outside the processes
//! (CPU time, logged SQL statements, database transactions).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sqlx::Connection as _;

use crate::admin::Admin;

/// The trust domain of every server the tool starts.
pub(crate) const TRUST_DOMAIN: &str = "load.example.org";

/// The log filter of the servers. sqlx 0.9 logs every statement at debug under the target
/// `sqlx::query`, which the statement count reads back.
const SERVER_RUST_LOG: &str = "info,sqlx::query=debug";

/// The marker of one statement event in a text-format log line. Each event is one line,
/// because the text format escapes the newlines inside the statement.
const STATEMENT_MARKER: &str = "sqlx::query:";

/// Time limit for a server to respond on its admin socket after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The datastore backend of the servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    /// One server with its default SQLite file in its data directory.
    Sqlite,
    /// One or more replicas on a fresh PostgreSQL database.
    Postgres,
}

/// One running server process.
pub(crate) struct ServerProcess {
    pub(crate) index: usize,
    pub(crate) port: u16,
    pub(crate) socket: PathBuf,
    pub(crate) log_path: PathBuf,
    child: Child,
}

impl ServerProcess {
    /// Writes the configuration of replica `index` into `dir` and starts the server, returning
    /// once its admin API responds.
    pub(crate) async fn start(
        twid: &Path,
        dir: &Path,
        index: usize,
        database_url: Option<&str>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = free_port()?;
        let socket = dir.join("private/server.sock");
        let config = dir.join("server.conf");
        std::fs::write(&config, server_config(dir, port, &socket, database_url))
            .with_context(|| format!("writing {}", config.display()))?;
        let log_path = dir.join("server.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(twid)
            .args(["server", "run", "--config"])
            .arg(&config)
            .env("RUST_LOG", SERVER_RUST_LOG)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} server run", twid.display()))?;
        let mut server = Self {
            index,
            port,
            socket,
            log_path,
            child,
        };
        server.wait_ready().await?;
        tracing::info!(replica = index, port, pid = server.pid(), "server started");
        Ok(server)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "server {} exited with {status} during start-up; log tail:\n{}",
                    self.index,
                    self.log_tail()
                );
            }
            if self.socket.exists()
                && let Ok(mut admin) = Admin::connect(&self.socket).await
                && admin.bundle().await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "server {} did not respond on {} within {START_TIMEOUT:?}; log tail:\n{}",
                    self.index,
                    self.socket.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the user plus system CPU time the process has used so far.
    pub(crate) fn cpu_time(&self) -> anyhow::Result<Duration> {
        process_cpu_time(self.pid())
    }

    /// Returns the current length of the log file, a position for [`Self::statements_between`].
    pub(crate) fn log_position(&self) -> anyhow::Result<u64> {
        Ok(std::fs::metadata(&self.log_path)?.len())
    }

    /// Counts the SQL statements the server logged between two log positions.
    pub(crate) fn statements_between(&self, from: u64, to: u64) -> anyhow::Result<u64> {
        Ok(self.statement_summaries_between(from, to)?.values().sum())
    }

    /// Counts the SQL statements the server logged between two log positions, by sqlx's
    /// summary of the statement (its first words).
    pub(crate) fn statement_summaries_between(
        &self,
        from: u64,
        to: u64,
    ) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut file = File::open(&self.log_path)?;
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.take(to.saturating_sub(from)).read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        let mut counts = BTreeMap::new();
        for line in text.lines().filter(|line| line.contains(STATEMENT_MARKER)) {
            *counts.entry(statement_summary(line)).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Returns the last 40 lines of the server log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Stops the process with SIGTERM, and SIGKILL after 10 seconds.
    pub(crate) fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        terminate(&mut self.child);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends SIGTERM and waits up to 10 seconds before SIGKILL.
pub(crate) fn terminate(child: &mut Child) {
    let Ok(raw) = i32::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    let pid = nix::unistd::Pid::from_raw(raw);
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

/// Returns the `summary="..."` field of a statement log line, or `?` when it has none.
fn statement_summary(line: &str) -> String {
    line.split_once("summary=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or_else(|| "?".to_owned(), |(summary, _)| summary.to_owned())
}

fn server_config(dir: &Path, port: u16, socket: &Path, database_url: Option<&str>) -> String {
    // Agent SVIDs live for a day so that simulated agents, which never renew, stay valid for
    // the whole run.
    let mut text = format!(
        "server {{\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{port}\"\n  \
         trust_domain = \"{TRUST_DOMAIN}\"\n  data_dir = \"{data}\"\n  \
         socket_path = \"{socket}\"\n  log_level = \"INFO\"\n  agent_ttl = \"24h\"\n}}\n",
        data = dir.join("data").display(),
        socket = socket.display(),
    );
    if let Some(url) = database_url {
        // Each replica keeps its CA keys in its own directory, as replicas must.
        text.push_str(&format!(
            "plugins {{\n  DataStore \"sql\" {{\n    plugin_data {{\n      \
             database_type = \"postgres\"\n      connection_string = \"{url}\"\n    }}\n  }}\n  \
             KeyManager \"disk\" {{\n    plugin_data {{\n      keys_path = \"{keys}\"\n    }}\n  \
             }}\n}}\n",
            keys = dir.join("keys").display(),
        ));
    }
    text
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Reads utime plus stime of `pid` from `/proc/<pid>/stat`.
pub(crate) fn process_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name in field 2 may contain spaces, so fields are counted after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} has no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file are the 12th and 13th after the command name.
    let ticks = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n)
            .with_context(|| format!("{path} has fewer than {} fields", n + 3))?
            .parse::<u64>()
            .with_context(|| format!("invalid CPU time field in {path}"))
    };
    let total = ticks(11)? + ticks(12)?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .and_then(|value| u64::try_from(value).ok())
        .filter(|value| *value > 0)
        .unwrap_or(100);
    Ok(Duration::from_secs_f64(total as f64 / per_second as f64))
}

/// A PostgreSQL database created for this run and dropped by [`PgDatabase::drop_database`].
pub(crate) struct PgDatabase {
    pub(crate) name: String,
    server_url: String,
}

impl PgDatabase {
    /// Creates `twid_load_<pid>` on the server at `server_url` (without a database path).
    pub(crate) async fn create(server_url: &str) -> anyhow::Result<Self> {
        let name = format!("twid_load_{}", std::process::id());
        let server_url = server_url.trim_end_matches('/').to_owned();
        let database = Self { name, server_url };
        // A database left by an earlier run with the same pid goes first. The statements run
        // one at a time because PostgreSQL rejects CREATE DATABASE in a multi-statement query.
        database.drop_database().await?;
        let mut connection = database.maintenance_connection().await?;
        // The name consists of a fixed prefix and digits, so formatting it into SQL is safe.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            database.name
        )))
        .execute(&mut connection)
        .await
        .with_context(|| format!("creating database {}", database.name))?;
        tracing::info!(database = %database.name, "PostgreSQL database created");
        Ok(database)
    }

    /// Returns the URL the servers connect with.
    pub(crate) fn url(&self) -> String {
        format!("{}/{}", self.server_url, self.name)
    }

    async fn maintenance_connection(&self) -> anyhow::Result<sqlx::PgConnection> {
        let url = format!("{}/postgres", self.server_url);
        sqlx::PgConnection::connect(&url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {url}"))
    }

    /// Returns committed plus rolled-back transactions of the database, from
    /// `pg_stat_database`. PostgreSQL publishes these counters with a delay of up to about 10
    /// seconds for idle connections, so a window should start after writes have settled.
    pub(crate) async fn transactions(&self) -> anyhow::Result<i64> {
        let mut connection = self.maintenance_connection().await?;
        let row: (i64,) = sqlx::query_as(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&self.name)
        .fetch_one(&mut connection)
        .await
        .context("reading pg_stat_database")?;
        Ok(row.0)
    }

    /// Drops the database, disconnecting any server still on it.
    pub(crate) async fn drop_database(&self) -> anyhow::Result<()> {
        let mut connection = self.maintenance_connection().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut connection)
        .await
        .with_context(|| format!("dropping database {}", self.name))?;
        tracing::debug!(database = %self.name, "PostgreSQL database dropped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_summary_reads_field() {
        let line = "2026-12-05T02:55:52Z DEBUG sync: sqlx::query: summary=\"SELECT id, …\" \
                    db.statement=\"\\n\\nSELECT id FROM entries\\n\" rows_affected=0";
        assert_eq!(statement_summary(line), "SELECT id, …");
        assert_eq!(statement_summary("DEBUG sqlx::query: no summary"), "?");
    }

    #[test]
    fn cpu_time_of_this_process() {
        let spent = process_cpu_time(std::process::id()).unwrap();
        assert!(spent < Duration::from_secs(3600), "{spent:?}");
    }
}
