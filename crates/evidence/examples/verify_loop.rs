//! Verifies one kind of evidence in a loop, so that a profile of the loop contains only
//! verification.
//!
//! ```sh
//! cargo build --release -p twid-evidence --example verify_loop
//! valgrind --tool=callgrind --zero-before='*run_iterations*' \
//!     target/release/examples/verify_loop --kind sgx-dcap --iterations 20
//! ```
//!
//! In the callgrind output, divide a function's inclusive cost by that of `run_iterations`.
//! `--zero-before` discards the costs and call counts of the setup, which includes one
//! verification that checks the case before the loop.
//!
//! Every input is read and parsed before the loop: the evidence bytes, the certificate chains
//! and, for DCAP, the collateral (`Collateral::from_dcap_qvl_json` once), as a verifier with
//! cached collateral does. Each iteration is one full `verify` call. The inputs are published
//! samples from the fixture folder that [`fixture_dir`] returns. When that folder is absent,
//! DCAP, TDX, SEV-SNP and Nitro use evidence that `twid_evidence_testkit` signs under test
//! roots, and SGX IAS and TPM are skipped.
//!
//! The benchmark `benches/verify.rs` includes this file as a module and times the same cases.

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use twid_evidence::dcap::{self, Collateral};
use twid_evidence::{Kind, TrustAnchors, Verified, VerifyError, ias, nitro, snp, tpm};
use twid_evidence_testkit::dcap::{PlatformSpec, SgxReportSpec, TdReportSpec, TestPlatform};
use twid_evidence_testkit::nitro::{DocumentSpec, TestNitro};
use twid_evidence_testkit::snp::{ReportSpec, SnpTcb, TestAmd};

/// The `--kind` names, in the order the benchmark runs them.
pub(crate) const KINDS: [&str; 7] = [
    "sgx-dcap",
    "tdx",
    "sgx-ias",
    "sev-snp",
    "nitro",
    "tpm-trustee",
    "tpm-go-attestation",
];

/// The `now` (Unix seconds) at which each published sample verifies.
const DCAP_NOW: i64 = 1_751_328_000;
const IAS_NOW: i64 = 1_535_069_738;
const SNP_NOW: i64 = 1_751_328_000;
const NITRO_NOW: i64 = 1_665_651_600;

/// The qualifying data (nonce) that the trustee TPM quote carries: 48 bytes of nonce padded
/// with 16 zero bytes.
const TRUSTEE_TPM_NONCE: &str = "a04182b506878d4f29b91ee606a71a0d3361ccf1b22db20c98adcaa537bea393\
                                 ef0e41a18b3569ab678f1497fbc5c120\
                                 00000000000000000000000000000000";

/// The origin of a case's evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A published sample from the fixture folder.
    Fixture,
    /// Evidence that `twid_evidence_testkit` signed under a test root in this process.
    Generated,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Fixture => "fixture",
            Source::Generated => "generated",
        }
    }
}

/// One kind of evidence with every input parsed, ready to verify repeatedly.
pub(crate) struct Case {
    pub(crate) kind: &'static str,
    pub(crate) source: Source,
    verify: Box<dyn Fn() -> Result<Verified, VerifyError>>,
}

impl Case {
    fn new(
        kind: &'static str,
        source: Source,
        verify: impl Fn() -> Result<Verified, VerifyError> + 'static,
    ) -> Self {
        Case {
            kind,
            source,
            verify: Box::new(verify),
        }
    }

    /// Runs one full verification.
    pub(crate) fn verify(&self) -> Result<Verified, VerifyError> {
        (self.verify)()
    }
}

/// Errors that stop a case from being built.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// The kind is not one of [`KINDS`].
    UnknownKind(String),
    /// The fixture folder is absent and the kind has no generated evidence.
    FixturesNotFound(PathBuf),
    /// A fixture exists but cannot be read or parsed.
    Fixture(String),
    /// The evidence does not verify, so timing it would measure an early rejection.
    Rejected(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::UnknownKind(kind) => write!(
                f,
                "unknown kind {kind:?}; expected one of {}",
                KINDS.join(", ")
            ),
            LoadError::FixturesNotFound(dir) => write!(
                f,
                "fixtures not found at {}; this kind has no generated evidence, so it is skipped",
                dir.display()
            ),
            LoadError::Fixture(message) => write!(f, "invalid fixture: {message}"),
            LoadError::Rejected(message) => write!(f, "the evidence does not verify: {message}"),
        }
    }
}

/// Returns the attestation fixture folder: `$TWID_FIXTURES/attestation`, or else the default
/// folder that this crate's tests read.
pub(crate) fn fixture_dir() -> PathBuf {
    let root = std::env::var_os("TWID_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
        PathBuf::from,
    );
    root.join("attestation")
}

