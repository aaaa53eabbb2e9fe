//! Bad input: one clear error line naming the value, and no partial state.

use std::time::Duration;

use crate::common::*;

/// Asserts the command failed with exactly one line on stderr that contains every `needle`.
fn assert_one_error_line(output: &std::process::Output, needles: &[&str]) {
    assert!(!output.status.success(), "the command succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "error line {:?} lacks {needle:?}",
            lines[0]
        );
    }
}

fn count(server: &ServerProcess) -> String {
    run_ok(&[
        "entry",
        "count",
        "--socket-path",
        server.socket_arg(),
        "--output",
        "json",
    ])
}

#[test]
fn malformed_config_names_file_and_line() {
    let dir = TempDir::new();
    let path = write_file(
        dir.path(),
        "broken.conf",
        "server {\n  trust_domain = \"example.org\"\n  bind_port = \n}\n",
    );
    let output = run(&["server", "run", "--config", &path]);
    assert_one_error_line(&output, &["broken.conf", ":3"]);
}

#[test]
fn unknown_config_key_names_the_key() {
    let dir = TempDir::new();
    let path = write_file(
        dir.path(),
        "typo.conf",
        "server {\n  trust_domian = \"example.org\"\n}\n",
    );
    let output = run(&["server", "run", "--config", &path]);
    assert_one_error_line(&output, &["typo.conf:2", "trust_domian", "unknown"]);
}

#[test]
fn entry_create_rejects_bad_values_without_side_effects() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let socket = server.socket_arg();
    let before = count(&server);
    let parent = "spiffe://example.org/spire/agent/join_token/x";

    let cases: &[(&[&str], &[&str])] = &[
        (
            &[
                "--spiffe-id",
                "spiffe://example.org/a b",
                "--parent-id",
                parent,
                "--selector",
                "unix:uid:1",
            ],
            &["spiffe://example.org/a b"],
        ),
        (
            &[
                "--spiffe-id",
                "spiffe://example.org/a",
                "--parent-id",
                parent,
                "--selector",
                "uid1000",
            ],
            &["uid1000"],
        ),
        (
            &[
                "--spiffe-id",
                "spiffe://example.org/a",
                "--parent-id",
                parent,
                "--selector",
                "unix:",
            ],
            &["unix:"],
        ),
        (
            &[
                "--spiffe-id",
                "spiffe://example.org/a",
                "--parent-id",
                parent,
                "--selector",
                ":uid:1",
            ],
            &[":uid:1"],
        ),
        (
            &[
                "--spiffe-id",
                "spiffe://other.org/a",
                "--parent-id",
                parent,
                "--selector",
                "unix:uid:1",
            ],
            &["spiffe://other.org/a", "example.org"],
        ),
        (
            &[
                "--spiffe-id",
                "spiffe://example.org/spire/server",
                "--parent-id",
                parent,
                "--selector",
                "unix:uid:1",
            ],
            &["spiffe://example.org/spire/server", "reserved"],
        ),
    ];
    for (args, needles) in cases {
        let mut full = vec!["entry", "create", "--socket-path", socket];
        full.extend_from_slice(args);
        assert_one_error_line(&run(&full), needles);
    }
    // An alias in the agents' namespace would hand a new agent another agent's entries.
    let alias = run(&[
        "token",
        "generate",
        "--socket-path",
        socket,
        "--spiffe-id",
        "spiffe://example.org/spire/agent/join_token/existing",
    ]);
    assert_one_error_line(
        &alias,
        &["spiffe://example.org/spire/agent/join_token/existing"],
    );
    assert_eq!(count(&server), before, "a rejected entry left state behind");

    // As in SPIRE, a parent that has not attested yet is fine.
    server.create_entry("spiffe://example.org/a", parent, &["unix:uid:1"]);
}

#[test]
fn join_tokens_are_single_use_and_expire() {
    let dir = TempDir::new();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.generate_token();
    let first_dir = dir.path().join("first");
    std::fs::create_dir(&first_dir).unwrap();
    let _agent = AgentProcess::start(&first_dir, &server, &token);
    wait_until(Duration::from_secs(20), "the first agent to attest", || {
        run_ok(&["agent", "list", "--socket-path", server.socket_arg()]).contains(&token)
    });

    // The same token again: the second agent must fail to start.
    let reuse_dir = dir.path().join("reuse");
    std::fs::create_dir(&reuse_dir).unwrap();
    let output = start_agent_expecting_failure(&reuse_dir, &server, &token);
    assert!(
        output.contains("already been used"),
        "agent output: {output}"
    );
    assert!(
        output.contains("twid token generate"),
        "agent output: {output}"
    );

    // An expired token.
    let expired = run_ok(&[
        "token",
        "generate",
        "--ttl",
        "1",
        "--socket-path",
        server.socket_arg(),
    ]);
    let expired = expired.trim().strip_prefix("Token: ").unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(2100));
    let expired_dir = dir.path().join("expired");
    std::fs::create_dir(&expired_dir).unwrap();
    let output = start_agent_expecting_failure(&expired_dir, &server, &expired);
    assert!(output.contains("expired"), "agent output: {output}");

    let agents = run_ok(&[
        "agent",
        "list",
        "--socket-path",
        server.socket_arg(),
        "--output",
        "json",
    ]);
    let agents: serde_json::Value = serde_json::from_str(&agents).unwrap();
    assert_eq!(
        agents["agents"].as_array().unwrap().len(),
        1,
        "a rejected agent was recorded"
    );
    let log = server.log();
    assert!(!log.contains(&expired), "the server logged a join token");
    assert!(
        log.contains("join token attestation rejected"),
        "the server did not log the attempt"
    );
}

/// Runs an agent that must exit with an error and returns its stderr.
fn start_agent_expecting_failure(
    dir: &std::path::Path,
    server: &ServerProcess,
    token: &str,
) -> String {
    let bundle = dir.join("bootstrap.pem");
    server.write_bundle(&bundle);
    let config = format!(
        "agent {{\n  trust_domain = \"{TRUST_DOMAIN}\"\n  server_address = \"127.0.0.1\"\n  \
         server_port = \"{}\"\n  socket_path = \"{}\"\n  data_dir = \"{}\"\n  \
         trust_bundle_path = \"{}\"\n  join_token = \"{token}\"\n}}\n",
        server.port,
        dir.join("agent.sock").display(),
        dir.join("data").display(),
        bundle.display(),
    );
    let path = write_file(dir, "agent.conf", &config);
    let output = twid()
        .args(["agent", "run", "--config", &path])
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "the agent started with a bad token"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn watch_count_ending_on_status_fails() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let watch = |count: &str| {
        run(&[
            "api",
            "watch",
            "x509",
            "--count",
            count,
            "--socket-path",
            socket.to_str().unwrap(),
        ])
    };

    let output = watch("1");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(line["error"]["code"], "Unavailable");
    assert_eq!(line["svids"].as_array().map(Vec::len), Some(0));
    assert_one_error_line(&output, &["status Unavailable", "missing.sock"]);

    // A status that repeats counts each time, so the watch ends.
    let output = watch("2");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
}
