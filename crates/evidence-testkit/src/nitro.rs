//! Placeholder; replaced by the nitro test evidence generator.
