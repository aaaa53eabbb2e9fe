//! Placeholder; replaced by the dcap test evidence generator.
