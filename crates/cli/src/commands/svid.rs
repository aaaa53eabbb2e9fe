//! `twid svid inspect`: print what an X.509-SVID or JWT-SVID states, including the attestation
//! claims of SVIDs issued on hardware evidence.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use twid_evidence::svid_claims::AttestationClaims;
use twid_spiffe::JwtSvid;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::log::escape_control;
use crate::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub(crate) enum SvidCommand {
    /// Print the SPIFFE ID, issuer, serial number or JWT ID, validity, key type and
    /// attestation claims of an X.509-SVID or a JWT-SVID. Signatures are not verified.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// A certificate file in PEM or DER, where a chain starts with the leaf, a file that
    /// contains a JWT-SVID, or the JWT-SVID itself.
    input: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub(crate) async fn run(command: SvidCommand) -> anyhow::Result<()> {
    match command {
        SvidCommand::Inspect(args) => inspect(&args),
    }
}

fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let path = Path::new(&args.input);
    let report = if path.is_file() {
        let bytes =
            std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
        inspect_bytes(&bytes).with_context(|| format!("failed to inspect {}", path.display()))?
    } else if looks_like_jwt(&args.input) {
        inspect_jwt(args.input.trim())?
    } else {
        // The input is not echoed because it may be a malformed token.
        bail!(
            "the input is neither an existing file nor a JWT; pass a certificate file, a token file or a token"
        );
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Pretty => print!("{}", pretty(&report)),
    }
    Ok(())
}

/// Inspects file contents: PEM certificates, a JWT, or DER certificates.
fn inspect_bytes(bytes: &[u8]) -> anyhow::Result<Value> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if text.contains("-----BEGIN") {
            let mut certificates = Vec::new();
            for item in rustls_pemfile::certs(&mut text.as_bytes()) {
                certificates.push(item.context("invalid PEM certificate")?.to_vec());
            }
            if certificates.is_empty() {
                bail!("the PEM file contains no CERTIFICATE block");
            }
            return inspect_x509(&certificates);
        }
        if looks_like_jwt(text) {
            return inspect_jwt(text.trim());
        }
    }
    let certificates = twid_spiffe::split_der_certificates(bytes)
        .map_err(|error| anyhow::anyhow!("neither PEM, a JWT nor DER certificates: {error}"))?;
    let certificates: Vec<Vec<u8>> = certificates.iter().map(|cert| cert.to_vec()).collect();
    if certificates.is_empty() {
        bail!("the file is empty");
    }
    inspect_x509(&certificates)
}

/// Returns whether `text` has the shape of a compact JWS: three base64url parts.
fn looks_like_jwt(text: &str) -> bool {
    let parts: Vec<&str> = text.trim().split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|part| !part.is_empty())
        && parts.iter().all(|part| {
            part.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn inspect_x509(chain: &[Vec<u8>]) -> anyhow::Result<Value> {
    let leaf_der = &chain[0];
    let (rest, leaf) = X509Certificate::from_der(leaf_der)
        .map_err(|error| anyhow::anyhow!("invalid certificate: {error}"))?;
    if !rest.is_empty() {
        bail!("{} trailing bytes after the leaf certificate", rest.len());
    }
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => uris.push(uri.to_string()),
                GeneralName::DNSName(dns) => dns_names.push(dns.to_string()),
                _ => {}
            }
        }
    }
    let Some(spiffe_id) = uris.iter().find(|uri| uri.starts_with("spiffe://")) else {
        bail!("the leaf certificate has no spiffe:// URI SAN, so it is not an X.509-SVID");
    };
    let attestation = AttestationClaims::from_certificate(leaf_der)
        .context("the attestation claims extension is invalid")?;
    // This checks the X.509-SVID rules of the leaf alone. Without a trust bundle, no signature
    // is verified.
    let svid_error = match twid_spiffe::check_leaf(leaf_der) {
        Ok(_) => Value::Null,
        Err(error) => Value::String(error.to_string()),
    };
    Ok(json!({
        "type": "x509-svid",
        "spiffe_id": spiffe_id,
        "issuer": leaf.issuer().to_string(),
        "serial": hex::encode(leaf.raw_serial()),
        "not_before": output::timestamp(leaf.validity().not_before.timestamp()),
        "not_after": output::timestamp(leaf.validity().not_after.timestamp()),
        "key_type": key_type(&leaf),
        "dns_names": dns_names,
        "chain_length": chain.len(),
        "svid_error": svid_error,
        "signature_verified": false,
        "attestation": attestation_json(attestation.as_ref())?,
    }))
}

