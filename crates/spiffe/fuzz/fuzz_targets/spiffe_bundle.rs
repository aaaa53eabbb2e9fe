#![no_main]

use libfuzzer_sys::fuzz_target;
use twid_spiffe::{SpiffeBundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("example.org").expect("constant trust domain must be valid");
    if let Ok(bundle) = SpiffeBundle::parse(td.clone(), data) {
        // What we write must read back to the same bundle.
        let again = SpiffeBundle::parse(td, &bundle.to_json()).expect("own output must parse");
        assert_eq!(again, bundle);
    }
});
