//! Placeholder; replaced by the TPM collector.
