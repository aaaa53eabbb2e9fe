//! The server's `policy_owner_keys` setting.

use std::path::PathBuf;

use twid_config::ServerConfig;

fn config(extra: &str) -> String {
    format!(
        "server {{\n  trust_domain = \"example.org\"\n  data_dir = \"/var/lib/twid\"\n{extra}\n}}\n"
    )
}

#[test]
fn owner_keys_default_to_none() {
    let parsed = ServerConfig::parse(&config(""), "server.conf").expect("valid");
    assert!(parsed.policy_owner_keys.is_empty());
}

#[test]
fn owner_keys_are_paths() {
    let text = config("  policy_owner_keys = [\"/etc/twid/a.pem\", \"b.pem\"]");
    let parsed = ServerConfig::parse(&text, "server.conf").expect("valid");
    assert_eq!(
        parsed.policy_owner_keys,
        [PathBuf::from("/etc/twid/a.pem"), PathBuf::from("b.pem")]
    );
}

#[test]
fn owner_keys_errors_name_line_key_and_value() {
    let cases = [
        ("  policy_owner_keys = []", "the list is empty"),
        ("  policy_owner_keys = [\"\"]", "paths must not be empty"),
        (
            "  policy_owner_keys = \"/etc/twid/a.pem\"",
            "policy_owner_keys",
        ),
    ];
    for (line, expected) in cases {
        let error = ServerConfig::parse(&config(line), "server.conf")
            .expect_err("invalid")
            .to_string();
        assert!(
            error.starts_with("server.conf:4: policy_owner_keys = "),
            "{error}"
        );
        assert!(error.contains(expected), "{expected}: {error}");
    }
}