/// Names the subject public key: its curve for EC keys, its size for RSA keys.
fn key_type(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|parameters| parameters.as_oid().ok())
        .map(|oid| oid.to_id_string());
    match (algorithm.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => "EC P-256".to_owned(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => "EC P-384".to_owned(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.35")) => "EC P-521".to_owned(),
        ("1.2.840.113549.1.1.1", _) => match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
            _ => "RSA".to_owned(),
        },
        ("1.3.101.112", _) => "Ed25519".to_owned(),
        (algorithm, Some(curve)) => format!("{algorithm} ({curve})"),
        (algorithm, None) => algorithm.to_owned(),
    }
}

fn inspect_jwt(token: &str) -> anyhow::Result<Value> {
    let svid = JwtSvid::parse_insecure(token).context("invalid JWT-SVID")?;
    let attestation = AttestationClaims::from_jwt_claims(&svid.claims)
        .context("the attestation claim is invalid")?;
    Ok(json!({
        "type": "jwt-svid",
        "spiffe_id": svid.spiffe_id.as_str(),
        "issuer": svid.claims.get("iss").and_then(Value::as_str),
        "jti": svid.claims.get("jti").and_then(Value::as_str),
        "audience": svid.audience,
        "issued_at": svid.issued_at.map(output::timestamp),
        "expires_at": output::timestamp(svid.expiry),
        "algorithm": svid.algorithm.as_str(),
        "key_id": svid.key_id,
        "signature_verified": false,
        "attestation": attestation_json(attestation.as_ref())?,
    }))
}

/// Returns the JSON form of the claims with RFC 3339 copies of the times, or null.
fn attestation_json(claims: Option<&AttestationClaims>) -> anyhow::Result<Value> {
    let Some(claims) = claims else {
        return Ok(Value::Null);
    };
    let mut value = claims.to_json()?;
    if let Value::Object(object) = &mut value {
        object.insert(
            "attested_at_rfc3339".to_owned(),
            output::timestamp(claims.attested_at).into(),
        );
        if let Some(until) = claims.valid_until {
            object.insert(
                "valid_until_rfc3339".to_owned(),
                output::timestamp(until).into(),
            );
        }
    }
    Ok(value)
}

/// Formats the report for people, one `Label : value` line per field. The first line states
/// that no signature was verified, and every value is escaped because a token or certificate
/// from anywhere can contain terminal control sequences.
fn pretty(report: &Value) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<18}: not verified (inspect only decodes, so do not trust these claims)",
        "Signature"
    );
    let mut line = |label: &str, value: &Value| {
        let rendered = match value {
            Value::Null => return,
            Value::String(text) => text.clone(),
            Value::Array(items) if items.is_empty() => return,
            Value::Array(items) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_owned)
                })
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        let _ = writeln!(text, "{label:<18}: {}", escape_control(&rendered));
    };

    let is_jwt = report["type"] == "jwt-svid";
    line("Type", &report["type"]);
    line("SPIFFE ID", &report["spiffe_id"]);
    line("Issuer", &report["issuer"]);
    if is_jwt {
        line("JWT ID", &report["jti"]);
        line("Audience", &report["audience"]);
        line("Issued at", &report["issued_at"]);
        line("Expires at", &report["expires_at"]);
        line("Algorithm", &report["algorithm"]);
        line("Key ID", &report["key_id"]);
    } else {
        line("Serial", &report["serial"]);
        line("Not before", &report["not_before"]);
        line("Not after", &report["not_after"]);
        line("Key type", &report["key_type"]);
        line("DNS names", &report["dns_names"]);
        line("Chain length", &report["chain_length"]);
        line("SVID error", &report["svid_error"]);
    }

    let attestation = &report["attestation"];
    if attestation.is_null() {
        line("Attestation", &Value::from("none"));
        return text;
    }
    line("Attestation", &attestation["kind"]);
    if let Some(measurements) = attestation["measurements"].as_object() {
        for (name, value) in measurements {
            let entry = format!("{name} {}", value.as_str().unwrap_or_default());
            line("  Measurement", &Value::from(entry));
        }
    }
    line("  TCB status", &attestation["tcb_status"]);
    line("  Policy version", &attestation["policy_version"]);
    line("  Evidence SHA-256", &attestation["evidence_sha256"]);
    line("  Attested at", &attestation["attested_at_rfc3339"]);
    line("  Valid until", &attestation["valid_until_rfc3339"]);
    text
}
