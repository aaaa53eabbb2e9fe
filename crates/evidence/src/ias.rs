//! Placeholder; replaced by the verifier for this kind.
