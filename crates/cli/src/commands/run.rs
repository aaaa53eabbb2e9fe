//! `twid server run` and `twid agent run`: the long-running processes.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum ServerCommand {
    /// Run the server.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Path of the HCL configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Replace ${VAR} and $VAR in the configuration with environment variables before parsing.
    #[arg(long)]
    expand_env: bool,
}

/// Waits for SIGINT, SIGTERM or SIGHUP and returns the signal's name, for the shutdown log
/// line. SIGHUP arrives when the terminal that started the process closes, and its default
/// action ends the process without a stop or a log line. A process started with SIGHUP
/// ignored, as `nohup` starts it, keeps ignoring it.
pub(crate) async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};

    let hangup_ignored = hangup_ignored();

    let wait = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        () = wait(SignalKind::terminate()) => "SIGTERM",
        () = async {
            if hangup_ignored {
                std::future::pending::<()>().await;
            }
            wait(SignalKind::hangup()).await;
        } => "SIGHUP",
    }
}

/// Returns whether this process ignores SIGHUP, from the `SigIgn` mask in
/// `/proc/self/status`. Installing a handler would replace that disposition.
fn hangup_ignored() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        // SIGHUP is signal 1, the lowest bit of the mask.
        .is_some_and(|mask| mask & 1 != 0)
}

pub(crate) async fn server(command: ServerCommand) -> anyhow::Result<()> {
    let ServerCommand::Run(args) = command;
    let config = twid_config::ServerConfig::load_with_options(&args.config, args.expand_env)?;
    let _log_guard =
        twid_telemetry::init_logging(config.log_level.as_str(), config.log_format.into())?;
    let server = twid_server::Server::start(config)
        .await
        .context("server failed to start")?;
    let signal = shutdown_signal().await;
    tracing::info!(signal, "shutting down");
    server.shutdown().await;
    Ok(())
}

pub(crate) async fn agent(args: RunArgs) -> anyhow::Result<()> {
    let config = twid_config::AgentConfig::load_with_options(&args.config, args.expand_env)?;
    let _log_guard =
        twid_telemetry::init_logging(config.log_level.as_str(), config.log_format.into())?;
    let server = config
        .server_addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let agent = twid_agent::Agent::start(config, twid_agent::AgentOptions::default())
        .await
        .with_context(|| format!("agent failed to start (server {server})"))?;
    let signal = shutdown_signal().await;
    tracing::info!(signal, "shutting down");
    agent.shutdown().await;
    Ok(())
}
