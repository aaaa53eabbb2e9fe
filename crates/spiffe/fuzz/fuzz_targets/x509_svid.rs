#![no_main]

use libfuzzer_sys::fuzz_target;

// The first byte picks where the input splits into chain and key.
fuzz_target!(|data: &[u8]| {
    if let Some((&split, rest)) = data.split_first() {
        let at = usize::from(split).min(rest.len());
        let (chain, key) = rest.split_at(rest.len() - at);
        let _ = twid_spiffe::X509Svid::parse_der(chain, key);
        let _ = twid_spiffe::split_der_certificates(rest);
    }
});
