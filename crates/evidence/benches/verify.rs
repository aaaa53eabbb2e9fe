//! Evidence verification per kind on one core, with cached collateral.
//!
//! Each benchmark times one full `verify` call of a kind: `dcap::verify` for SGX DCAP and TDX
//! v4 quotes, `ias::verify`, `snp::verify`, `nitro::verify` and `tpm::verify_json`. Evidence,
//! certificate chains and collateral are read and parsed once before timing, so the DCAP
//! collateral is not parsed again per call. The throughput line reports verifications per
//! second. The cases, their inputs and the fixture fallback are those of the example
//! `verify_loop`, which this file includes.

#![forbid(unsafe_code)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

// The example's `main` and argument parsing are not used here.
#[allow(dead_code)]
#[path = "../examples/verify_loop.rs"]
mod verify_loop;

use verify_loop::{KINDS, LoadError, load_case};

fn verify_per_kind(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(1));
    for kind in KINDS {
        let case = match load_case(kind) {
            Ok(case) => case,
            Err(error @ LoadError::FixturesNotFound(_)) => {
                println!("{kind}: {error}");
                continue;
            }
            Err(error) => panic!("{kind}: {error}"),
        };
        let name = format!("{}/{}", case.kind, case.source.as_str());
        group.bench_function(name, |b| {
            b.iter(|| {
                case.verify()
                    .unwrap_or_else(|error| panic!("{kind} stopped verifying: {error}"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, verify_per_kind);
criterion_main!(benches);
