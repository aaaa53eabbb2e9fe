#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the structure, so one corpus covers all three parsers.
    let Some((selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => drop(twid_evidence::tpm::parse_attest(bytes)),
        1 => drop(twid_evidence::tpm::parse_public(bytes)),
        _ => drop(twid_evidence::tpm::parse_signature(bytes)),
    }
});
