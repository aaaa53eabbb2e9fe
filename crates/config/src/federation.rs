//! The `server { federation { ... } }` block: this server's SPIFFE bundle endpoint and its
//! relationships with foreign trust domains, with SPIRE's key names.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use twid_spiffe::{SpiffeId, TrustDomain};

use crate::ConfigError;
use crate::document::{Node, Schema, Section};
use crate::values;

/// Default `federation.bundle_endpoint.port`, as in SPIRE.
const DEFAULT_BUNDLE_ENDPOINT_PORT: u16 = 8443;

/// The `federation` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FederationConfig {
    /// The `bundle_endpoint` block; `None` means the server serves no bundle endpoint.
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// The `federates_with "<trust domain>"` blocks in file order.
    pub federates_with: Vec<FederatesWithConfig>,
}

/// The `federation.bundle_endpoint` block: where and how this server serves its own bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpointConfig {
    /// Listen address. Default 0.0.0.0.
    pub address: IpAddr,
    /// Listen port. Default 8443.
    pub port: u16,
    /// `spiffe_refresh_hint` of the served bundle. `None` means the server's default of 5
    /// minutes.
    pub refresh_hint: Option<Duration>,
    /// The TLS profile.
    pub profile: ServingProfile,
}

/// The bundle endpoint's TLS profile: the certificate it presents to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingProfile {
    /// `profile "https_spiffe" {}`: the server presents its own X.509-SVID.
    HttpsSpiffe,
    /// `profile "https_web" { serving_cert_file { ... } }`: a web PKI certificate.
    HttpsWeb {
        /// PEM certificate chain, leaf first.
        cert_file_path: PathBuf,
        /// PEM private key.
        key_file_path: PathBuf,
    },
}

/// A `federates_with "<trust domain>"` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatesWithConfig {
    /// The foreign trust domain, from the block label.
    pub trust_domain: TrustDomain,
    /// The foreign bundle endpoint, an `https://` URL.
    pub bundle_endpoint_url: String,
    /// The profile that authenticates the endpoint.
    pub profile: EndpointProfile,
    /// A file with the foreign trust domain's first bundle (SPIFFE bundle JSON or PEM), which
    /// an `https_spiffe` endpoint must chain to before any fetch can succeed.
    pub trust_domain_bundle_path: Option<PathBuf>,
}

/// `bundle_endpoint_profile`: how a foreign bundle endpoint is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointProfile {
    /// The endpoint presents an X.509-SVID with this SPIFFE ID, which must chain to the
    /// stored bundle of the foreign trust domain.
    HttpsSpiffe {
        /// `endpoint_spiffe_id`.
        endpoint_spiffe_id: SpiffeId,
    },
    /// The endpoint presents a web PKI certificate.
    HttpsWeb {
        /// `ca_file_path`: PEM roots used in place of the built-in web PKI roots; meant for
        /// private PKIs and tests.
        ca_file_path: Option<PathBuf>,
    },
}

const FEDERATION: Schema = Schema {
    keys: &["bundle_endpoint", "federates_with"],
    hints: &[],
    nested: None,
};

const BUNDLE_ENDPOINT: Schema = Schema {
    keys: &["address", "port", "refresh_hint", "profile"],
    hints: &[(
        "acme",
        "ACME is not supported; use profile \"https_web\" { serving_cert_file { ... } }",
    )],
    nested: None,
};

const HTTPS_SPIFFE_SERVING: Schema = Schema {
    keys: &[],
    hints: &[],
    nested: None,
};

const HTTPS_WEB_SERVING: Schema = Schema {
    keys: &["serving_cert_file"],
    hints: &[(
        "acme",
        "ACME is not supported; set serving_cert_file { cert_file_path key_file_path }",
    )],
    nested: None,
};

const SERVING_CERT_FILE: Schema = Schema {
    keys: &["cert_file_path", "key_file_path"],
    hints: &[("file_sync_interval", "")],
    nested: None,
};

const FEDERATES_WITH: Schema = Schema {
    keys: &[
        "bundle_endpoint_url",
        "bundle_endpoint_profile",
        "trust_domain_bundle_path",
    ],
    hints: &[],
    nested: None,
};

const HTTPS_SPIFFE_ENDPOINT: Schema = Schema {
    keys: &["endpoint_spiffe_id"],
    hints: &[],
    nested: None,
};

