//! The `jwt_issuer "<name>"` blocks and the `endpoints { oidc_discovery { ... } }` block of the
//! server configuration.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::ConfigError;
use crate::document::{Node, Schema, Section};
use crate::values;

const DEFAULT_OIDC_PORT: u16 = 8090;

/// A named JWT issuer: JWT-SVIDs for its audiences carry its `iss` and are signed by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuerConfig {
    /// The block label, as in `jwt_issuer "aws"`.
    pub name: String,
    /// The `iss` claim: an `https://` or `http://` URL without query, fragment or trailing
    /// slash.
    pub issuer: String,
    /// PEM file of the signing key (PKCS#8, or SEC1 for EC keys). `None` means the server
    /// generates and rotates the key itself.
    pub key_file: Option<PathBuf>,
    /// The audiences this issuer signs for; never empty, and no two issuers share one.
    pub audience: Vec<String>,
    /// Lifetime of the JWT-SVIDs it signs, which replaces an entry's own JWT-SVID TTL. `None`
    /// means the server's `default_jwt_svid_ttl`.
    pub ttl: Option<Duration>,
}

/// The `endpoints.oidc_discovery` block: an OIDC discovery document and JWKS for one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcDiscoveryConfig {
    /// Whether the server starts the listener. Default true when the block is present.
    pub enabled: bool,
    /// The issuer URL served, equal to one `jwt_issuer` block's `issuer`. Defaults to
    /// `server.public_url`.
    pub issuer: String,
    /// Listen address. Default 127.0.0.1.
    pub bind_address: IpAddr,
    /// Listen port. Default 8090.
    pub bind_port: u16,
    /// Certificate chain (PEM) for HTTPS; set together with `tls_key_file`. Without both the
    /// listener serves plain HTTP.
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) for HTTPS.
    pub tls_key_file: Option<PathBuf>,
    /// Origins allowed by CORS; `"*"` allows any. Default none.
    pub cors_origins: Vec<String>,
}

const JWT_ISSUER: Schema = Schema {
    keys: &["issuer", "key_file", "audience", "ttl"],
    hints: &[],
    nested: None,
};

const ENDPOINTS: Schema = Schema {
    keys: &["oidc_discovery"],
    hints: &[],
    nested: None,
};

const OIDC_DISCOVERY: Schema = Schema {
    keys: &[
        "enabled",
        "issuer",
        "bind_address",
        "bind_port",
        "tls_cert_file",
        "tls_key_file",
        "cors_origins",
    ],
    hints: &[
        ("domains", "twid serves one issuer URL; set issuer instead"),
        (
            "acme",
            "ACME is not supported; set tls_cert_file and tls_key_file",
        ),
    ],
    nested: None,
};

