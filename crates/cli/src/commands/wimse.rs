//! `twid wimse verify`: offline verification of a Workload Identity Token (WIT) and, with it,
//! a Workload Proof Token (WPT), against a trust domain's JWT keys.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use twid_spiffe::{JwtBundle, JwtBundleSet, SpiffeBundle, TrustDomain};
use twid_wimse::{
    BoundTokens, IssuerKeys, ProofValidation, ReplayCache, WitValidation, verify_wit, verify_wpt,
};

#[derive(Debug, Subcommand)]
pub(crate) enum WimseCommand {
    /// Verify a WIT, and optionally a WPT made with its key, and print their claims as JSON.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The WIT: a file that contains it, or the token itself.
    #[arg(long)]
    wit: String,
    /// A WPT to verify with the WIT's `cnf.jwk`: a file that contains it, or the token itself.
    #[arg(long, requires = "audience")]
    wpt: Option<String>,
    /// An audience the WPT may name; repeat or separate with commas for several.
    #[arg(long, value_delimiter = ',', requires = "wpt")]
    audience: Vec<String>,
    /// The trust domain's JWT keys: a JWK Set or a SPIFFE bundle (`twid bundle show --format
    /// spiffe`). Keys whose `use` is `x509-svid` are ignored.
    #[arg(long)]
    bundle: std::path::PathBuf,
    /// The trust domain the keys belong to, for example `example.org`. A WIT whose `sub` is
    /// in another trust domain is rejected.
    #[arg(long)]
    trust_domain: String,
    /// When set, the WIT's `iss` must equal this value.
    #[arg(long)]
    issuer: Option<String>,
}

pub(crate) fn run(command: WimseCommand) -> anyhow::Result<()> {
    match command {
        WimseCommand::Verify(args) => verify(&args),
    }
}

fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let trust_domain = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("invalid --trust-domain {:?}", args.trust_domain))?;
    let keys = issuer_keys(&args.bundle, trust_domain)?;
    let wit = read_token(&args.wit, "--wit")?;
    let now = SystemTime::now();
    let validation = WitValidation {
        expected_issuer: args.issuer.clone(),
        ..WitValidation::default()
    };
    let verified = verify_wit(&wit, &keys, &validation, now).context("the WIT is not valid")?;
    let mut report = json!({
        "wit": {
            "header": { "alg": verified.algorithm.as_str(), "kid": verified.key_id },
            "claims": Value::Object(verified.claims.clone()),
        },
    });
    if let Some(wpt) = &args.wpt {
        let wpt = read_token(wpt, "--wpt")?;
        let replay_cache = ReplayCache::default();
        let proof = verify_wpt(
            &wpt,
            &verified,
            &wit,
            &ProofValidation::new(args.audience.clone()),
            &BoundTokens::default(),
            &replay_cache,
            now,
        )
        .context("the WPT is not valid")?;
        report["wpt"] = json!({ "claims": Value::Object(proof.claims) });
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Reads the JWT keys of `trust_domain` from a JWK Set or SPIFFE bundle file.
fn issuer_keys(path: &Path, trust_domain: TrustDomain) -> anyhow::Result<IssuerKeys> {
    let bytes =
        std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    // A SPIFFE bundle's x509-svid keys have no `kid`, which a plain JWK Set requires, so the
    // two formats are parsed separately.
    let bundle = match JwtBundle::parse_jwks(trust_domain.clone(), &bytes) {
        Ok(bundle) => bundle,
        Err(jwks_error) => match SpiffeBundle::parse(trust_domain, &bytes) {
            Ok(bundle) => bundle.jwt_bundle(),
            Err(bundle_error) => anyhow::bail!(
                "{} is neither a JWK Set ({jwks_error}) nor a SPIFFE bundle ({bundle_error})",
                path.display()
            ),
        },
    };
    if bundle.authorities().is_empty() {
        anyhow::bail!(
            "{} contains no JWT key; pass a bundle with keys whose use is jwt-svid",
            path.display()
        );
    }
    let mut bundles = JwtBundleSet::new();
    bundles.insert(bundle);
    IssuerKeys::from_jwt_bundles(&bundles).context("the bundle contains an unusable key")
}

/// Returns the token in the file at `value`, or `value` itself when no such file exists.
fn read_token(value: &str, flag: &str) -> anyhow::Result<String> {
    let path = Path::new(value);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {flag} file {}", path.display()))?;
        return Ok(text.trim().to_owned());
    }
    if value.split('.').count() != 3 {
        anyhow::bail!("{flag} is neither a readable file nor a compact JWS");
    }
    Ok(value.trim().to_owned())
}
