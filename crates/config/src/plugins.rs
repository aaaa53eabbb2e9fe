//! The SPIRE-style `plugins { Type "name" { plugin_data { ... } } }` block.
//!
//! twid's plugins are built in, so the block only selects among them and carries their
//! settings. SPIRE plugin types and names that twid lacks are rejected with an error that names
//! the plugin, so a SPIRE file is never half-applied.

use crate::ConfigError;
use crate::document::{Entry, Node, Schema, Section};
use crate::values;

/// One enabled plugin block.
pub(crate) struct Plugin<'a> {
    pub(crate) plugin_type: &'a str,
    pub(crate) name: &'a str,
    pub(crate) line: usize,
    /// The `plugin_data` settings, or `None` when absent, which reads as an empty section.
    pub(crate) data: Option<Section<'a>>,
    file: String,
}

impl Plugin<'_> {
    /// Builds the error for a plugin name that twid does not implement.
    pub(crate) fn unsupported(&self, reason: &str) -> ConfigError {
        ConfigError::UnsupportedPlugin {
            file: self.file.clone(),
            line: self.line,
            plugin_type: self.plugin_type.to_owned(),
            name: self.name.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// Checks `plugin_data` against `schema`.
    pub(crate) fn check_data(&self, schema: &Schema) -> Result<(), ConfigError> {
        match &self.data {
            Some(data) => data.check_keys(schema),
            None => Ok(()),
        }
    }

    /// Converts an optional `plugin_data` key.
    pub(crate) fn optional<T>(
        &self,
        key: &str,
        convert: impl FnOnce(&hcl_edit::expr::Expression) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match &self.data {
            Some(data) => data.optional(key, convert),
            None => Ok(None),
        }
    }

    /// Converts a required `plugin_data` key.
    pub(crate) fn required<T>(
        &self,
        key: &str,
        convert: impl FnOnce(&hcl_edit::expr::Expression) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match &self.data {
            Some(data) => data.required(key, convert),
            None => Err(ConfigError::MissingKey {
                file: self.file.clone(),
                line: self.line,
                key: key.to_owned(),
                block: format!("plugins.{}.{}.plugin_data", self.plugin_type, self.name),
            }),
        }
    }
}

/// Keys of a plugin block itself, around its `plugin_data`.
const PLUGIN_BLOCK: Schema = Schema {
    keys: &["plugin_data", "enabled", "plugin_cmd", "plugin_checksum"],
    hints: &[(
        "plugin_data_file",
        "twid reads plugin settings only from an inline plugin_data block",
    )],
    nested: None,
};

/// Reads the top-level `plugins` block. `plugin_types` lists every SPIRE plugin type of this
/// side (server or agent), and a type outside it is an unknown key. Plugins with `enabled = false`
/// are left out, as SPIRE leaves them out.
pub(crate) fn collect<'a>(
    root: &Section<'a>,
    plugin_types: &'static Schema,
) -> Result<Vec<Plugin<'a>>, ConfigError> {
    let Some(section) = root.section("plugins")? else {
        return Ok(Vec::new());
    };
    section.check_keys(plugin_types)?;
    let mut plugins = Vec::new();
    for entry in &section.entries {
        if let Some(plugin) = read_plugin(&section, entry)? {
            plugins.push(plugin);
        }
    }
    Ok(plugins)
}

fn read_plugin<'a>(
    plugins: &Section<'a>,
    entry: &Entry<'a>,
) -> Result<Option<Plugin<'a>>, ConfigError> {
    let labels = entry.labels();
    let (Node::Block(_), [name]) = (&entry.node, labels.as_slice()) else {
        return Err(plugins.invalid(
            entry.line,
            format!(
                "plugin {} needs exactly one label, the plugin name, as in {} \"name\" {{ ... }}",
                entry.key, entry.key
            ),
        ));
    };
    let block = plugins.child(entry)?;
    block.check_keys(&PLUGIN_BLOCK)?;
    let plugin = Plugin {
        plugin_type: entry.key,
        name,
        line: entry.line,
        data: block.section("plugin_data")?,
        file: plugins.file().to_owned(),
    };
    if block.entry("plugin_cmd").is_some() || block.entry("plugin_checksum").is_some() {
        return Err(plugin.unsupported(
            "external plugin binaries (plugin_cmd, plugin_checksum) are not supported; \
             twid runs built-in plugins only",
        ));
    }
    let enabled = block.optional("enabled", values::boolean)?.unwrap_or(true);
    Ok(enabled.then_some(plugin))
}

/// Returns the single plugin of `plugin_type`, or an error naming both lines when there are
/// several.
pub(crate) fn single<'p, 'a>(
    plugins: &'p [Plugin<'a>],
    plugin_type: &str,
) -> Result<Option<&'p Plugin<'a>>, ConfigError> {
    let mut matching = plugins
        .iter()
        .filter(|plugin| plugin.plugin_type == plugin_type);
    let first = matching.next();
    if let (Some(first), Some(second)) = (first, matching.next()) {
        return Err(ConfigError::Invalid {
            file: second.file.clone(),
            line: second.line,
            message: format!(
                "only one {plugin_type} plugin may be configured, but {plugin_type} {:?} \
                 (line {}) and {plugin_type} {:?} are both enabled",
                first.name, first.line, second.name
            ),
        });
    }
    Ok(first)
}

/// Schema of an empty `plugin_data`, for plugins without settings such as `join_token`.
pub(crate) const NO_SETTINGS: Schema = Schema {
    keys: &[],
    hints: &[],
    nested: None,
};
