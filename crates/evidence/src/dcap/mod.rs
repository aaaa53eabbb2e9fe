//! Placeholder; replaced by the DCAP verifier.
