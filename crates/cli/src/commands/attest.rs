//! `twid attest verify`: verify evidence offline and print its claims.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use twid_evidence::policy::Policy;
use twid_evidence::{Envelope, Kind, TrustAnchors, Verified, VerifyError, dcap, ias, snp, tpm};

#[derive(Debug, Subcommand)]
pub(crate) enum AttestCommand {
    /// Verify evidence against its vendor's roots and the default policy, and print the claims
    /// as JSON.
    Verify(VerifyArgs),
    /// Attest this workload with its own TEE evidence through the agent, and write the key,
    /// X.509-SVID, bundle and WIT it receives.
    Workload(super::attest_workload::WorkloadArgs),
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Evidence kind. Without it, the evidence file must be a twid evidence envelope (JSON),
    /// which names its kind.
    #[arg(long, value_parser = parse_kind)]
    kind: Option<Kind>,
    /// Evidence file: a quote, report or document as raw bytes, hex or base64; for sgx-ias the
    /// report body JSON; for tpm a quote JSON.
    #[arg(long)]
    evidence: PathBuf,
    /// DCAP collateral: a JSON file in dcap-qvl's layout, or a folder of Intel PCS files
    /// (tcb_info.json, qe_identity.json, tcb_info_issuer_chain.pem, pck_crl.der,
    /// pck_crl_issuer_chain.pem, root_ca_crl.der).
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// Trusted root certificate (PEM or DER), repeatable. Replaces the vendor's production
    /// roots, which are trusted by default.
    #[arg(long = "root")]
    roots: Vec<PathBuf>,
    /// Certificates that come with the evidence (PEM or DER), repeatable: for snp the VCEK or
    /// VLEK and the ASK/ASVK/ARK chain, for sgx-ias the report signing certificate.
    #[arg(long = "certs")]
    certificates: Vec<PathBuf>,
    /// The IAS report signature (X-IASReport-Signature), raw or base64; sgx-ias only.
    #[arg(long)]
    signature: Option<PathBuf>,
    /// The nonce a TPM quote must carry as extraData, in hex; tpm only.
    #[arg(long)]
    nonce: Option<String>,
    /// Verification time: RFC 3339 (2025-07-01T00:00:00Z) or Unix seconds. Defaults to now.
    #[arg(long, value_parser = parse_time)]
    now: Option<i64>,
    /// SHA-256 (hex) of the DER public key of the TPM attestation key to require; tpm only.
    /// Without it the key in the evidence is taken as given.
    #[arg(long)]
    ak_sha256: Option<String>,
    /// Accept evidence from debug-mode enclaves, TDs, guests and Nitro enclaves.
    #[arg(long)]
    allow_debug: bool,
}

