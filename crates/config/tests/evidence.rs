//! Evidence node attestors: server policy blocks and agent collector blocks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use twid_config::{AgentConfig, CollectorConfig, ServerConfig, TpmCollectorConfig};
use twid_evidence::claims::SnpTcb;
use twid_evidence::policy::Policy;
use twid_evidence::{Kind, TcbStatus};

fn server(plugins: &str) -> Result<ServerConfig, twid_config::ConfigError> {
    let text = format!(
        "server {{\n  trust_domain = \"example.org\"\n  data_dir = \"/d\"\n}}\nplugins {{\n{plugins}\n}}\n"
    );
    ServerConfig::parse(&text, "server.conf")
}

fn agent(plugins: &str) -> Result<AgentConfig, twid_config::ConfigError> {
    let text = format!(
        "agent {{\n  trust_domain = \"example.org\"\n  server_address = \"127.0.0.1\"\n  \
         data_dir = \"/d\"\n  insecure_bootstrap = true\n}}\nplugins {{\n{plugins}\n}}\n"
    );
    AgentConfig::parse(&text, "agent.conf")
}

fn error(result: Result<impl std::fmt::Debug, twid_config::ConfigError>) -> String {
    result.expect_err("config should be rejected").to_string()
}

#[test]
fn server_defaults_per_kind() {
    let config = server(
        r#"NodeAttestor "join_token" {}
        NodeAttestor "tdx" {}
        NodeAttestor "nitro" {}"#,
    )
    .expect("parse");
    assert_eq!(config.evidence_attestors.len(), 2);
    let tdx = &config.evidence_attestors[0];
    assert_eq!(tdx.name, "tdx");
    assert_eq!(tdx.kind, Kind::Tdx);
    assert!(tdx.trusted_roots.is_empty());
    assert_eq!(tdx.collateral_dir, None);
    assert_eq!(tdx.policy, Policy::default());
    assert_eq!(config.evidence_attestors[1].kind, Kind::Nitro);
}

#[test]
fn server_sgx_dcap_policy_keys() {
    let enclave = "aa".repeat(32);
    let signer = "BB".repeat(32);
    let config = server(&format!(
        r#"NodeAttestor "sgx_dcap" {{
            plugin_data {{
                trusted_roots = ["/etc/twid/intel-root.pem"]
                collateral_dir = "/var/cache/twid/pcs"
                allow_debug = true
                allowed_measurements = ["{enclave}"]
                allowed_signers = ["{signer}"]
                min_isv_svn = 2
                allowed_tcb_statuses = ["UpToDate", "OutOfDate"]
                max_collateral_age = "720h"
            }}
        }}"#
    ))
    .expect("parse");

    let attestor = &config.evidence_attestors[0];
    assert_eq!(attestor.kind, Kind::SgxDcap);
    assert_eq!(
        attestor.trusted_roots,
        vec![PathBuf::from("/etc/twid/intel-root.pem")]
    );
    assert_eq!(
        attestor.collateral_dir,
        Some(PathBuf::from("/var/cache/twid/pcs"))
    );
    let policy = &attestor.policy;
    assert!(policy.allow_debug);
    assert_eq!(policy.allowed_measurements, vec![vec![0xaa; 32]]);
    assert_eq!(policy.allowed_signers, vec![[0xbb; 32]]);
    assert_eq!(policy.min_isv_svn, Some(2));
    assert_eq!(
        policy.allowed_tcb_statuses,
        vec![TcbStatus::UpToDate, TcbStatus::OutOfDate]
    );
    assert_eq!(
        policy.max_collateral_age,
        Some(Duration::from_secs(720 * 3600))
    );
}

#[test]
fn server_snp_min_tcb_and_chips() {
    let chip = "01".repeat(64);
    let config = server(&format!(
        r#"NodeAttestor "snp" {{
            plugin_data {{
                vek_chain_path = "/etc/twid/ask-ark.pem"
                min_tcb = {{ bootloader = 3, tee = 0, snp = 14, microcode = 209 }}
                allowed_chip_ids = ["{chip}"]
            }}
        }}"#
    ))
    .expect("parse");
    let attestor = &config.evidence_attestors[0];
    assert_eq!(
        attestor.vek_chain_path,
        Some(PathBuf::from("/etc/twid/ask-ark.pem"))
    );
    assert_eq!(
        attestor.policy.min_snp_tcb,
        Some(SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 14,
            microcode: 209,
            fmc: None,
        })
    );
    assert_eq!(attestor.policy.allowed_chip_ids, vec![vec![1; 64]]);
}

#[test]
fn server_tpm_pcrs_and_aks() {
    let ak = "cd".repeat(32);
    let pcr = "00".repeat(32);
    let config = server(&format!(
        r#"NodeAttestor "tpm" {{
            plugin_data {{
                pcrs = {{ "7" = "{pcr}" }}
                allowed_ak_sha256 = ["{ak}"]
            }}
        }}"#
    ))
    .expect("parse");
    let policy = &config.evidence_attestors[0].policy;
    assert_eq!(policy.pcrs, BTreeMap::from([(7, vec![0; 32])]));
    assert_eq!(policy.allowed_ak_sha256, vec![[0xcd; 32]]);
}