const HTTPS_WEB_ENDPOINT: Schema = Schema {
    keys: &["ca_file_path"],
    hints: &[],
    nested: None,
};

/// Reads the optional `federation` block of the `server` block of trust domain `local`.
pub(crate) fn federation(
    server: &Section<'_>,
    local: &TrustDomain,
) -> Result<FederationConfig, ConfigError> {
    let Some(block) = server.section("federation")? else {
        return Ok(FederationConfig::default());
    };
    block.check_keys(&FEDERATION)?;
    let bundle_endpoint = match block.section("bundle_endpoint")? {
        Some(endpoint) => Some(bundle_endpoint(&endpoint)?),
        None => None,
    };
    let mut federates_with: Vec<FederatesWithConfig> = Vec::new();
    for entry in block
        .entries
        .iter()
        .filter(|entry| entry.key == "federates_with")
    {
        let labels = entry.labels();
        let (Node::Block(_), [name]) = (&entry.node, labels.as_slice()) else {
            return Err(block.invalid(
                entry.line,
                "federates_with needs exactly one label, the foreign trust domain, as in \
                 federates_with \"example.org\" { ... }"
                    .to_owned(),
            ));
        };
        let trust_domain = TrustDomain::new(name).map_err(|error| {
            block.invalid(
                entry.line,
                format!("federates_with {name:?}: invalid trust domain: {error}"),
            )
        })?;
        if &trust_domain == local {
            return Err(block.invalid(
                entry.line,
                format!(
                    "federates_with {name:?} names the server's own trust domain; list only \
                     foreign trust domains"
                ),
            ));
        }
        let relationship = federates_with_block(&block.child(entry)?, trust_domain)?;
        if federates_with
            .iter()
            .any(|earlier| earlier.trust_domain == relationship.trust_domain)
        {
            return Err(block.invalid(
                entry.line,
                format!("federates_with {name:?} appears twice; write one block per trust domain"),
            ));
        }
        federates_with.push(relationship);
    }
    Ok(FederationConfig {
        bundle_endpoint,
        federates_with,
    })
}

fn bundle_endpoint(block: &Section<'_>) -> Result<BundleEndpointConfig, ConfigError> {
    block.check_keys(&BUNDLE_ENDPOINT)?;
    let (name, profile_block) = single_labeled_block(block, "profile")?;
    let profile = match name.as_str() {
        "https_spiffe" => {
            profile_block.check_keys(&HTTPS_SPIFFE_SERVING)?;
            ServingProfile::HttpsSpiffe
        }
        "https_web" => {
            profile_block.check_keys(&HTTPS_WEB_SERVING)?;
            let files = profile_block
                .section("serving_cert_file")?
                .ok_or_else(|| profile_block.missing_key("serving_cert_file"))?;
            files.check_keys(&SERVING_CERT_FILE)?;
            ServingProfile::HttpsWeb {
                cert_file_path: files.required("cert_file_path", values::path)?,
                key_file_path: files.required("key_file_path", values::path)?,
            }
        }
        other => {
            return Err(block.invalid(
                profile_block.line,
                format!(
                    "profile {other:?} is not a bundle endpoint profile; use \"https_spiffe\" \
                     or \"https_web\""
                ),
            ));
        }
    };
    Ok(BundleEndpointConfig {
        address: block
            .optional("address", values::ip_address)?
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        port: block
            .optional("port", values::port)?
            .unwrap_or(DEFAULT_BUNDLE_ENDPOINT_PORT),
        refresh_hint: block.optional("refresh_hint", values::positive_duration)?,
        profile,
    })
}

