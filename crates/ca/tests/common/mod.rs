//! Helpers shared by the integration tests.

// Not every test file uses every helper, and a setup failure should panic.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Returns whether the `openssl` binary runs; prints a skip notice when it does not.
pub fn openssl_available() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("openssl binary not found, skipping the OpenSSL check");
    }
    found
}

/// Runs `openssl` with `args` and returns its output.
pub fn openssl(args: &[&str]) -> Output {
    Command::new("openssl").args(args).output().unwrap()
}

/// Writes DER as a PEM block with `label`.
pub fn write_pem(path: &Path, label: &str, der: &[u8]) {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    std::fs::write(path, pem).unwrap();
}

/// Returns the path as a `&str` for command arguments.
pub fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}
