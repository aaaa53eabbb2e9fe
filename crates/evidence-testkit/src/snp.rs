//! Placeholder; replaced by the snp test evidence generator.
