//! Evidence signed under test roots: SGX and TDX DCAP quotes with their collateral, SEV-SNP
//! reports with a VCEK chain, and Nitro attestation documents. The keys are generated per run
//! and never leave the process unless a test writes them out; nothing here is fit to trust in
//! production.

#![forbid(unsafe_code)]

pub mod dcap;
pub mod nitro;
pub mod snp;
