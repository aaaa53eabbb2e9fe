//! `twid healthcheck`: exits 0 when the server (or the agent) responds on its socket.

use std::path::PathBuf;

use clap::Args;
use twid_proto::admin::CountEntriesRequest;
use twid_proto::workload::X509BundlesRequest;

use crate::client::{self, DEFAULT_SERVER_SOCKET};

#[derive(Debug, Args)]
pub(crate) struct HealthcheckArgs {
    /// Check an agent's Workload API instead of a server's admin API.
    #[arg(long)]
    agent: bool,
    /// Socket to check (default: the server's admin socket, or with --agent the agent's
    /// Workload API socket).
    #[arg(long)]
    socket_path: Option<PathBuf>,
    /// Perform a less stringent check: the socket accepts a gRPC connection, without a request
    /// that needs the datastore (server) or the first sync (agent).
    #[arg(long)]
    shallow: bool,
    /// Print each step of the check.
    #[arg(long)]
    verbose: bool,
}

pub(crate) async fn run(args: HealthcheckArgs) -> anyhow::Result<()> {
    let kind = if args.agent { "Agent" } else { "Server" };
    if args.agent {
        let path = client::workload_socket(args.socket_path)?;
        let mut workload = client::workload(&path).await?;
        if args.verbose {
            println!("Connected to the Workload API at {}.", path.display());
        }
        if args.shallow {
            println!("{kind} is healthy.");
            return Ok(());
        }
        // A caller without an identity gets PermissionDenied, which still proves the agent
        // is serving; only transport failures and Unavailable mean it is not healthy.
        match workload.fetch_x509_bundles(X509BundlesRequest {}).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::PermissionDenied => {}
            Err(status) => anyhow::bail!("agent is unhealthy: {}", status.message()),
        }
    } else {
        let path = args
            .socket_path
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SERVER_SOCKET));
        let mut admin = client::admin(&path).await?;
        if args.verbose {
            println!("Connected to the admin API at {}.", path.display());
        }
        if args.shallow {
            println!("{kind} is healthy.");
            return Ok(());
        }
        admin
            .count_entries(CountEntriesRequest {})
            .await
            .map_err(|status| anyhow::anyhow!("server is unhealthy: {}", status.message()))?;
    }
    if args.verbose {
        println!("{kind} responded to a request that reads its state.");
    }
    println!("{kind} is healthy.");
    Ok(())
}