#[test]
fn server_rejections_name_key_and_value() {
    let cases = [
        (
            r#"NodeAttestor "tdx" {
                plugin_data {
                    allowed_measurements = ["abcd"]
                }
            }"#,
            "server.conf:8: allowed_measurements = [\"abcd\"]: item 0 of the list: \"abcd\" is 2 \
             bytes, expected 48 bytes (96 hex digits)",
        ),
        (
            r#"NodeAttestor "tdx" {
                plugin_data {
                    allowed_tcb_statuses = ["Fine"]
                }
            }"#,
            "unknown TCB status \"Fine\"",
        ),
        (
            r#"NodeAttestor "tdx" {
                plugin_data {
                    vek_chain_path = "/x.pem"
                }
            }"#,
            "server.conf:8: unknown key \"vek_chain_path\" in block \
             \"plugins.NodeAttestor.tdx.plugin_data\"",
        ),
        (
            r#"NodeAttestor "snp" {
                plugin_data {
                    min_tcb = { microcode = 300 }
                }
            }"#,
            "microcode = 300: expected an integer 0-255",
        ),
        (
            r#"NodeAttestor "tpm" {
                plugin_data {
                    pcrs = { "24" = "00" }
                }
            }"#,
            "pcrs key \"24\" is not a PCR index",
        ),
        (
            r#"NodeAttestor "nitro" {
                plugin_data {
                    max_evidence_age = "soon"
                }
            }"#,
            "max_evidence_age = \"soon\": invalid duration",
        ),
        (
            r#"NodeAttestor "sev" {}"#,
            "unsupported plugin NodeAttestor \"sev\"",
        ),
    ];
    for (plugins, expected) in cases {
        let message = error(server(plugins));
        assert!(
            message.contains(expected),
            "{message}\nexpected: {expected}"
        );
    }
}

#[test]
fn agent_collector_defaults() {
    let config = agent(r#"NodeAttestor "tdx" {}"#).expect("parse");
    let attestor = config.evidence_attestor.expect("attestor");
    assert_eq!(attestor.kind, Kind::Tdx);
    assert_eq!(
        attestor.collector,
        CollectorConfig::ConfigfsTsm {
            tsm_path: PathBuf::from("/sys/kernel/config/tsm/report"),
        }
    );
    let config = agent(r#"NodeAttestor "tpm" {}"#).expect("parse");
    assert_eq!(
        config.evidence_attestor.expect("tpm").collector,
        CollectorConfig::Tpm(TpmCollectorConfig {
            tcti: None,
            ak_handle: None,
            pcr_bank: "sha256".to_owned(),
            pcrs: vec![0, 1, 2, 3, 4, 5, 6, 7],
        })
    );
}

#[test]
fn agent_exec_and_tpm_settings() {
    let config = agent(
        r#"NodeAttestor "nitro" {
            plugin_data {
                collector = "exec"
                command = ["/usr/bin/nitro-evidence", "--json"]
            }
        }"#,
    )
    .expect("parse");
    assert_eq!(
        config.evidence_attestor.expect("nitro").collector,
        CollectorConfig::Exec {
            command: vec!["/usr/bin/nitro-evidence".to_owned(), "--json".to_owned()],
        }
    );
    let config = agent(
        r#"NodeAttestor "tpm" {
            plugin_data {
                tcti = "swtpm:port=2321"
                ak_handle = "0x81010002"
                pcr_bank = "sha384"
                pcrs = [0, 7]
            }
        }"#,
    )
    .expect("parse");
    assert_eq!(
        config.evidence_attestor.expect("tpm").collector,
        CollectorConfig::Tpm(TpmCollectorConfig {
            tcti: Some("swtpm:port=2321".to_owned()),
            ak_handle: Some(0x8101_0002),
            pcr_bank: "sha384".to_owned(),
            pcrs: vec![0, 7],
        })
    );
}

#[test]
fn agent_rejections() {
    let cases = [
        (
            r#"NodeAttestor "sgx_dcap" {}"#,
            "missing required key \"command\"",
        ),
        (
            r#"NodeAttestor "nitro" {
                plugin_data {
                    collector = "configfs_tsm"
                }
            }"#,
            "invalid collector for nitro evidence, expected exec",
        ),
        (
            r#"NodeAttestor "tdx" {
                plugin_data {
                    command = ["x"]
                }
            }"#,
            "unknown key \"command\"",
        ),
        (
            r#"NodeAttestor "tpm" {
                plugin_data {
                    pcrs = [24]
                }
            }"#,
            "expected a PCR index 0-23",
        ),
        (
            r#"NodeAttestor "tpm" {
                plugin_data {
                    pcr_bank = "md5"
                }
            }"#,
            "invalid PCR bank",
        ),
    ];
    for (plugins, expected) in cases {
        let message = error(agent(plugins));
        assert!(
            message.contains(expected),
            "{message}\nexpected: {expected}"
        );
    }
}