fn federates_with_block(
    block: &Section<'_>,
    trust_domain: TrustDomain,
) -> Result<FederatesWithConfig, ConfigError> {
    block.check_keys(&FEDERATES_WITH)?;
    let bundle_endpoint_url = block.required("bundle_endpoint_url", bundle_endpoint_url)?;
    let (name, profile_block) = single_labeled_block(block, "bundle_endpoint_profile")?;
    let profile = match name.as_str() {
        "https_spiffe" => {
            profile_block.check_keys(&HTTPS_SPIFFE_ENDPOINT)?;
            let endpoint_spiffe_id = profile_block.required("endpoint_spiffe_id", spiffe_id)?;
            if !endpoint_spiffe_id.is_member_of(&trust_domain) {
                return Err(profile_block.invalid_value(
                    "endpoint_spiffe_id",
                    format!(
                        "the endpoint's SPIFFE ID must be in the foreign trust domain \
                         {trust_domain}, whose bundle authenticates it"
                    ),
                ));
            }
            EndpointProfile::HttpsSpiffe { endpoint_spiffe_id }
        }
        "https_web" => {
            profile_block.check_keys(&HTTPS_WEB_ENDPOINT)?;
            EndpointProfile::HttpsWeb {
                ca_file_path: profile_block.optional("ca_file_path", values::path)?,
            }
        }
        other => {
            return Err(block.invalid(
                profile_block.line,
                format!(
                    "bundle_endpoint_profile {other:?} is not a profile; use \"https_spiffe\" \
                     or \"https_web\""
                ),
            ));
        }
    };
    Ok(FederatesWithConfig {
        trust_domain,
        bundle_endpoint_url,
        profile,
        trust_domain_bundle_path: block.optional("trust_domain_bundle_path", values::path)?,
    })
}

/// Returns the label and body of the one `key "<label>" { ... }` block in `block`.
fn single_labeled_block<'a>(
    block: &Section<'a>,
    key: &str,
) -> Result<(String, Section<'a>), ConfigError> {
    let mut found = block.entries.iter().filter(|entry| entry.key == key);
    let Some(entry) = found.next() else {
        return Err(block.missing_key(key));
    };
    if let Some(second) = found.next() {
        return Err(block.invalid(
            second.line,
            format!("{key} appears twice in {:?}; write exactly one", block.path),
        ));
    }
    let labels = entry.labels();
    let (Node::Block(_), [name]) = (&entry.node, labels.as_slice()) else {
        return Err(block.invalid(
            entry.line,
            format!(
                "{key} needs exactly one label, the profile name, as in \
                 {key} \"https_spiffe\" {{ ... }}"
            ),
        ));
    };
    Ok(((*name).to_owned(), block.child(entry)?))
}

/// Checks a bundle endpoint URL: `https://`, a host, and no user information or fragment.
pub fn bundle_endpoint_url_str(url: &str) -> Result<String, String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(
            "expected an https:// URL, such as \"https://example.org:8443\"; the SPIFFE \
             Federation specification requires TLS"
                .to_owned(),
        );
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty() {
        return Err("the URL has no host".to_owned());
    }
    if host.contains('@') {
        return Err("the URL must not contain user information".to_owned());
    }
    if url.contains('#') {
        return Err("the URL must not have a fragment".to_owned());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL must not contain whitespace".to_owned());
    }
    Ok(url.to_owned())
}

fn bundle_endpoint_url(expr: &hcl_edit::expr::Expression) -> Result<String, String> {
    bundle_endpoint_url_str(&values::string(expr)?)
}

fn spiffe_id(expr: &hcl_edit::expr::Expression) -> Result<SpiffeId, String> {
    let text = values::string(expr)?;
    SpiffeId::new(&text).map_err(|error| format!("invalid SPIFFE ID: {error}"))
}

#[cfg(test)]
mod tests {
    use crate::{ConfigError, ServerConfig};

    use super::*;

    fn parse(federation: &str) -> Result<FederationConfig, ConfigError> {
        let text = format!(
            "server {{\n  trust_domain = \"a.org\"\n  data_dir = \"/tmp/twid-a\"\n  \
             federation {{\n{federation}\n  }}\n}}\n"
        );
        ServerConfig::parse(&text, "server.conf").map(|config| config.federation)
    }

    fn error_text(federation: &str) -> String {
        parse(federation).unwrap_err().to_string()
    }

