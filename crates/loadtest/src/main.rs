//! `twid-load`: starts real `twid server run` processes, attests thousands of simulated agents
//! to them, registers entries, and measures first-sync time, SVID signing rate, steady-state
//! server cost and the propagation latency of entry changes. With `--real-agent` it also runs
//! one real `twid agent run` with many entries and reports its first-sync time and memory.
//!
//! Everything runs on 127.0.0.1 and Unix sockets; with `--backend postgres` the tool creates
//! and drops its own database on the PostgreSQL server named by `--postgres-url`.

#![forbid(unsafe_code)]

mod admin;
mod fleet;
mod real_agent;
mod report;
mod run;
mod servers;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

use crate::servers::Backend;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "twid-load",
    about = "Load test real twid servers with simulated agents"
)]
pub(crate) struct Args {
    /// The twid binary that runs the servers and the real agent [default: `twid` next to this
    /// executable].
    #[arg(long)]
    pub(crate) twid: Option<PathBuf>,
    /// Datastore of the servers.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    pub(crate) backend: Backend,
    /// Server processes; more than one requires `--backend postgres`.
    #[arg(long, default_value_t = 1)]
    pub(crate) replicas: usize,
    /// PostgreSQL server URL without a database; the tool creates `twid_load_<pid>` there and
    /// drops it at the end.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub(crate) postgres_url: String,
    /// Registration entries, divided evenly among the simulated agents.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) entries: usize,
    /// Simulated agents, each with its own TCP connection.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) agents: usize,
    /// Propagation trials: each creates and then deletes one entry of a random agent.
    #[arg(long, default_value_t = 100)]
    pub(crate) trials: usize,
    /// Seconds a change may take to reach the agent before the trial counts as failed.
    #[arg(long, default_value_t = 30)]
    pub(crate) trial_timeout_secs: u64,
    /// Length in seconds of the steady-state window.
    #[arg(long, default_value_t = 30)]
    pub(crate) steady_secs: u64,
    /// Attestations running at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) attest_concurrency: usize,
    /// Agents connecting and running their first Sync at once.
    #[arg(long, default_value_t = 128)]
    pub(crate) connect_concurrency: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Also measure one real `twid agent run` process (after the simulated agents stop).
    #[arg(long)]
    pub(crate) real_agent: bool,
    /// Entries parented to the real agent.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) real_agent_entries: usize,
    /// `x509_svid_cache_max_size` written to the real agent's configuration.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) real_agent_svid_cache: u64,
    /// Keep configurations, data and logs in this directory instead of a temporary one that
    /// is removed at the end.
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    raise_file_limit();
    // Two workers match the measured machine's two cores; simulated agents are tasks.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let report = runtime.block_on(run::run(&args))?;
    println!("{}", report.text());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Raises the soft limit of open files to the hard limit: every simulated agent keeps a
/// connection, and the server processes inherit the limit.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "failed to raise the open-file limit");
            } else {
                tracing::info!(from = soft, to = hard, "raised the open-file limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "failed to read the open-file limit"),
    }
}