pub(crate) async fn run(command: AttestCommand) -> anyhow::Result<()> {
    match command {
        AttestCommand::Verify(args) => verify(args),
        AttestCommand::Workload(args) => super::attest_workload::run(args).await,
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let now = args
        .now
        .unwrap_or_else(|| OffsetDateTime::now_utc().unix_timestamp());
    let raw = std::fs::read(&args.evidence)
        .with_context(|| format!("failed to read evidence file {}", args.evidence.display()))?;
    let (kind, evidence, envelope) = match args.kind {
        Some(kind) if kind == Kind::Tpm || kind == Kind::SgxIas => (kind, raw, None),
        Some(kind) => (kind, decode_bytes(&raw), None),
        None => {
            let envelope = Envelope::from_json(&raw).map_err(|error| {
                anyhow::anyhow!(
                    "{}: {error}; pass --kind for a raw quote, report or document",
                    args.evidence.display()
                )
            })?;
            (envelope.kind, envelope.evidence.clone(), Some(envelope))
        }
    };
    let anchors = trust_anchors(kind, &args.roots)?;
    let mut certificates = Vec::new();
    for path in &args.certificates {
        certificates.extend(read_certificates(path)?);
    }
    if let Some(envelope) = &envelope {
        certificates.extend(envelope.certificates.iter().cloned());
    }
    warn_ignored_options(kind, &args);
    if kind == Kind::Tpm && args.nonce.is_none() {
        eprintln!(
            "note: without --nonce the quote's extraData is not checked, so the quote may be old"
        );
    }
    let result = match kind {
        Kind::SgxDcap | Kind::Tdx => {
            let collateral = match (
                &args.collateral,
                envelope.as_ref().and_then(|e| e.collateral.as_ref()),
            ) {
                (Some(path), _) => load_collateral(path, &evidence)?,
                (None, Some(json)) => dcap::Collateral::from_dcap_qvl_json(json)
                    .map_err(|error| anyhow::anyhow!("collateral in the envelope: {error}"))?,
                (None, None) => bail!("{kind} evidence needs --collateral FILE|DIR"),
            };
            dcap::verify(&evidence, &collateral, &anchors, now).and_then(|verified| {
                if verified.kind == kind {
                    Ok(verified)
                } else {
                    Err(VerifyError::malformed(format!(
                        "the quote is {} evidence, not {kind}",
                        verified.kind
                    )))
                }
            })
        }
        Kind::SgxIas => {
            let signature = match (
                &args.signature,
                envelope.as_ref().and_then(|e| e.signature.clone()),
            ) {
                (Some(path), _) => std::fs::read(path)
                    .with_context(|| format!("failed to read signature file {}", path.display()))?,
                (None, Some(signature)) => signature,
                (None, None) => bail!("sgx-ias evidence needs --signature FILE"),
            };
            ias::verify(&evidence, &signature, &certificates, &anchors, now)
        }
        Kind::Snp => {
            let Some((vek, chain)) = certificates.split_first() else {
                bail!("snp evidence needs --certs with the VCEK or VLEK, then the ASK and ARK");
            };
            snp::verify(&evidence, vek, chain, &anchors, now)
        }
        Kind::Nitro => twid_evidence::nitro::verify(&evidence, &anchors, now),
        Kind::Tpm => {
            let nonce = args
                .nonce
                .as_deref()
                .map(hex::decode)
                .transpose()
                .context("--nonce must be hex")?;
            tpm::verify_json(&evidence, nonce.as_deref(), now)
        }
    };
    let verified = match result {
        Ok(verified) => verified,
        Err(error) => {
            print_result(kind, None, Some(&error), now);
            bail!("{kind} evidence rejected: {error}");
        }
    };
    let mut policy = Policy {
        allow_debug: args.allow_debug,
        ..Policy::default()
    };
    if let twid_evidence::Claims::Tpm(claims) = &verified.claims {
        let ak = match &args.ak_sha256 {
            Some(text) => {
                let mut ak = [0u8; 32];
                hex::decode_to_slice(text, &mut ak).context("--ak-sha256 must be 64 hex digits")?;
                ak
            }
            None => {
                eprintln!(
                    "note: the TPM attestation key was taken from the evidence, not checked \
                     against an enrolled key; pass --ak-sha256 to require one"
                );
                claims.ak_sha256
            }
        };
        policy.allowed_ak_sha256 = vec![ak];
    }
    if let Err(error) = policy.check(&verified, now) {
        print_result(kind, Some(&verified), Some(&error), now);
        let hint = if error.reason == twid_evidence::Reason::Debug {
            "; pass --allow-debug to accept it"
        } else {
            ""
        };
        bail!("{kind} evidence rejected by the default policy: {error}{hint}");
    }
    print_result(kind, Some(&verified), None, now);
    Ok(())
}

/// Warns about options that the evidence kind does not use, so a typo in a kind does not
/// pass silently.
fn warn_ignored_options(kind: Kind, args: &VerifyArgs) {
    let dcap = matches!(kind, Kind::SgxDcap | Kind::Tdx);
    let ignored = [
        ("--collateral", args.collateral.is_some() && !dcap),
        (
            "--signature",
            args.signature.is_some() && kind != Kind::SgxIas,
        ),
        ("--nonce", args.nonce.is_some() && kind != Kind::Tpm),
        ("--ak-sha256", args.ak_sha256.is_some() && kind != Kind::Tpm),
        (
            "--certs",
            !args.certificates.is_empty() && !matches!(kind, Kind::Snp | Kind::SgxIas),
        ),
    ];
    for (option, unused) in ignored {
        if unused {
            eprintln!("note: {option} is ignored for {kind} evidence");
        }
    }
}

/// Prints one JSON document: the claims when verification succeeded (even if the policy then
/// rejected them), and `status` `verified` or `rejected` with the reason.
fn print_result(kind: Kind, verified: Option<&Verified>, error: Option<&VerifyError>, now: i64) {
    let mut document = json!({
        "status": if error.is_none() { "verified" } else { "rejected" },
        "kind": kind.as_str(),
        "verified_at": format_time(now),
    });
    if let Some(error) = error {
        document["reason"] = json!(error.reason.as_str());
        document["error"] = json!(error.message);
    }
    if let Some(verified) = verified {
        document["tcb_status"] = verified
            .tcb_status
            .map_or(Value::Null, |status| json!(status.as_str()));
        document["advisory_ids"] = json!(verified.advisory_ids);
        document["debug"] = json!(verified.debug());
        document["claims"] = serde_json::to_value(&verified.claims).unwrap_or(Value::Null);
        document["selectors"] = json!(
            verified
                .selectors()
                .into_iter()
                .map(|(ty, value)| format!("{ty}:{value}"))
                .collect::<Vec<_>>()
        );
        if let Some(until) = verified.valid_until {
            document["valid_until"] = json!(format_time(until));
        }
        if let Some(issued) = verified.collateral_issued_at {
            document["collateral_issued_at"] = json!(format_time(issued));
        }
        document["evidence_sha256"] = json!(hex::encode(verified.evidence_sha256));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&document).unwrap_or_default()
    );
}

