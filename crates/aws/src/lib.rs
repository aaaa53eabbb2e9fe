//! AWS IAM federation for JWT-SVIDs.
//!
//! A workload exchanges a JWT-SVID for temporary AWS credentials with STS
//! `AssumeRoleWithWebIdentity`, which needs no AWS credentials of its own. This crate builds the
//! IAM role trust policy that pins a SPIFFE ID ([`trust_policy`]), calls STS over its query
//! API ([`StsClient`]), and formats the result for the AWS CLI and SDKs' `credential_process`
//! setting ([`Credentials::credential_process_json`]).

#![forbid(unsafe_code)]

mod http;
mod policy;
pub mod sigv4;
mod sts;

pub use policy::{PolicyError, trust_policy};
pub use sts::{
    AssumeRoleRequest, AssumedRole, CallerIdentity, Credentials, DEFAULT_STS_ENDPOINT, StsClient,
    StsError,
};
