//! End-to-end tests: real `twid` server and agent processes, driven by the `twid` CLI,
//! py-spiffe, PyJWT, openssl and rustls.

// Harness helpers panic on set-up failures so that a test fails at the step that broke.
#![allow(clippy::unwrap_used)]

mod attest_verify;
mod aws;
mod bad_input;
mod common;
mod durability;
mod envoy_docs;
mod failover;
mod federation;
mod helper;
mod helper_nginx;
mod issuance_log;
mod issuance_log_postgres;
mod issuers;
mod jwt_agreement;
mod localauthority;
mod node_api_limits;
mod node_evidence;
mod oidc_provider;
mod operations;
mod policy;
mod replica_reads;
mod replicas;
mod revocation;
mod revoke_agent;
mod rotation;
mod sds;
mod sds_python;
mod sts_standin;
mod svid_inspect;
mod upstream_disk;
mod verification_api;
mod wit_svid;
mod workload;
mod workload_attestation;