fn format_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn parse_kind(text: &str) -> Result<Kind, String> {
    text.parse()
}

/// Parses `--now`: Unix seconds, or an RFC 3339 time.
fn parse_time(text: &str) -> Result<i64, String> {
    /// 9999-12-31T23:59:59Z, the last time X.509 can express.
    const MAX_SECONDS: i64 = 253_402_300_799;
    if let Ok(seconds) = text.parse::<i64>() {
        if !(0..=MAX_SECONDS).contains(&seconds) {
            return Err(format!(
                "invalid time {text:?}: Unix seconds must be between 0 and {MAX_SECONDS}; \
                 a 13-digit value is probably milliseconds"
            ));
        }
        return Ok(seconds);
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|_| {
            format!(
                "invalid time {text:?}: expected RFC 3339 (2025-07-01T00:00:00Z) or Unix seconds"
            )
        })
}

/// Decodes evidence given as hex or base64 text; anything else is taken as raw bytes. Binary
/// evidence is never all hex digits or all base64 characters in practice, because its headers
/// hold zero bytes.
fn decode_bytes(raw: &[u8]) -> Vec<u8> {
    let text: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|byte| !byte.is_ascii_whitespace())
        .collect();
    if text.is_empty() || raw.contains(&0) {
        return raw.to_vec();
    }
    let text = text.strip_prefix(b"0x").unwrap_or(&text);
    if text.len().is_multiple_of(2)
        && text.iter().all(u8::is_ascii_hexdigit)
        && let Ok(bytes) = hex::decode(text)
    {
        return bytes;
    }
    if let Ok(bytes) = STANDARD.decode(text) {
        return bytes;
    }
    if let Ok(bytes) = URL_SAFE_NO_PAD.decode(text) {
        return bytes;
    }
    raw.to_vec()
}

/// Returns the roots given with `--root`, or the vendor's production roots.
fn trust_anchors(kind: Kind, paths: &[PathBuf]) -> anyhow::Result<TrustAnchors> {
    if paths.is_empty() {
        return Ok(TrustAnchors::production(kind));
    }
    let mut anchors = TrustAnchors::new();
    for path in paths {
        for der in read_certificates(path)? {
            anchors.add_certificate(&der);
        }
    }
    Ok(anchors)
}

