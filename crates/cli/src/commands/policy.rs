//! `twid policy`: sign appraisal policy documents offline, apply them to the server, and list
//! and show the stored versions. See docs/policy.md for the document format and the rules the
//! server enforces.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use clap::{Args, Subcommand};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde_json::{Value, json};
use twid_proto::admin::{ApplyPolicyRequest, GetPolicyRequest, ListPoliciesRequest, PolicyVersion};
use twid_server::{OwnerKey, PolicyDocument};

use super::entry::CommonArgs;
use crate::client;
use crate::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Sign a policy document with an owner's private key, offline. Writes the compact JWS to
    /// --out, or to standard output.
    Sign(SignArgs),
    /// Apply a signed policy document (a JWS from `twid policy sign`) as the next version.
    Apply(ApplyArgs),
    /// List the stored policy versions, oldest first.
    List(CommonArgs),
    /// Print a policy version's document and signer; the current version by default.
    // `--version` selects the policy version here, so twid's own version flag is off.
    #[command(disable_version_flag = true)]
    Show(ShowArgs),
    /// Print the public JWK and kid (RFC 7638 thumbprint) of a P-256 key, to paste into a
    /// document's owners list. Takes a PEM public key or a PKCS#8 private key.
    Thumbprint(ThumbprintArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// PKCS#8 PEM file of the owner's EC P-256 private key. It must not be readable by group
    /// or others.
    #[arg(long)]
    key: PathBuf,
    /// The policy document, JSON.
    #[arg(long)]
    document: PathBuf,
    /// Write the JWS to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// The signed document, as `twid policy sign` wrote it.
    file: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The version to show; the current one when absent.
    #[arg(long)]
    version: Option<u64>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ThumbprintArgs {
    /// PEM file with a P-256 PUBLIC KEY or a PKCS#8 PRIVATE KEY.
    key: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub(crate) async fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Sign(args) => sign(&args),
        PolicyCommand::Apply(args) => apply(args).await,
        PolicyCommand::List(common) => list(common).await,
        PolicyCommand::Show(args) => show(args).await,
        PolicyCommand::Thumbprint(args) => thumbprint(&args),
    }
}

fn sign(args: &SignArgs) -> anyhow::Result<()> {
    let pkcs8 = read_private_key(&args.key)?;
    let document = std::fs::read(&args.document)
        .with_context(|| format!("cannot read the document {}", args.document.display()))?;
    let parsed = PolicyDocument::parse(&document)
        .with_context(|| format!("{} cannot be signed", args.document.display()))?;
    let (jws, kid) = twid_server::sign_document(&pkcs8, &document)
        .with_context(|| format!("cannot sign with {}", args.key.display()))?;
    match &args.out {
        Some(out) => std::fs::write(out, format!("{jws}\n"))
            .with_context(|| format!("cannot write {}", out.display()))?,
        None => println!("{jws}"),
    }
    eprintln!("signed policy version {} with key {kid}", parsed.version);
    Ok(())
}

async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let jws = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read the signed policy {}", args.file.display()))?;
    let mut admin = client::admin(&args.common.socket_path).await?;
    let response = admin
        .apply_policy(ApplyPolicyRequest {
            jws: jws.trim().to_owned(),
        })
        .await
        .map_err(output::status_error)?
        .into_inner();
    let version = response.version;
    let omitted = &response.omitted_attestors;
    match args.common.output {
        OutputFormat::Json => println!(
            "{}",
            json!({ "version": version, "omitted_attestors": omitted })
        ),
        OutputFormat::Pretty => {
            println!("Applied policy version {version}");
            if !omitted.is_empty() {
                eprintln!(
                    "warning: policy version {version} has no object for the configured \
                     evidence attestors {}, so the server rejects their evidence until a \
                     version names them",
                    omitted.join(", ")
                );
            }
        }
    }
    Ok(())
}

