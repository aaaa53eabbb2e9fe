#![no_main]

use libfuzzer_sys::fuzz_target;
use twid_spiffe::{JwtBundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("example.org").expect("constant trust domain must be valid");
    let _ = JwtBundle::parse_jwks(td, data);
});
