//! End-to-end tests: real `twid` server and agent processes, driven by the `twid` CLI,
//! py-spiffe, PyJWT, openssl and rustls.

// Harness helpers panic on set-up failures so that a test fails at the step that broke.
#![allow(clippy::unwrap_used)]

mod bad_input;
mod common;
mod durability;
mod jwt_agreement;
mod operations;
mod rotation;
mod workload;
