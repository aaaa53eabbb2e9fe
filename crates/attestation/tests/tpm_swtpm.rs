//! The TPM collector against a software TPM: swtpm on loopback, an EK and an AK made with
//! tpm2-tools, and the collected quote checked by the evidence verifier.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twid_attestation::node::evidence::tpm::{TpmCollector, TpmSettings, read_ak_public};
use twid_attestation::node::evidence::{CollectError, Collector};
use twid_evidence::tpm::{self, QuoteInput};
use twid_evidence::{Claims, Kind, Reason};

const AK_HANDLE: &str = "0x81010002";

/// Kills the swtpm process when the test ends, even on panic.
struct Swtpm {
    child: Child,
    tcti: String,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tools_present() -> bool {
    [
        "swtpm",
        "tpm2_quote",
        "tpm2_createek",
        "tpm2_createak",
        "tpm2_evictcontrol",
    ]
    .iter()
    .all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

/// Finds a free loopback port whose successor is free too: the swtpm TCTI uses port + 1 for
/// the control channel.
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("address").port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free pair of loopback ports");
}

/// Starts swtpm on a free pair of ports. The pair is free when chosen but not reserved, so a
/// concurrent test can take a port before swtpm binds it, and swtpm then exits. An exited
/// swtpm is started again on another pair.
fn start_swtpm(state: &Path) -> Swtpm {
    for _ in 0..5 {
        let port = free_port_pair();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start swtpm");
        let mut swtpm = Swtpm {
            child,
            tcti: format!("swtpm:host=127.0.0.1,port={port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "swtpm did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The connection may have reached another test's listener on the same port, so
        // swtpm must still run a moment later.
        std::thread::sleep(Duration::from_millis(200));
        if swtpm.child.try_wait().expect("check swtpm").is_none() {
            return swtpm;
        }
    }
    panic!("swtpm exited on five pairs of loopback ports");
}

fn tool(tcti: &str, dir: &Path, program: &str, arguments: &[&str]) {
    let output = Command::new(program)
        .arg("--tcti")
        .arg(tcti)
        .args(arguments)
        .current_dir(dir)
        .output()
        .expect("run tpm2-tools");
    assert!(
        output.status.success(),
        "{program} {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Flushes transient objects and sessions: swtpm has no resource manager, and leftover
/// objects exhaust its object slots.
fn flush(tcti: &str, dir: &Path) {
    for kind in ["-t", "-s", "-l"] {
        tool(tcti, dir, "tpm2_flushcontext", &[kind]);
    }
}

/// Creates an EK and an AK of the given type, and persists the AK at `handle`.
fn provision_ak(tcti: &str, dir: &Path, key_type: &str, scheme: &str, handle: &str) {
    tool(
        tcti,
        dir,
        "tpm2_createek",
        &["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"],
    );
    flush(tcti, dir);
    tool(
        tcti,
        dir,
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "ak.ctx", "-G", key_type, "-g", "sha256", "-s", scheme, "-u",
            "ak.pub", "-n", "ak.name",
        ],
    );
    flush(tcti, dir);
    tool(
        tcti,
        dir,
        "tpm2_evictcontrol",
        &["-C", "o", "-c", "ak.ctx", handle],
    );
    flush(tcti, dir);
}

#[test]
fn swtpm_quote_verifies() {
    if !tools_present() {
        println!("swtpm not found; skipping");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let state = work.path().join("state");
    std::fs::create_dir(&state).expect("state folder");
    let swtpm = start_swtpm(&state);
    provision_ak(&swtpm.tcti, work.path(), "rsa", "rsassa", AK_HANDLE);
    // A non-zero PCR, so the digest covers real values.
    tool(
        &swtpm.tcti,
        work.path(),
        "tpm2_pcrextend",
        &["7:sha256=0000000000000000000000000000000000000000000000000000000000000001"],
    );

    let settings = TpmSettings {
        tcti: swtpm.tcti.clone(),
        ak_handle_or_context: AK_HANDLE.to_owned(),
        bank: "sha256".to_owned(),
        pcrs: (0..=7).collect(),
        event_log_path: None,
    };
    let collector = TpmCollector::new(settings.clone());
    assert_eq!(collector.kind(), Kind::Tpm);
    let report_data = [0x42u8; 64];
    let envelope = collector.collect(&report_data).expect("collect");
    assert_eq!(envelope.kind, Kind::Tpm);
    // The quote carries the SHA-256 of the report data as its qualifying data.
    let qualifying = twid_evidence::binding::tpm_qualifying_data(&report_data);

    let input = QuoteInput::from_json(&envelope.evidence).expect("evidence JSON");
    let verified = tpm::verify(&input, Some(&qualifying), 0).expect("verify");
    let Claims::Tpm(claims) = &verified.claims else {
        panic!("expected TPM claims");
    };
    assert_eq!(claims.pcr_bank, "sha256");
    assert_eq!(claims.extra_data, qualifying.to_vec());
    assert_eq!(
        claims.pcrs.keys().copied().collect::<Vec<_>>(),
        (0..=7).collect::<Vec<u8>>()
    );
    assert_ne!(claims.pcrs[&7], vec![0u8; 32], "PCR 7 was extended");
    assert_eq!(claims.pcrs[&0], vec![0u8; 32]);
    assert_eq!(verified.bound_data(), Some(&qualifying[..]));

    // The enrolment key is the key the quote was checked under.
    let ak = read_ak_public(&settings).expect("read AK");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &ak);
    assert_eq!(claims.ak_sha256.as_slice(), digest.as_ref());
    // The SubjectPublicKeyInfo encoding matches the one tpm2-tools (OpenSSL) produces.
    tool(
        &swtpm.tcti,
        work.path(),
        "tpm2_readpublic",
        &["-c", AK_HANDLE, "-f", "der", "-o", "ak.der"],
    );
    let tools_der = std::fs::read(work.path().join("ak.der")).expect("ak.der");
    assert_eq!(ak, tools_der);

    let error = tpm::verify(&input, Some(&[0x43u8; 32]), 0).expect_err("wrong nonce");
    assert_eq!(error.reason, Reason::Freshness);

    let mut altered = input.clone();
    if let Some(value) = altered.pcrs.get_mut(&3) {
        value[0] ^= 1;
    }
    let error = tpm::verify(&altered, Some(&qualifying), 0).expect_err("altered PCR");
    assert_eq!(error.reason, Reason::Collateral);

    let mut altered = input.clone();
    altered.attest[40] ^= 1;
    let error = tpm::verify(&altered, Some(&qualifying), 0).expect_err("altered quote");
    assert_eq!(error.reason, Reason::Signature);
}

#[test]
fn swtpm_ecdsa_and_pss_quotes_verify() {
    if !tools_present() {
        println!("swtpm not found; skipping");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let state = work.path().join("state");
    std::fs::create_dir(&state).expect("state folder");
    let swtpm = start_swtpm(&state);

    for (key_type, scheme, handle) in [
        ("ecc", "ecdsa", "0x81010003"),
        ("rsa", "rsapss", "0x81010004"),
    ] {
        provision_ak(&swtpm.tcti, work.path(), key_type, scheme, handle);
        let collector = TpmCollector::new(TpmSettings {
            tcti: swtpm.tcti.clone(),
            ak_handle_or_context: handle.to_owned(),
            pcrs: vec![0, 1, 2, 16],
            ..TpmSettings::default()
        });
        let report_data = [0x17u8; 64];
        let envelope = collector
            .collect(&report_data)
            .unwrap_or_else(|error| panic!("{scheme}: {error}"));
        let qualifying = twid_evidence::binding::tpm_qualifying_data(&report_data);
        let verified = tpm::verify_json(&envelope.evidence, Some(&qualifying), 0);
        assert!(verified.is_ok(), "{scheme}: {verified:?}");
    }
}

#[test]
fn unreachable_swtpm_fails_collection() {
    if !tools_present() {
        println!("swtpm not found; skipping");
        return;
    }
    let port = free_port_pair();
    let collector = TpmCollector::new(TpmSettings {
        tcti: format!("swtpm:host=127.0.0.1,port={port}"),
        ..TpmSettings::default()
    });
    let error = collector.collect(&[0; 64]).expect_err("nothing listens");
    assert!(matches!(error, CollectError::Failed { .. }), "{error}");
    assert!(
        error.to_string().contains(&format!("port={port}")),
        "{error}"
    );
}
