//! Placeholder; replaced by the evidence policy.
