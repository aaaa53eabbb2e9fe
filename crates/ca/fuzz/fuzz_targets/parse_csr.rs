#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use twid_ca::{CaSubject, KeyType, PrivateKey, X509Authority, X509SvidRequest};
use twid_spiffe::{SpiffeId, TrustDomain};

fn authority() -> &'static (X509Authority, SpiffeId) {
    static AUTHORITY: OnceLock<(X509Authority, SpiffeId)> = OnceLock::new();
    AUTHORITY.get_or_init(|| {
        let td = TrustDomain::new("example.org").expect("constant trust domain must be valid");
        let key = PrivateKey::generate(KeyType::EcP256).expect("key generation must work");
        let ca = X509Authority::self_signed(
            &td,
            key,
            &CaSubject::default(),
            SystemTime::now(),
            Duration::from_secs(86_400),
            None,
        )
        .expect("CA creation must work");
        let id = td.id_with_path("/fuzz").expect("constant path must be valid");
        (ca, id)
    })
}

// Every key parse_csr accepts must be one the CA can certify.
fuzz_target!(|data: &[u8]| {
    if let Ok(info) = twid_ca::parse_csr(data) {
        let (ca, id) = authority();
        ca.sign_x509_svid(&X509SvidRequest {
            spiffe_id: id,
            public_key_spki_der: &info.public_key_spki_der,
            ttl: Duration::from_secs(60),
            dns_names: &[],
            now: SystemTime::now(),
        })
        .expect("a key accepted from a CSR must be signable");
    }
});
