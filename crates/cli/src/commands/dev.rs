//! `twid dev`: a server and an agent in one process, on embedded defaults, for trying twid and
//! for development.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use twid_proto::admin::{CreateEntryRequest, CreateJoinTokenRequest, GetBundleRequest};
use twid_proto::types::{Entry, Selector};
use twid_spiffe::{SpiffeId, TrustDomain};

use crate::client;

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Directory for the database, keys and sockets; created if missing.
    #[arg(long, default_value = ".twid-dev")]
    data_dir: PathBuf,
    /// Trust domain of the development server.
    #[arg(long, default_value = "example.org")]
    trust_domain: String,
    /// Log level: DEBUG, INFO, WARN or ERROR.
    #[arg(long, default_value = "INFO")]
    log_level: String,
}

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    let trust_domain = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("invalid --trust-domain {:?}", args.trust_domain))?;
    let _log_guard =
        twid_telemetry::init_logging(&args.log_level, twid_telemetry::LogFormat::Text)?;
    let data_dir = prepare_data_dir(&args.data_dir)?;

    let server_config = twid_config::ServerConfig::new_dev(trust_domain.clone(), &data_dir);
    let admin_socket = server_config.socket_path.clone();
    let server = twid_server::Server::start(server_config)
        .await
        .context("server failed to start")?;
    let server_port = server.node_api_address().port();

    let agent_dir = data_dir.join("agent");
    let join_token = if agent_has_identity(&agent_dir) {
        None
    } else {
        Some(register_dev_agent(&admin_socket, &trust_domain).await?)
    };
    let registered_now = join_token.is_some();
    let bundle_path = write_bundle(&admin_socket, &data_dir).await?;

    let mut agent_config = twid_config::AgentConfig::new_dev(
        trust_domain.clone(),
        "127.0.0.1".to_owned(),
        server_port,
        &agent_dir,
        data_dir.join("agent.sock"),
    );
    agent_config.trust_bundle_path = Some(bundle_path);
    agent_config.join_token = join_token;
    let workload_socket = agent_config.socket_path.clone();
    let agent = twid_agent::Agent::start(agent_config, twid_agent::AgentOptions::default())
        .await
        .context("agent failed to start")?;

    print_next_steps(&NextSteps {
        trust_domain: &trust_domain,
        agent_id: agent.agent_id(),
        workload_socket: &workload_socket,
        admin_socket: &admin_socket,
        registered_now,
    });
    let signal = super::run::shutdown_signal().await;
    tracing::info!(signal, "shutting down");
    agent.shutdown().await;
    server.shutdown().await;
    Ok(())
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("failed to restrict {} to its owner", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("failed to resolve {}", dir.display()))?;
    // sun_path has room for 108 bytes including the terminating NUL.
    let longest = dir.join("server.sock").as_os_str().len();
    if longest > 107 {
        anyhow::bail!(
            "--data-dir {} is too long for Unix socket paths ({longest} bytes, the maximum is \
             107); choose a shorter directory",
            dir.display()
        );
    }
    Ok(dir)
}

fn agent_has_identity(agent_dir: &Path) -> bool {
    agent_dir.join("agent_svid.der").exists()
}

/// Creates a join token for the embedded agent and an entry for the invoking user's uid,
/// parented to the agent that will attest with that token.
async fn register_dev_agent(
    admin_socket: &Path,
    trust_domain: &TrustDomain,
) -> anyhow::Result<String> {
    let mut admin = client::admin(admin_socket).await?;
    let token = admin
        .create_join_token(CreateJoinTokenRequest {
            ttl: 600,
            spiffe_id: String::new(),
        })
        .await
        .map_err(crate::output::status_error)?
        .into_inner()
        .token;
    let uid = nix::unistd::getuid().as_raw();
    let entry = Entry {
        spiffe_id: format!("spiffe://{trust_domain}/uid/{uid}"),
        parent_id: format!("spiffe://{trust_domain}/spire/agent/join_token/{token}"),
        selectors: vec![Selector {
            r#type: "unix".to_owned(),
            value: format!("uid:{uid}"),
        }],
        ..Entry::default()
    };
    admin
        .create_entry(CreateEntryRequest { entry: Some(entry) })
        .await
        .map_err(crate::output::status_error)?;
    Ok(token)
}