/// Checks an issuer or public URL: `https://` or `http://`, a host, and no query, fragment,
/// trailing slash or user info, so that it compares equal to the `iss` of issued tokens.
pub(crate) fn issuer_url(expr: &hcl_edit::expr::Expression) -> Result<String, String> {
    let url = values::string(expr)?;
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err("expected an https:// URL, such as \"https://oidc.example.org\"".to_owned());
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err("the URL has no host".to_owned());
    }
    if host.contains('@') {
        return Err("the URL must not contain user information".to_owned());
    }
    if url.contains('?') || url.contains('#') {
        return Err("the URL must not have a query or fragment".to_owned());
    }
    if url.ends_with('/') {
        return Err(format!(
            "remove the trailing slash: tokens carry the issuer exactly as written, \
             and {:?} differs from {:?}",
            url,
            url.trim_end_matches('/')
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL must not contain whitespace".to_owned());
    }
    Ok(url)
}

fn audience_list(expr: &hcl_edit::expr::Expression) -> Result<Vec<String>, String> {
    let list = values::string_list(expr)?;
    if list.is_empty() {
        return Err("expected at least one audience, such as [\"sts.amazonaws.com\"]".to_owned());
    }
    for (index, item) in list.iter().enumerate() {
        if item.is_empty() {
            return Err(format!("item {index} of the list is empty"));
        }
        if list[..index].contains(item) {
            return Err(format!("audience {item:?} is listed twice"));
        }
    }
    Ok(list)
}

/// Reads every `jwt_issuer "<name>"` block at the top level of the file.
pub(crate) fn jwt_issuers(root: &Section<'_>) -> Result<Vec<JwtIssuerConfig>, ConfigError> {
    let mut issuers: Vec<(usize, JwtIssuerConfig)> = Vec::new();
    // Maps each audience to the index of the issuer that claimed it first.
    let mut claimed: HashMap<String, usize> = HashMap::new();
    for entry in root
        .entries
        .iter()
        .filter(|entry| entry.key == "jwt_issuer")
    {
        let labels = entry.labels();
        let (Node::Block(_), [name]) = (&entry.node, labels.as_slice()) else {
            return Err(root.invalid(
                entry.line,
                "jwt_issuer needs exactly one label, the issuer name, as in \
                 jwt_issuer \"aws\" { ... }"
                    .to_owned(),
            ));
        };
        let block = root.child(entry)?;
        block.check_keys(&JWT_ISSUER)?;
        let issuer = JwtIssuerConfig {
            name: (*name).to_owned(),
            issuer: block.required("issuer", issuer_url)?,
            key_file: block.optional("key_file", values::path)?,
            audience: block.required("audience", audience_list)?,
            ttl: block.optional("ttl", values::positive_duration)?,
        };
        for (line, earlier) in &issuers {
            if earlier.issuer == issuer.issuer {
                return Err(block.invalid_value(
                    "issuer",
                    format!(
                        "jwt_issuer {:?} (line {line}) has the same issuer URL; \
                         each issuer needs its own URL",
                        earlier.name
                    ),
                ));
            }
        }
        for audience in &issuer.audience {
            if let Some(&index) = claimed.get(audience) {
                let (line, earlier) = &issuers[index];
                return Err(block.invalid_value(
                    "audience",
                    format!(
                        "audience {audience:?} is claimed by both jwt_issuer {:?} (line {line}) \
                         and jwt_issuer {:?}; each audience may belong to one issuer only",
                        earlier.name, issuer.name
                    ),
                ));
            }
            claimed.insert(audience.clone(), issuers.len());
        }
        issuers.push((entry.line, issuer));
    }
    Ok(issuers.into_iter().map(|(_, issuer)| issuer).collect())
}

/// Reads `endpoints { oidc_discovery { ... } }`. `public_url` is the default issuer, and the
/// issuer must be one of `issuers`.
pub(crate) fn oidc_discovery(
    root: &Section<'_>,
    public_url: Option<&str>,
    issuers: &[JwtIssuerConfig],
) -> Result<Option<OidcDiscoveryConfig>, ConfigError> {
    let Some(endpoints) = root.section("endpoints")? else {
        return Ok(None);
    };
    endpoints.check_keys(&ENDPOINTS)?;
    let Some(block) = endpoints.section("oidc_discovery")? else {
        return Ok(None);
    };
    block.check_keys(&OIDC_DISCOVERY)?;
    let issuer = match block.optional("issuer", issuer_url)? {
        Some(issuer) => issuer,
        None => public_url
            .map(str::to_owned)
            .ok_or_else(|| block.missing_key("issuer"))?,
    };
    if !issuers.iter().any(|configured| configured.issuer == issuer) {
        let known: Vec<&str> = issuers.iter().map(|i| i.issuer.as_str()).collect();
        return Err(block.invalid_value(
            "issuer",
            format!(
                "no jwt_issuer block has issuer = {issuer:?} (configured issuers: {known:?}); \
                 the discovery endpoint serves the keys of one jwt_issuer"
            ),
        ));
    }
    let tls_cert_file = block.optional("tls_cert_file", values::path)?;
    let tls_key_file = block.optional("tls_key_file", values::path)?;
    match (&tls_cert_file, &tls_key_file) {
        (Some(_), None) => return Err(block.missing_key("tls_key_file")),
        (None, Some(_)) => return Err(block.missing_key("tls_cert_file")),
        _ => {}
    }
    Ok(Some(OidcDiscoveryConfig {
        enabled: block.optional("enabled", values::boolean)?.unwrap_or(true),
        issuer,
        bind_address: block
            .optional("bind_address", values::ip_address)?
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        bind_port: block
            .optional("bind_port", values::port)?
            .unwrap_or(DEFAULT_OIDC_PORT),
        tls_cert_file,
        tls_key_file,
        cors_origins: block
            .optional("cors_origins", values::string_list)?
            .unwrap_or_default(),
    }))
}