async fn list(common: CommonArgs) -> anyhow::Result<()> {
    let mut admin = client::admin(&common.socket_path).await?;
    let versions = admin
        .list_policies(ListPoliciesRequest {})
        .await
        .map_err(output::status_error)?
        .into_inner()
        .versions;
    match common.output {
        OutputFormat::Json => {
            let list: Vec<Value> = versions.iter().map(summary_json).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "versions": list }))?
            );
        }
        OutputFormat::Pretty => {
            println!(
                "Found {} policy version{}\n",
                versions.len(),
                if versions.len() == 1 { "" } else { "s" }
            );
            for version in &versions {
                print_summary(version);
                println!();
            }
        }
    }
    Ok(())
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let mut admin = client::admin(&args.common.socket_path).await?;
    let version = admin
        .get_policy(GetPolicyRequest {
            version: args.version.unwrap_or(0),
        })
        .await
        .map_err(output::status_error)?
        .into_inner();
    let document: Value = serde_json::from_str(&version.document)
        .context("the server returned a policy document that is not JSON")?;
    match args.common.output {
        OutputFormat::Json => {
            let mut value = summary_json(&version);
            value["document"] = document;
            value["jws"] = Value::from(version.jws.as_str());
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        OutputFormat::Pretty => {
            print_summary(&version);
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
    }
    Ok(())
}

fn thumbprint(args: &ThumbprintArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.key)
        .with_context(|| format!("cannot read the key {}", args.key.display()))?;
    let owner = if let Ok(spki) = SubjectPublicKeyInfoDer::from_pem_slice(&bytes) {
        OwnerKey::from_spki_der(spki.as_ref())?
    } else {
        let pkcs8 = pkcs8_from_pem(&args.key, &bytes)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).map_err(
            |error| {
                anyhow::anyhow!(
                    "{} is not an EC P-256 key ({error}); owner keys are P-256",
                    args.key.display()
                )
            },
        )?;
        OwnerKey::from_point(pair.public_key().as_ref())?
    };
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "kid": owner.kid(), "jwk": owner.jwk() }))?
        ),
        OutputFormat::Pretty => {
            println!("kid: {}", owner.kid());
            println!("{}", serde_json::to_string_pretty(&owner.jwk())?);
        }
    }
    Ok(())
}

/// Reads a PKCS#8 private key file, rejecting one that group or others may read.
fn read_private_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read the owner key {}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the owner key {} has mode {mode:03o}, so group or others may read it; run \
             `chmod 600 {}` and keep it off shared machines",
            path.display(),
            path.display()
        );
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the owner key {}", path.display()))?;
    pkcs8_from_pem(path, &bytes)
}

fn pkcs8_from_pem(path: &Path, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(PrivateKeyDer::Pkcs8(der)) => Ok(der.secret_pkcs8_der().to_vec()),
        Ok(_) => bail!(
            "{} contains a SEC1 or PKCS#1 key; convert it to PKCS#8 with `openssl pkcs8 -topk8 \
             -nocrypt -in {} -out owner.p8.pem`",
            path.display(),
            path.display()
        ),
        Err(error) => bail!(
            "{} contains no PEM PRIVATE KEY or PUBLIC KEY block ({error}); create an owner key \
             with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out \
             owner.pem`",
            path.display()
        ),
    }
}

fn summary_json(version: &PolicyVersion) -> Value {
    json!({
        "version": version.version,
        "signer_kid": version.signer_kid,
        "applied_at": output::timestamp(version.applied_at),
        "comment": version.comment,
    })
}

fn print_summary(version: &PolicyVersion) {
    println!("Version          : {}", version.version);
    println!("Signer kid       : {}", version.signer_kid);
    println!(
        "Applied at       : {}",
        output::timestamp(version.applied_at)
    );
    if !version.comment.is_empty() {
        // Debug formatting escapes control characters, which a comment could carry.
        println!("Comment          : {:?}", version.comment);
    }
}
