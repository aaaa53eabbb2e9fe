#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = twid_evidence::dcap::parse_quote(data);
    let _ = twid_evidence::dcap::quote_fmspc(data);
});
