//! Server configuration: `public_url`, `jwt_issuer` blocks and `endpoints.oidc_discovery`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use twid_config::{JwtIssuerConfig, ServerConfig};

/// The AWS federation file from the user documentation.
const AWS_FILE: &str = r#"
server {
  bind_address = "0.0.0.0"
  bind_port = "8081"
  trust_domain = "example.org"
  data_dir = "/opt/spire/data/server"
  log_level = "DEBUG"
  public_url = "https://spire-oidc.example.org"
}

jwt_issuer "aws" {
  issuer = "https://spire-oidc.example.org"
  key_file = "/run/spire/jwt-key.pem"
  audience = ["sts.amazonaws.com"]
  ttl = "5m"
}

endpoints {
  oidc_discovery {
    enabled = true
    issuer = "https://spire-oidc.example.org"
    cors_origins = ["*"]
  }
}
"#;

const SERVER_BLOCK: &str = r#"
server {
  trust_domain = "example.org"
  data_dir = "/var/lib/twid"
}
"#;

fn parse(text: &str) -> ServerConfig {
    match ServerConfig::parse(text, "server.conf") {
        Ok(config) => config,
        Err(error) => panic!("parse failed: {error}"),
    }
}

fn parse_error(text: &str) -> String {
    match ServerConfig::parse(text, "server.conf") {
        Ok(config) => panic!("parse succeeded: {config:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn aws_file_loads() {
    let config = parse(AWS_FILE);
    assert_eq!(
        config.public_url.as_deref(),
        Some("https://spire-oidc.example.org")
    );
    assert_eq!(
        config.jwt_issuers,
        vec![JwtIssuerConfig {
            name: "aws".to_owned(),
            issuer: "https://spire-oidc.example.org".to_owned(),
            key_file: Some(PathBuf::from("/run/spire/jwt-key.pem")),
            audience: vec!["sts.amazonaws.com".to_owned()],
            ttl: Some(Duration::from_secs(300)),
        }]
    );
    let oidc = config.oidc_discovery.expect("oidc_discovery block");
    assert!(oidc.enabled);
    assert_eq!(oidc.issuer, "https://spire-oidc.example.org");
    assert_eq!(oidc.bind_address, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(oidc.bind_port, 8090);
    assert_eq!(oidc.tls_cert_file, None);
    assert_eq!(oidc.tls_key_file, None);
    assert_eq!(oidc.cors_origins, vec!["*".to_owned()]);
}

#[test]
fn issuers_absent_by_default() {
    let config = parse(SERVER_BLOCK);
    assert!(config.jwt_issuers.is_empty());
    assert!(config.oidc_discovery.is_none());
    assert!(config.public_url.is_none());
}

#[test]
fn issuer_without_key_file_or_ttl() {
    let text = format!(
        "{SERVER_BLOCK}\njwt_issuer \"gcp\" {{\n  issuer = \"https://oidc.example.org/gcp\"\n  \
         audience = [\"a\", \"b\"]\n}}\n"
    );
    let config = parse(&text);
    let issuer = &config.jwt_issuers[0];
    assert_eq!(issuer.name, "gcp");
    assert_eq!(issuer.issuer, "https://oidc.example.org/gcp");
    assert_eq!(issuer.key_file, None);
    assert_eq!(issuer.ttl, None);
    assert_eq!(issuer.audience, vec!["a".to_owned(), "b".to_owned()]);
}

#[test]
fn shared_audience_names_both_issuers() {
    let text = format!(
        r#"{SERVER_BLOCK}
jwt_issuer "first" {{
  issuer = "https://one.example.org"
  audience = ["x", "sts.amazonaws.com"]
}}
jwt_issuer "second" {{
  issuer = "https://two.example.org"
  audience = ["sts.amazonaws.com"]
}}
"#
    );
    let error = parse_error(&text);
    assert!(error.contains("\"first\""), "{error}");
    assert!(error.contains("\"second\""), "{error}");
    assert!(error.contains("sts.amazonaws.com"), "{error}");
    assert!(error.starts_with("server.conf:13:"), "{error}");
}

#[test]
fn same_issuer_url_twice_rejected() {
    let text = format!(
        r#"{SERVER_BLOCK}
jwt_issuer "first" {{
  issuer = "https://one.example.org"
  audience = ["a"]
}}
jwt_issuer "second" {{
  issuer = "https://one.example.org"
  audience = ["b"]
}}
"#
    );
    let error = parse_error(&text);
    assert!(error.contains("same issuer URL"), "{error}");
}

#[test]
fn duplicate_issuer_name_rejected() {
    let block =
        "jwt_issuer \"a\" {\n  issuer = \"https://a.example.org\"\n  audience = [\"a\"]\n}\n";
    let error = parse_error(&format!("{SERVER_BLOCK}{block}{block}"));
    assert!(error.contains("jwt_issuer"), "{error}");
    assert!(error.contains("first"), "{error}");
}

#[test]
fn issuer_url_checks() {
    let cases = [
        ("spire-oidc.example.org", "https://"),
        ("https://oidc.example.org/", "trailing slash"),
        ("https://oidc.example.org?x=1", "query"),
        ("https://oidc.example.org#top", "fragment"),
        ("https://", "no host"),
        ("https://user@oidc.example.org", "user information"),
    ];
    for (url, expected) in cases {
        let text = format!(
            "{SERVER_BLOCK}\njwt_issuer \"a\" {{\n  issuer = \"{url}\"\n  audience = [\"a\"]\n}}\n"
        );
        let error = parse_error(&text);
        assert!(error.contains(expected), "{url}: {error}");
    }
}

#[test]
fn audience_list_checks() {
    let cases = [
        ("[]", "at least one audience"),
        ("[\"\"]", "empty"),
        ("[\"a\", \"a\"]", "listed twice"),
        ("\"a\"", "list of strings"),
    ];
    for (list, expected) in cases {
        let text = format!(
            "{SERVER_BLOCK}\njwt_issuer \"a\" {{\n  issuer = \"https://a.example.org\"\n  \
             audience = {list}\n}}\n"
        );
        let error = parse_error(&text);
        assert!(error.contains(expected), "{list}: {error}");
    }
}

#[test]
fn issuer_block_needs_label() {
    let text = format!(
        "{SERVER_BLOCK}\njwt_issuer {{\n  issuer = \"https://a.example.org\"\n  audience = [\"a\"]\n}}\n"
    );
    let error = parse_error(&text);
    assert!(error.contains("exactly one label"), "{error}");
}

#[test]
fn issuer_requires_issuer_and_audience() {
    let missing_issuer = format!("{SERVER_BLOCK}\njwt_issuer \"a\" {{\n  audience = [\"a\"]\n}}\n");
    assert!(parse_error(&missing_issuer).contains("issuer"));
    let missing_audience =
        format!("{SERVER_BLOCK}\njwt_issuer \"a\" {{\n  issuer = \"https://a.example.org\"\n}}\n");
    assert!(parse_error(&missing_audience).contains("audience"));
}

#[test]
fn server_block_jwt_issuer_hints_top_level_block() {
    let text = r#"
server {
  trust_domain = "example.org"
  data_dir = "/var/lib/twid"
  jwt_issuer = "https://oidc.example.org"
}
"#;
    let error = parse_error(text);
    assert!(error.contains("top-level jwt_issuer"), "{error}");
}

#[test]
fn oidc_issuer_defaults_to_public_url() {
    let text = r#"
server {
  trust_domain = "example.org"
  data_dir = "/var/lib/twid"
  public_url = "https://oidc.example.org"
}
jwt_issuer "aws" {
  issuer = "https://oidc.example.org"
  audience = ["sts.amazonaws.com"]
}
endpoints {
  oidc_discovery {
    bind_address = "127.0.0.1"
    bind_port = 9443
    tls_cert_file = "/etc/twid/oidc.crt"
    tls_key_file = "/etc/twid/oidc.key"
  }
}
"#;
    let oidc = parse(text).oidc_discovery.expect("oidc_discovery block");
    assert_eq!(oidc.issuer, "https://oidc.example.org");
    assert!(oidc.enabled);
    assert_eq!(oidc.bind_port, 9443);
    assert_eq!(
        oidc.tls_cert_file,
        Some(PathBuf::from("/etc/twid/oidc.crt"))
    );
    assert_eq!(oidc.tls_key_file, Some(PathBuf::from("/etc/twid/oidc.key")));
    assert!(oidc.cors_origins.is_empty());
}

#[test]
fn oidc_issuer_must_match_an_issuer() {
    let text = format!(
        r#"{SERVER_BLOCK}
jwt_issuer "aws" {{
  issuer = "https://oidc.example.org"
  audience = ["sts.amazonaws.com"]
}}
endpoints {{
  oidc_discovery {{
    issuer = "https://other.example.org"
  }}
}}
"#
    );
    let error = parse_error(&text);
    assert!(error.contains("no jwt_issuer block"), "{error}");
}

#[test]
fn oidc_without_issuer_or_public_url_rejected() {
    let text = format!("{SERVER_BLOCK}\nendpoints {{\n  oidc_discovery {{\n  }}\n}}\n");
    let error = parse_error(&text);
    assert!(error.contains("issuer"), "{error}");
    assert!(error.contains("endpoints.oidc_discovery"), "{error}");
}

#[test]
fn oidc_tls_needs_both_files() {
    let text = format!(
        r#"{SERVER_BLOCK}
jwt_issuer "aws" {{
  issuer = "https://oidc.example.org"
  audience = ["sts.amazonaws.com"]
}}
endpoints {{
  oidc_discovery {{
    issuer = "https://oidc.example.org"
    tls_cert_file = "/etc/twid/oidc.crt"
  }}
}}
"#
    );
    let error = parse_error(&text);
    assert!(error.contains("tls_key_file"), "{error}");
}

#[test]
fn oidc_disabled_block_parses() {
    let text = format!(
        r#"{SERVER_BLOCK}
jwt_issuer "aws" {{
  issuer = "https://oidc.example.org"
  audience = ["sts.amazonaws.com"]
}}
endpoints {{
  oidc_discovery {{
    enabled = false
    issuer = "https://oidc.example.org"
  }}
}}
"#
    );
    let oidc = parse(&text).oidc_discovery.expect("oidc_discovery block");
    assert!(!oidc.enabled);
}
