//! The error type for loading and validating configuration.

use std::path::PathBuf;

/// A configuration failure.
///
/// Every variant that comes from a file names the file and, where the problem sits on a line,
/// the one-based line number, so `Display` reads like a compiler diagnostic:
/// `server.conf:3: bind_port = "abc": invalid port, expected an integer 1-65535`.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: failed to read config file: {source}", path.display())]
    Read {
        /// The path that was opened.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },

    /// The text is not valid HCL.
    #[error("{file}:{line}: invalid HCL at column {column}: {message}")]
    Syntax {
        /// The file name as given to the loader.
        file: String,
        /// One-based line of the parse failure.
        line: usize,
        /// One-based column of the parse failure.
        column: usize,
        /// The parser's message.
        message: String,
    },

    /// `expand_env` found a reference to an environment variable that is not set.
    #[error("{file}:{line}: environment variable {name} is not set (referenced as ${name})")]
    UnsetEnvVar {
        /// The file name as given to the loader.
        file: String,
        /// One-based line of the reference.
        line: usize,
        /// The variable name.
        name: String,
    },

    /// `expand_env` found a `$` reference it cannot read, such as an unterminated `${`.
    #[error("{file}:{line}: invalid environment variable reference: {reason}")]
    InvalidEnvReference {
        /// The file name as given to the loader.
        file: String,
        /// One-based line of the reference.
        line: usize,
        /// Description of the problem with the reference.
        reason: String,
    },

    /// A key has a value of the wrong type or outside its allowed range.
    #[error("{file}:{line}: {key} = {value}: {reason}")]
    InvalidValue {
        /// The file name as given to the loader.
        file: String,
        /// One-based line of the value.
        line: usize,
        /// The key as written.
        key: String,
        /// The value as written in the file, or `<redacted>` for secrets.
        value: String,
        /// Description of the problem and of the expected value.
        reason: String,
    },

    /// A key or block is not part of the schema, usually a typo.
    #[error("{file}:{line}: unknown key {key:?} {}{}", location(block), format_hint(.hint.as_deref()))]
    UnknownKey {
        /// The file name as given to the loader.
        file: String,
        /// One-based line of the key.
        line: usize,
        /// The key as written.
        key: String,
        /// Dotted path of the enclosing block, or an empty string for the top level.
        block: String,
        /// A suggestion such as `did you mean "trust_domain"?`.
        hint: Option<String>,
    },

    /// A key appears twice in the same block.
    #[error(
        "{file}:{line}: duplicate key {key} {} (first set on line {first_line})",
        location(block)
    )]
    DuplicateKey {
        /// The file name as given to the loader.
        file: String,
        /// One-based line of the second occurrence.
        line: usize,
        /// The key in quotes, followed by the labels of a block: `KeyManager "disk"`.
        key: String,
        /// Dotted path of the enclosing block, or an empty string for the top level.
        block: String,
        /// One-based line of the first occurrence.
        first_line: usize,
    },

    /// A required key is absent.
    #[error("{file}:{line}: missing required key {key:?} in block {block:?}")]
    MissingKey {
        /// The file name as given to the loader.
        file: String,
        /// One-based line where the enclosing block starts.
        line: usize,
        /// The missing key.
        key: String,
        /// Dotted path of the enclosing block.
        block: String,
    },

    /// A required top-level block is absent.
    #[error("{file}: missing required block {block:?}{}", format_hint(.hint.as_deref()))]
    MissingBlock {
        /// The file name as given to the loader.
        file: String,
        /// The missing block.
        block: String,
        /// A note such as the file looking like the other kind of configuration.
        hint: Option<String>,
    },

    /// A SPIRE plugin block names a plugin that twid does not implement.
    #[error("{file}:{line}: unsupported plugin {plugin_type} {name:?}: {reason}")]
    UnsupportedPlugin {
        /// The file name as given to the loader.
        file: String,
        /// One-based line of the plugin block.
        line: usize,
        /// The plugin type, such as `NodeAttestor`.
        plugin_type: String,
        /// The plugin name, such as `k8s_psat`.
        name: String,
        /// Plugins of this type that twid supports.
        reason: String,
    },

    /// Keys that are valid one by one but not together, or a required choice left open.
    #[error("{file}:{line}: {message}")]
    Invalid {
        /// The file name as given to the loader.
        file: String,
        /// One-based line of the block or key concerned.
        line: usize,
        /// Description of the problem and of the fix.
        message: String,
    },

    /// A duration string outside a file, passed to [`crate::parse_duration`].
    #[error("invalid duration {input:?}: {reason}")]
    InvalidDuration {
        /// The text as given.
        input: String,
        /// Description of the problem and of the expected value.
        reason: String,
    },

    /// A listen address set in code that is neither an IP literal nor `localhost`.
    #[error("invalid listen address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Description of the problem and of the expected value.
        reason: String,
    },
}

fn location(block: &str) -> String {
    if block.is_empty() {
        "at top level".to_owned()
    } else {
        format!("in block {block:?}")
    }
}

fn format_hint(hint: Option<&str>) -> String {
    hint.map(|text| format!("; {text}")).unwrap_or_default()
}
