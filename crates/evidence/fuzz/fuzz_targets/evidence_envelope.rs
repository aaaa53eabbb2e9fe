#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = twid_evidence::Envelope::from_json(data);
    let _ = twid_evidence::tpm::QuoteInput::from_json(data);
});
