//! WIMSE application-layer workload authentication: Workload Identity Tokens
//! (draft-ietf-wimse-workload-creds-02), Workload Proof Tokens (draft-ietf-wimse-wpt-02)
//! and a tower layer that verifies both on HTTP requests.
//!
//! An Identity Server issues a WIT ([`issue_wit`]) binding a workload's public key to its
//! SPIFFE ID. For each request the workload signs a WPT ([`create_wpt`]) with that key,
//! binding the audience, the WIT and any access token, Txn-Token or other token in the
//! request. The receiver verifies both ([`verify_wit`], [`verify_wpt`], or
//! [`WimseAuthLayer`]) and authorizes on the WIT `sub`.
//!
//! Choices where the drafts leave room:
//! - Only asymmetric signature algorithms exist in [`JwsAlgorithm`], so `none`, HMAC and
//!   encryption algorithms are rejected wherever an `alg` is read.
//! - `typ` is compared as a media type: `wit+jwt`, `application/wit+jwt` and other case
//!   spellings are equal, as RFC 7515 section 4.1.9 requires of recipients.
//! - A header with `crit` is rejected, because no JWS extension is understood.
//! - Header and claims with a repeated member name are rejected.
//! - Unknown claims are ignored, as both drafts require.
//! - WITs carry `iat` and `jti` (random 128 bits unless given); WPTs carry `iat` too, so
//!   that their lifetime can be checked from both ends.
//! - Replay protection, which the WPT draft only recommends, is always on.

#![forbid(unsafe_code)]

mod error;
mod jose;
mod jwk;
mod keys;
mod layer;
mod replay;
mod wit;
mod wpt;

pub use error::WimseError;
pub use jose::{JwsAlgorithm, TokenKind, token_hash};
pub use jwk::{PublicJwk, SigningKey};
pub use keys::{IssuerKeys, SharedIssuerKeys};
pub use layer::{
    TXN_TOKEN_HEADER, WIT_HEADER, WPT_HEADER, WimseAuthConfig, WimseAuthLayer, WimseAuthService,
};
pub use replay::{DEFAULT_REPLAY_CACHE_CAPACITY, ReplayCache};
pub use wit::{
    DEFAULT_CLOCK_SKEW, MAX_WIT_TTL, WIT_TYPE, Wit, WitValidation, issue_wit, verify_wit,
};
pub use wpt::{
    BoundTokens, DEFAULT_PROOF_TTL, MAX_PROOF_TTL, Proof, ProofValidation, WPT_TYPE, create_wpt,
    verify_wpt,
};
