//! SPIFFE standard types: IDs, SVIDs and bundles, with no I/O.

#![forbid(unsafe_code)]

pub mod bundle;
mod der;
pub mod endpoint;
pub mod id;
mod json;
pub mod jwt;
mod keys;
pub mod x509;

pub use bundle::{SpiffeBundle, SpiffeBundleError};
pub use der::DerError;
pub use endpoint::{EndpointAddress, EndpointError};
pub use id::{IdError, SpiffeId, TrustDomain};
pub use jwt::{
    JwtAlgorithm, JwtAuthority, JwtBundle, JwtBundleSet, JwtError, JwtSvid, assemble,
    encode_signing_input,
};
pub use x509::{
    X509Bundle, X509BundleError, X509BundleSet, X509Svid, X509SvidError, check_leaf, concat_der,
    split_der_certificates, verify_x509_svid,
};