    #[test]
    fn federation_full_block_parses() {
        let config = parse(
            r#"
    bundle_endpoint {
      address = "127.0.0.1"
      port = 9443
      refresh_hint = "1m"
      profile "https_spiffe" {}
    }
    federates_with "b.org" {
      bundle_endpoint_url = "https://127.0.0.1:9444"
      bundle_endpoint_profile "https_spiffe" {
        endpoint_spiffe_id = "spiffe://b.org/spire/server"
      }
      trust_domain_bundle_path = "/etc/twid/b.json"
    }
    federates_with "c.org" {
      bundle_endpoint_url = "https://c.example/bundle"
      bundle_endpoint_profile "https_web" {}
    }"#,
        )
        .unwrap();
        let endpoint = config.bundle_endpoint.unwrap();
        assert_eq!(endpoint.port, 9443);
        assert_eq!(endpoint.refresh_hint, Some(Duration::from_secs(60)));
        assert_eq!(endpoint.profile, ServingProfile::HttpsSpiffe);
        assert_eq!(config.federates_with.len(), 2);
        let b = &config.federates_with[0];
        assert_eq!(b.trust_domain.name(), "b.org");
        assert_eq!(
            b.profile,
            EndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::new("spiffe://b.org/spire/server").unwrap()
            }
        );
        assert_eq!(
            b.trust_domain_bundle_path,
            Some(PathBuf::from("/etc/twid/b.json"))
        );
        assert_eq!(
            config.federates_with[1].profile,
            EndpointProfile::HttpsWeb { ca_file_path: None }
        );
    }

    #[test]
    fn federation_https_web_serving_needs_files() {
        let text = error_text(
            r#"
    bundle_endpoint {
      profile "https_web" {}
    }"#,
        );
        assert!(text.contains("server.conf"), "{text}");
        assert!(text.contains("serving_cert_file"), "{text}");
    }

    #[test]
    fn federation_rejects_http_url() {
        let text = error_text(
            r#"
    federates_with "b.org" {
      bundle_endpoint_url = "http://127.0.0.1:9444"
      bundle_endpoint_profile "https_web" {}
    }"#,
        );
        assert!(text.contains("bundle_endpoint_url"), "{text}");
        assert!(text.contains("http://127.0.0.1:9444"), "{text}");
        assert!(text.contains("https://"), "{text}");
    }

    #[test]
    fn federation_rejects_foreign_endpoint_id() {
        let text = error_text(
            r#"
    federates_with "b.org" {
      bundle_endpoint_url = "https://127.0.0.1:9444"
      bundle_endpoint_profile "https_spiffe" {
        endpoint_spiffe_id = "spiffe://c.org/spire/server"
      }
    }"#,
        );
        assert!(text.contains("endpoint_spiffe_id"), "{text}");
        assert!(text.contains("b.org"), "{text}");
    }

    #[test]
    fn federation_rejects_unknown_profile() {
        let text = error_text(
            r#"
    federates_with "b.org" {
      bundle_endpoint_url = "https://127.0.0.1:9444"
      bundle_endpoint_profile "https_mtls" {}
    }"#,
        );
        assert!(text.contains("https_mtls"), "{text}");
    }

    #[test]
    fn federation_rejects_duplicate_trust_domain() {
        let block = r#"
    federates_with "b.org" {
      bundle_endpoint_url = "https://127.0.0.1:9444"
      bundle_endpoint_profile "https_web" {}
    }"#;
        let text = error_text(&format!("{block}\n{block}"));
        assert!(text.contains("duplicate key"), "{text}");
        assert!(text.contains("federates_with \"b.org\""), "{text}");
    }

    #[test]
    fn federation_rejects_invalid_trust_domain() {
        let text = error_text(
            r#"
    federates_with "B.ORG/x" {
      bundle_endpoint_url = "https://127.0.0.1:9444"
      bundle_endpoint_profile "https_web" {}
    }"#,
        );
        assert!(text.contains("invalid trust domain"), "{text}");
    }

    #[test]
    fn federation_doc_example_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/federation.md");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text.find("```hcl\n").expect("an hcl example") + "```hcl\n".len();
        let end = start + text[start..].find("```").expect("a closing fence");
        let config = ServerConfig::parse(&text[start..end], "docs/federation.md").unwrap();
        assert!(config.federation.bundle_endpoint.is_some());
        assert_eq!(config.federation.federates_with.len(), 1);
    }

    #[test]
    fn federation_rejects_own_trust_domain() {
        let text = error_text(
            r#"
    federates_with "a.org" {
      bundle_endpoint_url = "https://127.0.0.1:9444"
      bundle_endpoint_profile "https_web" {}
    }"#,
        );
        assert!(text.contains("server.conf:6"), "{text}");
        assert!(text.contains("own trust domain"), "{text}");
    }

    #[test]
    fn federation_missing_endpoint_id() {
        let text = error_text(
            r#"
    federates_with "b.org" {
      bundle_endpoint_url = "https://127.0.0.1:9444"
      bundle_endpoint_profile "https_spiffe" {}
    }"#,
        );
        assert!(text.contains("endpoint_spiffe_id"), "{text}");
    }
}