/// Reads every certificate in a PEM file, or one DER certificate.
fn read_certificates(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("failed to read certificate file {}", path.display()))?;
    if !bytes.starts_with(b"-----") && !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Ok(vec![bytes]);
    }
    let mut certificates = Vec::new();
    for item in rustls_pemfile::certs(&mut bytes.as_slice()) {
        let certificate = item.with_context(|| format!("invalid PEM in {}", path.display()))?;
        certificates.push(certificate.to_vec());
    }
    if certificates.is_empty() {
        bail!("{} contains no PEM CERTIFICATE block", path.display());
    }
    Ok(certificates)
}

/// Loads DCAP collateral from a dcap-qvl JSON file or a folder of PCS files.
fn load_collateral(path: &Path, quote: &[u8]) -> anyhow::Result<dcap::Collateral> {
    // A server's collateral_dir contains one folder per FMSPC, or a <fmspc>.json, so the same
    // cache can be checked offline.
    if path.is_dir() && !path.join(dcap::PCS_FILE_NAMES.tcb_info).exists() {
        let fmspc = dcap::quote_fmspc(quote)
            .map_err(|error| anyhow::anyhow!("cannot read the quote's FMSPC: {error}"))?;
        let folder = path.join(hex::encode_upper(fmspc));
        let json = path.join(format!("{}.json", hex::encode(fmspc)));
        if folder.is_dir() {
            return load_collateral(&folder, quote);
        }
        if json.is_file() {
            return load_collateral(&json, quote);
        }
        bail!(
            "{} contains neither the PCS files ({}, ...) nor a cache entry for FMSPC {} ({} or {})",
            path.display(),
            dcap::PCS_FILE_NAMES.tcb_info,
            hex::encode_upper(fmspc),
            folder.display(),
            json.display()
        );
    }
    if path.is_dir() {
        let read = |name: &str| -> anyhow::Result<Vec<u8>> {
            let file = path.join(name);
            std::fs::read(&file).with_context(|| format!("failed to read {}", file.display()))
        };
        let read_optional = |name: &str| -> Option<Vec<u8>> { std::fs::read(path.join(name)).ok() };
        let tcb_info = read("tcb_info.json")?;
        let qe_identity = read("qe_identity.json")?;
        let tcb_chain = read("tcb_info_issuer_chain.pem")?;
        let qe_chain = read_optional("qe_identity_issuer_chain.pem");
        let pck_crl = read("pck_crl.der")?;
        let pck_crl_chain = read("pck_crl_issuer_chain.pem")?;
        let root_crl = read("root_ca_crl.der")?;
        let files = dcap::PcsFiles {
            tcb_info: &tcb_info,
            qe_identity: &qe_identity,
            tcb_info_issuer_chain: &tcb_chain,
            qe_identity_issuer_chain: qe_chain.as_deref(),
            pck_crl: &pck_crl,
            pck_crl_issuer_chain: &pck_crl_chain,
            root_ca_crl: &root_crl,
        };
        return dcap::Collateral::from_pcs_files(&files)
            .map_err(|error| anyhow::anyhow!("collateral folder {}: {error}", path.display()));
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("failed to read collateral file {}", path.display()))?;
    dcap::Collateral::from_dcap_qvl_json(&bytes)
        .map_err(|error| anyhow::anyhow!("collateral file {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_accepts_rfc3339_and_unix() {
        assert_eq!(parse_time("1751328000"), Ok(1_751_328_000));
        assert_eq!(parse_time("2025-07-01T00:00:00Z"), Ok(1_751_328_000));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn time_rejects_milliseconds() {
        let error = parse_time("1751328000000").expect_err("milliseconds");
        assert!(error.contains("milliseconds"), "{error}");
        assert!(parse_time("-1").is_err());
    }

    #[test]
    fn evidence_decodes_hex_base64_and_raw() {
        assert_eq!(decode_bytes(b"0a0b\n"), vec![0x0a, 0x0b]);
        // Text that is valid hex is read as hex, so this base64 needs a non-hex character.
        assert_eq!(decode_bytes(b"AAECAw=="), vec![0, 1, 2, 3]);
        assert_eq!(decode_bytes(&[3, 0, 2]), vec![3, 0, 2]);
    }
}