async fn write_bundle(admin_socket: &Path, data_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut admin = client::admin(admin_socket).await?;
    let bundle = admin
        .get_bundle(GetBundleRequest {})
        .await
        .map_err(crate::output::status_error)?
        .into_inner();
    let certs = bundle
        .x509_authorities
        .into_iter()
        .map(rustls_pki_types::CertificateDer::from)
        .collect();
    let pem =
        twid_spiffe::X509Bundle::from_authorities(TrustDomain::new(&bundle.trust_domain)?, certs)?
            .to_pem();
    let path = data_dir.join("bundle.pem");
    std::fs::write(&path, pem).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(path)
}

/// The values that the start-up message of `twid dev` prints.
struct NextSteps<'a> {
    trust_domain: &'a TrustDomain,
    agent_id: &'a SpiffeId,
    workload_socket: &'a Path,
    admin_socket: &'a Path,
    /// Whether this start registered the entry for the user's uid, which later starts keep.
    registered_now: bool,
}

fn print_next_steps(steps: &NextSteps<'_>) {
    let NextSteps {
        trust_domain,
        agent_id,
        workload_socket,
        admin_socket,
        registered_now,
    } = steps;
    let twid = std::env::current_exe()
        .map(|path| shell_word(&path.display().to_string()))
        .unwrap_or_else(|_| "twid".to_owned());
    let uid = nix::unistd::getuid().as_raw();
    println!("twid dev is running for trust domain {trust_domain}");
    println!("  Workload API socket: {}", workload_socket.display());
    println!("  Admin API socket:    {}", admin_socket.display());
    // Entries for this agent's workloads take it as their --parent-id.
    println!("  Agent SPIFFE ID:     {agent_id}");
    if *registered_now {
        println!(
            "  Registered spiffe://{trust_domain}/uid/{uid} for workloads with unix:uid:{uid}"
        );
    }
    // The commands below are meant to be pasted into a shell, so paths are quoted for it.
    let workload_path = workload_socket.display().to_string();
    let admin = shell_word(&admin_socket.display().to_string());
    println!();
    println!("Try, in another shell:");
    // A SPIFFE endpoint address cannot contain '?' or '#', and clients differ on whether they
    // percent-decode '%', so such a path goes to the flag instead of the variable.
    let api_socket = if workload_path.contains(['?', '#', '%']) {
        format!(" --socket-path {}", shell_word(&workload_path))
    } else {
        let endpoint = shell_word(&format!("unix://{workload_path}"));
        println!("  export SPIFFE_ENDPOINT_SOCKET={endpoint}");
        String::new()
    };
    println!("  {twid} api fetch x509{api_socket}");
    println!("  {twid} api fetch jwt --audience example{api_socket}");
    println!("  {twid} entry show --socket-path {admin}");
    println!("  {twid} log show --socket-path {admin}");
    println!("  {twid} log verify --socket-path {admin}");
    println!("Stop with Ctrl-C.");
}

/// Returns `word` as one word of a POSIX shell command: unchanged when every character is
/// one that no shell treats specially, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c));
    if plain {
        word.to_owned()
    } else {
        // Inside single quotes only the quote itself is special: close, escape it, reopen.
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_word_quotes_only_when_needed() {
        assert_eq!(
            shell_word("/tmp/twid-dev/agent.sock"),
            "/tmp/twid-dev/agent.sock"
        );
        assert_eq!(shell_word("unix:///run/a.sock"), "unix:///run/a.sock");
        assert_eq!(shell_word("/tmp/my dir/a.sock"), "'/tmp/my dir/a.sock'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn shell_word_survives_the_shell() {
        let words = [
            "/tmp/my dir/a.sock",
            "/tmp/it's/a.sock",
            "/tmp/$HOME/`id`/a\\b/*?#!;&|<>(){}~\"/a.sock",
            "/tmp/tab\tand\nnewline",
        ];
        for word in words {
            let output = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_word(word)))
                .output()
                .expect("run sh");
            assert_eq!(String::from_utf8_lossy(&output.stdout), word);
        }
    }
}
