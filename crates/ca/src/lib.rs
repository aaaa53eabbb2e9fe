//! The certificate authority of a trust domain: CA and JWT signing keys, PKCS#10 request
//! checks, and X.509-SVID and JWT-SVID issuance.
//!
//! Certificates are written with a small DER builder rather than rcgen, for two reasons.
//! A leaf's issuer name must be byte-identical to the CA subject, including a CA loaded
//! from disk, and rcgen re-encodes names. rcgen's distinguished names also hold one value
//! per attribute type, while [`CaSubject`] allows several countries and organizations.
//! rcgen builds the CSRs of [`build_csr`]. All cryptography is aws-lc-rs.

#![forbid(unsafe_code)]

mod authority;
mod cert;
mod csr;
mod der;
mod error;
mod extension;
mod jwt;
mod key;
mod key_file;
mod leaf;
mod public_key;
mod subject;
mod timestamp;

pub use authority::X509Authority;
pub use cert::{not_after, serial_hex};
pub use csr::{CsrInfo, build_csr, parse_csr};
pub use error::CaError;
pub use extension::{MAX_SVID_EXTENSION_LEN, MAX_SVID_EXTENSIONS, SvidExtension};
pub use jwt::JwtKey;
pub use key::{KeyType, PrivateKey};
pub use leaf::X509SvidRequest;
pub use subject::CaSubject;

#[cfg(test)]
mod tests {
    use super::*;

    /// The server shares authorities and keys between tasks behind `Arc`.
    #[test]
    fn signing_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PrivateKey>();
        assert_send_sync::<X509Authority>();
        assert_send_sync::<JwtKey>();
    }
}
