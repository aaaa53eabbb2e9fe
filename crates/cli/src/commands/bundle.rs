//! `twid bundle show`: the server's trust bundle as PEM or in the SPIFFE bundle format.
//! `twid bundle set`: store a foreign trust domain's bundle, as `spire-server bundle set`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use rustls_pki_types::CertificateDer;
use twid_proto::admin::{GetBundleRequest, SetFederatedBundleRequest};
use twid_spiffe::TrustDomain;
use twid_spiffe::bundle::SpiffeBundle;
use twid_spiffe::jwt::JwtAuthority;

use crate::client::{self, DEFAULT_SERVER_SOCKET};
use crate::output;

#[derive(Debug, Subcommand)]
pub(crate) enum BundleCommand {
    /// Print the trust domain's bundle.
    Show(ShowArgs),
    /// Store a foreign trust domain's bundle (SPIFFE bundle JSON or PEM certificates), for
    /// example the first bundle of a federated trust domain.
    Set(SetArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SetArgs {
    /// The foreign trust domain, as `spiffe://example.org` or `example.org`.
    #[arg(long)]
    id: String,
    /// The bundle file; standard input when absent.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Path of the server's admin API socket.
    #[arg(long, default_value = DEFAULT_SERVER_SOCKET)]
    socket_path: PathBuf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum BundleFormat {
    /// The X.509 authorities as PEM certificates.
    #[default]
    Pem,
    /// The SPIFFE bundle format (a JWK Set with X.509 and JWT authorities).
    Spiffe,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: BundleFormat,
    /// Path of the server's admin API socket.
    #[arg(long, default_value = DEFAULT_SERVER_SOCKET)]
    socket_path: PathBuf,
}

pub(crate) async fn run(command: BundleCommand) -> anyhow::Result<()> {
    match command {
        BundleCommand::Show(args) => show(args).await,
        BundleCommand::Set(args) => set(args).await,
    }
}

async fn set(args: SetArgs) -> anyhow::Result<()> {
    let trust_domain = args
        .id
        .strip_prefix("spiffe://")
        .unwrap_or(&args.id)
        .to_owned();
    let bundle = match &args.path {
        Some(path) => std::fs::read(path)
            .map_err(|error| anyhow::anyhow!("failed to read {}: {error}", path.display()))?,
        None => {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)?;
            data
        }
    };
    let mut admin = client::admin(&args.socket_path).await?;
    let response = admin
        .set_federated_bundle(SetFederatedBundleRequest {
            trust_domain: trust_domain.clone(),
            bundle,
        })
        .await
        .map_err(output::status_error)?
        .into_inner();
    println!(
        "Bundle of {trust_domain} set (sequence {})",
        response.bundle_sequence
    );
    Ok(())
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let mut admin = client::admin(&args.socket_path).await?;
    let bundle = admin
        .get_bundle(GetBundleRequest {})
        .await
        .map_err(output::status_error)?
        .into_inner();
    let trust_domain = TrustDomain::new(&bundle.trust_domain)?;
    let x509: Vec<CertificateDer<'static>> = bundle
        .x509_authorities
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    match args.format {
        BundleFormat::Pem => {
            let pem = twid_spiffe::X509Bundle::from_authorities(trust_domain, x509)?.to_pem();
            print!("{pem}");
        }
        BundleFormat::Spiffe => {
            let mut spiffe = SpiffeBundle::new(trust_domain);
            spiffe.x509_authorities = x509;
            for key in &bundle.jwt_authorities {
                let authority = JwtAuthority::from_spki_der(&key.key_id, &key.public_key)?;
                spiffe.jwt_authorities.insert(key.key_id.clone(), authority);
            }
            spiffe.sequence_number = Some(bundle.sequence_number);
            spiffe.refresh_hint = (bundle.refresh_hint > 0).then_some(bundle.refresh_hint as u64);
            println!("{}", String::from_utf8(spiffe.to_json())?);
        }
    }
    Ok(())
}
