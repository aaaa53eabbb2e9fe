//! End-to-end tests: real `twid` server and agent processes, driven by the `twid` CLI,
//! py-spiffe, PyJWT, openssl and rustls.

mod bad_input;
mod common;
mod durability;
mod rotation;
mod workload;
