//! Node attestation.

pub mod join_token;