#[test]
fn agent_join_token_conflicts_with_evidence() {
    let text = "agent {\n  trust_domain = \"example.org\"\n  server_address = \"127.0.0.1\"\n  \
                data_dir = \"/d\"\n  insecure_bootstrap = true\n  join_token = \"t\"\n}\n\
                plugins {\n  NodeAttestor \"tdx\" {}\n}\n";
    let message = error(AgentConfig::parse(text, "agent.conf"));
    assert!(message.contains("remove join_token"), "{message}");
    assert!(!message.contains("= t"), "{message}");
}

#[test]
fn server_rejects_policies_that_mislead() {
    let zero_chip = format!(
        "NodeAttestor \"snp\" {{\n  plugin_data {{\n    allowed_chip_ids = [\"{}\"]\n  }}\n}}",
        "00".repeat(64)
    );
    let message = error(server(&zero_chip));
    assert!(message.contains("allowed_chip_ids"), "{message}");
    assert!(message.contains("all-zero chip ID"), "{message}");

    let empty = "NodeAttestor \"tdx\" {\n  plugin_data {\n    allowed_tcb_statuses = []\n  }\n}";
    let message = error(server(empty));
    assert!(message.contains("allowed_tcb_statuses"), "{message}");
    assert!(message.contains("reject every quote"), "{message}");

    let revoked = "NodeAttestor \"tdx\" {\n  plugin_data {\n    \
                   allowed_tcb_statuses = [\"UpToDate\", \"Revoked\"]\n  }\n}";
    let message = error(server(revoked));
    assert!(message.contains("always rejected"), "{message}");
}

#[test]
fn server_collateral_service_urls() {
    let config = server(
        r#"NodeAttestor "sgx_dcap" {
            plugin_data {
                collateral_dir = "/var/cache/twid/pcs"
                pcs_url = "https://pccs.example.org:8081/"
            }
        }
        NodeAttestor "snp" {
            plugin_data {
                collateral_dir = "/var/cache/twid/kds"
                kds_url = "http://127.0.0.1:8082/kds"
            }
        }"#,
    )
    .expect("parse");
    let dcap = &config.evidence_attestors[0];
    assert_eq!(
        dcap.pcs_url.as_deref(),
        Some("https://pccs.example.org:8081")
    );
    assert_eq!(dcap.kds_url, None);
    let snp = &config.evidence_attestors[1];
    assert_eq!(snp.kds_url.as_deref(), Some("http://127.0.0.1:8082/kds"));
    assert_eq!(
        snp.collateral_dir,
        Some(PathBuf::from("/var/cache/twid/kds"))
    );

    let defaults = server(r#"NodeAttestor "tdx" {}"#).expect("parse");
    assert_eq!(defaults.evidence_attestors[0].pcs_url, None);
}

#[test]
fn server_rejects_insecure_service_urls() {
    let cases = [
        (
            "sgx_dcap",
            "pcs_url",
            "http://pccs.example.org",
            "use https",
        ),
        (
            "tdx",
            "pcs_url",
            "http://127.0.0.1.example.org",
            "use https",
        ),
        ("snp", "kds_url", "http://kdsintf.example.org", "use https"),
        (
            "sgx_dcap",
            "pcs_url",
            "ftp://pccs.example.org",
            "expected https",
        ),
        ("sgx_dcap", "pcs_url", "pccs.example.org", "is not a URL"),
        (
            "snp",
            "kds_url",
            "https://user@kds.example.org",
            "user information",
        ),
    ];
    for (attestor, key, url, expected) in cases {
        let plugins = format!(
            "NodeAttestor \"{attestor}\" {{\n  plugin_data {{\n    \
             collateral_dir = \"/c\"\n    {key} = \"{url}\"\n  }}\n}}"
        );
        let message = error(server(&plugins));
        assert!(message.contains(key), "{url}: {message}");
        assert!(message.contains(expected), "{url}: {message}");
    }
}

#[test]
fn server_fetch_requires_collateral_dir() {
    for (attestor, key) in [("sgx_dcap", "pcs_url"), ("snp", "kds_url")] {
        let plugins = format!(
            "NodeAttestor \"{attestor}\" {{\n  plugin_data {{\n    \
             {key} = \"https://service.example.org\"\n  }}\n}}"
        );
        let message = error(server(&plugins));
        assert!(message.contains("collateral_dir"), "{attestor}: {message}");
    }
}

#[test]
fn server_service_url_keys_per_kind() {
    let message = error(server(
        "NodeAttestor \"snp\" {\n  plugin_data {\n    pcs_url = \"https://a.example\"\n  }\n}",
    ));
    assert!(message.contains("unknown key \"pcs_url\""), "{message}");
    let message = error(server(
        "NodeAttestor \"tdx\" {\n  plugin_data {\n    kds_url = \"https://a.example\"\n  }\n}",
    ));
    assert!(message.contains("unknown key \"kds_url\""), "{message}");
}
