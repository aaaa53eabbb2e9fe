//! Node attestation.

pub mod evidence;
pub mod join_token;