/// Builds the case for `kind` and checks once that its evidence verifies.
pub(crate) fn load_case(kind: &str) -> Result<Case, LoadError> {
    let dir = fixture_dir();
    let fixtures = dir.is_dir().then_some(dir.as_path());
    let case = match (kind, fixtures) {
        ("sgx-dcap", Some(dir)) => dcap_fixture(
            "sgx-dcap",
            dir,
            "sgx-dcap/dcap-qvl_sgx_quote.bin",
            "sgx-dcap/dcap-qvl_sgx_quote_collateral.json",
        )?,
        ("tdx", Some(dir)) => dcap_fixture(
            "tdx",
            dir,
            "tdx/dcap-qvl_tdx_quote.bin",
            "tdx/dcap-qvl_tdx_quote_collateral.json",
        )?,
        ("sgx-ias", Some(dir)) => ias_fixture(dir)?,
        ("sev-snp", Some(dir)) => snp_fixture(dir)?,
        ("nitro", Some(dir)) => nitro_fixture(dir)?,
        ("tpm-trustee", Some(dir)) => {
            let evidence = read(dir, "tpm/trustee_tpm_evidence.json")?;
            let nonce = hex::decode(TRUSTEE_TPM_NONCE).map_err(|error| {
                LoadError::Fixture(format!("invalid trustee TPM nonce hex: {error}"))
            })?;
            Case::new("tpm-trustee", Source::Fixture, move || {
                tpm::verify_json(black_box(&evidence), Some(&nonce), 0)
            })
        }
        ("tpm-go-attestation", Some(dir)) => {
            let evidence = read(dir, "tpm/go-attestation_windows_gcp_shielded_vm.json")?;
            Case::new("tpm-go-attestation", Source::Fixture, move || {
                tpm::verify_json(black_box(&evidence), None, 0)
            })
        }
        ("sgx-dcap", None) => dcap_generated(false),
        ("tdx", None) => dcap_generated(true),
        ("sev-snp", None) => snp_generated(),
        ("nitro", None) => nitro_generated(),
        ("sgx-ias" | "tpm-trustee" | "tpm-go-attestation", None) => {
            return Err(LoadError::FixturesNotFound(dir));
        }
        (other, _) => return Err(LoadError::UnknownKind(other.to_owned())),
    };
    case.verify()
        .map_err(|error| LoadError::Rejected(format!("{}: {error}", case.kind)))?;
    Ok(case)
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, LoadError> {
    std::fs::read(dir.join(name))
        .map_err(|error| LoadError::Fixture(format!("cannot read {name}: {error}")))
}

fn pem_chain(dir: &Path, name: &str) -> Result<Vec<Vec<u8>>, LoadError> {
    snp::parse_pem_chain(&read(dir, name)?)
        .map_err(|error| LoadError::Fixture(format!("{name}: {error}")))
}

fn dcap_fixture(
    kind: &'static str,
    dir: &Path,
    quote: &str,
    collateral: &str,
) -> Result<Case, LoadError> {
    let quote = read(dir, quote)?;
    let collateral = Collateral::from_dcap_qvl_json(&read(dir, collateral)?)
        .map_err(|error| LoadError::Fixture(format!("DCAP collateral: {error}")))?;
    let anchors = TrustAnchors::production(Kind::SgxDcap);
    Ok(Case::new(kind, Source::Fixture, move || {
        dcap::verify(black_box(&quote), &collateral, &anchors, DCAP_NOW)
    }))
}

fn ias_fixture(dir: &Path) -> Result<Case, LoadError> {
    let body = read(dir, "sgx-ias/fortanix_test_report_body.json")?;
    let signature = read(dir, "sgx-ias/fortanix_test_report_sig.bin")?;
    let signing_chain = pem_chain(dir, "sgx-ias/intel_sgx_attestation_report_signing_cert.pem")?;
    let mut anchors = TrustAnchors::new();
    for root in pem_chain(
        dir,
        "sgx-ias/intel_sgx_attestation_report_signing_ca_root.pem",
    )? {
        anchors.add_certificate(&root);
    }
    Ok(Case::new("sgx-ias", Source::Fixture, move || {
        ias::verify(
            black_box(&body),
            &signature,
            &signing_chain,
            &anchors,
            IAS_NOW,
        )
    }))
}

fn snp_fixture(dir: &Path) -> Result<Case, LoadError> {
    let text = read(dir, "sev-snp/virtee_report_milan.hex")?;
    let report = hex::decode(text.trim_ascii())
        .map_err(|error| LoadError::Fixture(format!("SEV-SNP report hex: {error}")))?;
    let vcek = read(dir, "sev-snp/virtee_vcek_milan.der")?;
    let chain = pem_chain(dir, "sev-snp/virtee_cert_chain_milan_ask_ark.pem")?;
    let anchors = TrustAnchors::production(Kind::Snp);
    Ok(Case::new("sev-snp", Source::Fixture, move || {
        snp::verify(black_box(&report), &vcek, &chain, &anchors, SNP_NOW)
    }))
}

fn nitro_fixture(dir: &Path) -> Result<Case, LoadError> {
    let document = read(dir, "nitro/evervault_beta_valid_attestation_doc.cose")?;
    let anchors = TrustAnchors::production(Kind::Nitro);
    Ok(Case::new("nitro", Source::Fixture, move || {
        nitro::verify(black_box(&document), &anchors, NITRO_NOW)
    }))
}

fn dcap_generated(tdx: bool) -> Case {
    let (kind, platform) = if tdx {
        ("tdx", TestPlatform::new(&PlatformSpec::default()))
    } else {
        ("sgx-dcap", TestPlatform::new(&PlatformSpec::sgx()))
    };
    let (quote, collateral) = if tdx {
        (
            platform.tdx_quote(&TdReportSpec::default(), 4),
            platform.collateral_tdx(),
        )
    } else {
        (
            platform.sgx_quote(&SgxReportSpec::default()),
            platform.collateral_sgx(),
        )
    };
    let mut anchors = TrustAnchors::new();
    anchors.add_certificate(&platform.root_der());
    Case::new(kind, Source::Generated, move || {
        dcap::verify(
            black_box(&quote),
            &collateral,
            &anchors,
            PlatformSpec::DEFAULT_NOW,
        )
    })
}

fn snp_generated() -> Case {
    let tcb = SnpTcb {
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
        fmc: None,
    };
    let amd = TestAmd::new("Milan", [0x5a; 64], tcb);
    let report = amd.report(&ReportSpec::default());
    let vcek = amd.vcek_der().to_vec();
    let chain = amd.chain_der();
    let mut anchors = TrustAnchors::new();
    anchors.add_certificate(amd.ark_der());
    Case::new("sev-snp", Source::Generated, move || {
        snp::verify(
            black_box(&report),
            &vcek,
            &chain,
            &anchors,
            twid_evidence_testkit::snp::NOW,
        )
    })
}

fn nitro_generated() -> Case {
    let nitro = TestNitro::new();
    let document = nitro.document(&DocumentSpec::default());
    let mut anchors = TrustAnchors::new();
    anchors.add_certificate(nitro.root_der());
    Case::new("nitro", Source::Generated, move || {
        nitro::verify(
            black_box(&document),
            &anchors,
            twid_evidence_testkit::nitro::NOW,
        )
    })
}

/// Runs `iterations` verifications. It is never inlined, so that callgrind reports the loop's
/// inclusive cost apart from the setup.
#[inline(never)]
pub(crate) fn run_iterations(case: &Case, iterations: u64) -> Result<(), VerifyError> {
    for _ in 0..iterations {
        black_box(case.verify()?);
    }
    Ok(())
}

const USAGE: &str = "usage: verify_loop --kind KIND [--iterations N]\n\
                     KIND is one of: sgx-dcap, tdx, sgx-ias, sev-snp, nitro, tpm-trustee, \
                     tpm-go-attestation. N is the number of verifications (default 20).";

/// Parses `--kind KIND` and `--iterations N` from the command line.
fn parse_args() -> Result<(String, u64), String> {
    let mut kind = None;
    let mut iterations = 20;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kind" => kind = Some(args.next().ok_or("--kind needs a value")?),
            "--iterations" => {
                let value = args.next().ok_or("--iterations needs a value")?;
                iterations = value.parse().map_err(|error| {
                    format!("invalid --iterations {value:?}: {error}; expected a whole number")
                })?;
            }
            // An empty message makes `main` print only the usage text.
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let kind = kind.ok_or("missing --kind")?;
    Ok((kind, iterations))
}

fn main() -> ExitCode {
    let (kind, iterations) = match parse_args() {
        Ok(parsed) => parsed,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("verify_loop: {message}");
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let case = match load_case(&kind) {
        Ok(case) => case,
        Err(error @ LoadError::FixturesNotFound(_)) => {
            println!("verify_loop: {kind}: {error}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("verify_loop: {error}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    if let Err(error) = run_iterations(&case, iterations) {
        eprintln!("verify_loop: {} failed during the loop: {error}", case.kind);
        return ExitCode::FAILURE;
    }
    let elapsed = started.elapsed();
    println!(
        "{} ({} evidence): {iterations} verifications in {:.3} ms",
        case.kind,
        case.source.as_str(),
        elapsed.as_secs_f64() * 1e3
    );
    ExitCode::SUCCESS
}
