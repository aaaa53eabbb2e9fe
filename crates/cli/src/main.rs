//! The `twid` command: server, agent, development mode, and clients for the admin API and the
//! SPIFFE Workload API.
//!
//! This crate only parses arguments, assembles the library crates and prints results; the
//! behaviour lives in `twid-server`, `twid-agent` and the crates they use.

#![forbid(unsafe_code)]

mod client;
mod commands;
mod output;
mod spire_flags;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{
    agents, api, attest, aws, bundle, dev, entry, federation, healthcheck, helper, localauthority,
    log, oidc_provider, policy, revoke, run, svid, token, wimse,
};

/// twid: SPIFFE workload identity with a CA server, a node agent and the SPIFFE Workload API.
#[derive(Debug, Parser)]
#[command(name = "twid", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run or inspect the server.
    #[command(subcommand)]
    Server(run::ServerCommand),
    /// Run the agent, or manage attested agents on the server.
    #[command(subcommand)]
    Agent(agents::AgentCommand),
    /// Run a server and an agent in one process on embedded defaults.
    Dev(dev::DevArgs),
    /// Create, show, update, delete and count registration entries.
    #[command(subcommand)]
    Entry(entry::EntryCommand),
    /// Generate join tokens for agent attestation.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Show the trust bundle, or set a foreign trust domain's bundle.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Manage federation relationships with foreign trust domains.
    #[command(subcommand)]
    Federation(federation::FederationCommand),
    /// Show and verify the issuance log of SVIDs issued and requests rejected.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Revoke every unexpired credential issued on a selector, TCB status or agent, or list
    /// revocations.
    Revoke(revoke::RevokeArgs),
    /// Sign, apply, list and show versions of the signed appraisal policy document.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Rotate the X.509 authorities and JWT keys by hand: show, prepare, activate, taint and
    /// revoke.
    #[command(subcommand)]
    Localauthority(localauthority::LocalAuthorityCommand),
    /// Call the SPIFFE Workload API as a workload would.
    #[command(subcommand)]
    Api(api::ApiCommand),
    /// Inspect X.509-SVIDs and JWT-SVIDs.
    #[command(subcommand)]
    Svid(svid::SvidCommand),
    /// Verify hardware-signed evidence (SGX, TDX, SEV-SNP, Nitro, TPM) offline.
    #[command(subcommand)]
    Attest(attest::AttestCommand),
    /// Get AWS credentials with a JWT-SVID, and print IAM trust policies for it.
    #[command(subcommand)]
    Aws(aws::AwsCommand),
    /// Check that a server (or, with --agent, an agent) is up and responding.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Serve OIDC discovery and the trust domain's JWT keys from a server or agent socket.
    OidcProvider(oidc_provider::OidcProviderArgs),
    /// Keep a workload's SVID, key and bundle in files and signal the program that reads them.
    Helper(helper::HelperArgs),
    /// Verify WIMSE Workload Identity Tokens and Workload Proof Tokens offline.
    #[command(subcommand)]
    Wimse(wimse::WimseCommand),
}

fn main() -> ExitCode {
    let args = spire_flags::translate(std::env::args_os());
    let cli = Cli::parse_from(args);
    exit_quietly_on_closed_stdout();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_command(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", output::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Makes `twid ... | head` end quietly. Rust ignores SIGPIPE, so `println!` panics when the
/// reader has gone; this turns that one panic into the exit status a shell expects (128 +
/// SIGPIPE) instead of a backtrace.
fn exit_quietly_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
}

async fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Server(command) => run::server(command).await,
        Command::Agent(command) => agents::run(command).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Entry(command) => entry::run(command).await,
        Command::Token(command) => token::run(command).await,
        Command::Bundle(command) => bundle::run(command).await,
        Command::Federation(command) => federation::run(command).await,
        Command::Log(command) => log::run(command).await,
        Command::Revoke(args) => revoke::run(args).await,
        Command::Policy(command) => policy::run(command).await,
        Command::Localauthority(command) => localauthority::run(command).await,
        Command::Api(command) => api::run(command).await,
        Command::Svid(command) => svid::run(command).await,
        Command::Attest(command) => attest::run(command).await,
        Command::Aws(command) => aws::run(command).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        Command::OidcProvider(args) => oidc_provider::run(args).await,
        Command::Helper(args) => helper::run(args).await,
        Command::Wimse(command) => wimse::run(command),
    }
}
