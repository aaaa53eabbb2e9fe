#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = twid_evidence::snp::parse_report(data);
    let _ = twid_evidence::snp::parse_pem_chain(data);
});
