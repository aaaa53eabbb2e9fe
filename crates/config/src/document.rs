//! A view of a parsed HCL file as nested sections of keys, each with its line number, so that
//! every error can name the file, line, key and value.
//!
//! A section is either a block (`ca_subject { ... }`) or an object value
//! (`ca_subject = { ... }`); SPIRE files use both forms and both mean the same here.

use std::ops::Range;

use hcl_edit::Span;
use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{Block, Body, Structure};

use crate::ConfigError;

/// Keys whose values are never printed in errors: join tokens, and connection strings that may
/// carry a database password.
const SECRET_KEYS: &[&str] = &["join_token", "connection_string", "ro_connection_string"];

/// Values longer than this many characters are shortened in error messages.
const MAX_SHOWN_VALUE_CHARS: usize = 60;

/// The text of one configuration file and its line index.
pub(crate) struct Source<'a> {
    pub(crate) file: &'a str,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(index, _)| index + 1))
            .collect();
        Self {
            file,
            text,
            line_starts,
        }
    }

    /// Parses the text as an HCL body.
    pub(crate) fn parse(&self) -> Result<Body, ConfigError> {
        hcl_edit::parser::parse_body(self.text).map_err(|error| ConfigError::Syntax {
            file: self.file.to_owned(),
            line: error.location().line(),
            column: error.location().column(),
            message: syntax_message(&error),
        })
    }

    /// Returns the one-based line on which `span` starts, or 1 when the span is unknown.
    fn line(&self, span: Option<Range<usize>>) -> usize {
        let offset = span.map_or(0, |span| span.start);
        self.line_starts.partition_point(|&start| start <= offset)
    }

    /// Returns the source text of a value for an error message, on one line and shortened.
    fn shown_value(&self, key: &str, expr: &Expression) -> String {
        if SECRET_KEYS.contains(&key) {
            return "<redacted>".to_owned();
        }
        let raw = expr
            .span()
            .and_then(|span| self.text.get(span))
            .unwrap_or("<value>");
        let one_line = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        if one_line.chars().count() <= MAX_SHOWN_VALUE_CHARS {
            return one_line;
        }
        let shortened: String = one_line.chars().take(MAX_SHOWN_VALUE_CHARS).collect();
        format!("{shortened}...")
    }
}

/// One key in a section: an attribute, or a block with its labels.
pub(crate) struct Entry<'a> {
    pub(crate) key: &'a str,
    pub(crate) line: usize,
    pub(crate) node: Node<'a>,
}

pub(crate) enum Node<'a> {
    Value(&'a Expression),
    Block(&'a Block),
}

impl<'a> Entry<'a> {
    /// Returns the block labels, empty for attributes.
    pub(crate) fn labels(&self) -> Vec<&'a str> {
        match self.node {
            Node::Value(_) => Vec::new(),
            Node::Block(block) => block.labels.iter().map(|label| label.as_str()).collect(),
        }
    }
}

/// The allowed keys of a section, and rejected keys that get a specific hint in the error.
pub(crate) struct Schema {
    pub(crate) keys: &'static [&'static str],
    /// Rejected keys with their hint. An empty hint marks a SPIRE setting that twid lacks.
    pub(crate) hints: &'static [(&'static str, &'static str)],
    /// A block name and its keys, for a key written one level too high: `trust_domain` at the
    /// top level gets the hint to move it into `server { ... }`.
    pub(crate) nested: Option<(&'static str, &'static [&'static str])>,
}

/// The entries of one block or object, with its dotted path (`server.ca_subject`) for messages.
pub(crate) struct Section<'a> {
    src: &'a Source<'a>,
    pub(crate) path: String,
    pub(crate) line: usize,
    pub(crate) entries: Vec<Entry<'a>>,
}

impl<'a> Section<'a> {
    /// Returns the top level of a file.
    pub(crate) fn root(src: &'a Source<'a>, body: &'a Body) -> Self {
        Self {
            src,
            path: String::new(),
            line: 1,
            entries: body_entries(src, body),
        }
    }

    pub(crate) fn file(&self) -> &str {
        self.src.file
    }

    /// Returns the first entry named `key`.
    pub(crate) fn entry(&self, key: &str) -> Option<&Entry<'a>> {
        self.entries.iter().find(|entry| entry.key == key)
    }

    /// Rejects keys outside `schema` and keys that appear twice. Labeled blocks count as
    /// duplicates only when their labels are equal too.
    pub(crate) fn check_keys(&self, schema: &Schema) -> Result<(), ConfigError> {
        for (index, entry) in self.entries.iter().enumerate() {
            if !schema.keys.contains(&entry.key) {
                return Err(self.unknown_key(entry, schema));
            }
            let labels = entry.labels();
            let first = self.entries[..index]
                .iter()
                .find(|earlier| earlier.key == entry.key && earlier.labels() == labels);
            if let Some(first) = first {
                return Err(ConfigError::DuplicateKey {
                    file: self.file().to_owned(),
                    line: entry.line,
                    key: display_key(entry.key, &labels),
                    block: self.path.clone(),
                    first_line: first.line,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn unknown_key(&self, entry: &Entry<'_>, schema: &Schema) -> ConfigError {
        let listed_hint =
            schema
                .hints
                .iter()
                .find(|(key, _)| *key == entry.key)
                .map(|(_, hint)| {
                    if hint.is_empty() {
                        "this SPIRE setting is not supported by twid".to_owned()
                    } else {
                        (*hint).to_owned()
                    }
                });
        let nested_hint = schema
            .nested
            .filter(|(_, keys)| keys.contains(&entry.key))
            .map(|(block, _)| format!("it belongs inside the {block} {{ ... }} block"));
        let hint = listed_hint.or(nested_hint).or_else(|| {
            closest_key(entry.key, schema.keys).map(|known| format!("did you mean {known:?}?"))
        });
        ConfigError::UnknownKey {
            file: self.file().to_owned(),
            line: entry.line,
            key: entry.key.to_owned(),
            block: self.path.clone(),
            hint,
        }
    }

    /// Converts the value of `key` with `convert`, which returns the reason on failure.
    /// Returns `None` when the key is absent.
    pub(crate) fn optional<T>(
        &self,
        key: &str,
        convert: impl FnOnce(&Expression) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(entry) = self.entry(key) else {
            return Ok(None);
        };
        let Node::Value(expr) = entry.node else {
            return Err(self.invalid(
                entry.line,
                format!(
                    "{key} in block {:?} is a block, expected `{key} = value`",
                    self.path
                ),
            ));
        };
        convert(expr)
            .map(Some)
            .map_err(|reason| self.invalid_value(key, reason))
    }

    /// Like [`Section::optional`], but a missing key is an error.
    pub(crate) fn required<T>(
        &self,
        key: &str,
        convert: impl FnOnce(&Expression) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.optional(key, convert)?
            .ok_or_else(|| self.missing_key(key))
    }

    /// Returns the nested section `key`, written as a block without labels or as an object.
    pub(crate) fn section(&self, key: &str) -> Result<Option<Section<'a>>, ConfigError> {
        self.entry(key).map(|entry| self.child(entry)).transpose()
    }

    /// Returns the section inside `entry`, which must be a block or an object value.
    pub(crate) fn child(&self, entry: &Entry<'a>) -> Result<Section<'a>, ConfigError> {
        let mut path = if self.path.is_empty() {
            entry.key.to_owned()
        } else {
            format!("{}.{}", self.path, entry.key)
        };
        match entry.node {
            Node::Block(block) => {
                for label in &block.labels {
                    path.push('.');
                    path.push_str(label.as_str());
                }
                Ok(Section {
                    src: self.src,
                    path,
                    line: entry.line,
                    entries: body_entries(self.src, &block.body),
                })
            }
            Node::Value(Expression::Object(object)) => {
                let mut entries = Vec::with_capacity(object.len());
                for (key, value) in object.iter() {
                    let key_text = match key {
                        ObjectKey::Ident(ident) => ident.as_str(),
                        ObjectKey::Expression(Expression::String(text)) => text.as_str(),
                        ObjectKey::Expression(_) => {
                            return Err(self.invalid(
                                self.src.line(key.span()),
                                format!("object keys in {path:?} must be names or quoted strings"),
                            ));
                        }
                    };
                    entries.push(Entry {
                        key: key_text,
                        line: self.src.line(key.span()),
                        node: Node::Value(value.expr()),
                    });
                }
                Ok(Section {
                    src: self.src,
                    path,
                    line: entry.line,
                    entries,
                })
            }
            Node::Value(expr) => Err(ConfigError::InvalidValue {
                file: self.file().to_owned(),
                line: entry.line,
                key: entry.key.to_owned(),
                value: self.src.shown_value(entry.key, expr),
                reason: format!("expected a block, such as {} {{ ... }}", entry.key),
            }),
        }
    }

    /// Builds the error for a present key whose value is unacceptable.
    pub(crate) fn invalid_value(&self, key: &str, reason: String) -> ConfigError {
        let (line, value) = match self.entry(key) {
            Some(Entry {
                line,
                node: Node::Value(expr),
                ..
            }) => (*line, self.src.shown_value(key, expr)),
            Some(entry) => (entry.line, "{ ... }".to_owned()),
            None => (self.line, "<unset>".to_owned()),
        };
        ConfigError::InvalidValue {
            file: self.file().to_owned(),
            line,
            key: key.to_owned(),
            value,
            reason,
        }
    }

    pub(crate) fn missing_key(&self, key: &str) -> ConfigError {
        ConfigError::MissingKey {
            file: self.file().to_owned(),
            line: self.line,
            key: key.to_owned(),
            block: self.path.clone(),
        }
    }

    pub(crate) fn invalid(&self, line: usize, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file().to_owned(),
            line,
            message,
        }
    }
}

/// Returns the parser's message, naming the key for a repeated attribute, which the parser
/// reports without it.
fn syntax_message(error: &hcl_edit::parser::Error) -> String {
    let message = error.message();
    if !message.ends_with("found redefined attribute") {
        return message.to_owned();
    }
    let column = error.location().column().saturating_sub(1);
    let key = error
        .line()
        .get(column..)
        .and_then(|rest| rest.split(|c: char| c == '=' || c.is_whitespace()).next())
        .unwrap_or_default();
    format!("duplicate key {key:?}; each key may appear once per block")
}

fn body_entries<'a>(src: &Source<'_>, body: &'a Body) -> Vec<Entry<'a>> {
    body.iter()
        .map(|structure| match structure {
            Structure::Attribute(attribute) => Entry {
                key: attribute.key.as_str(),
                line: src.line(attribute.span()),
                node: Node::Value(&attribute.value),
            },
            Structure::Block(block) => Entry {
                key: block.ident.as_str(),
                line: src.line(block.span()),
                node: Node::Block(block),
            },
        })
        .collect()
}

/// Formats `"bind_port"`, or `KeyManager "disk"` for a labeled block.
fn display_key(key: &str, labels: &[&str]) -> String {
    if labels.is_empty() {
        return format!("{key:?}");
    }
    labels
        .iter()
        .fold(key.to_owned(), |text, label| format!("{text} {label:?}"))
}

/// Returns the known key nearest to `key` when it is at most two edits away.
fn closest_key(key: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, a_char) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != *b_char);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_table() {
        let cases = [
            ("", "", 0),
            ("abc", "abc", 0),
            ("trust_domian", "trust_domain", 2),
            ("bind_prt", "bind_port", 1),
            ("", "abc", 3),
            ("kitten", "sitting", 3),
        ];
        for (a, b, expected) in cases {
            assert_eq!(edit_distance(a, b), expected, "{a} / {b}");
        }
    }

    #[test]
    fn closest_key_limit() {
        let known = &["trust_domain", "bind_port", "data_dir"];
        assert_eq!(closest_key("trust_domian", known), Some("trust_domain"));
        assert_eq!(closest_key("data_dri", known), Some("data_dir"));
        assert_eq!(closest_key("completely_else", known), None);
    }

    #[test]
    fn line_numbers_follow_newlines() {
        let source = Source::new("f.conf", "a = 1\n\nb {\n  c = \"x\"\n}\n");
        let body = source.parse().unwrap();
        let root = Section::root(&source, &body);
        assert_eq!(root.entry("a").unwrap().line, 1);
        assert_eq!(root.entry("b").unwrap().line, 3);
        let inner = root.section("b").unwrap().unwrap();
        assert_eq!(inner.entry("c").unwrap().line, 4);
        assert_eq!(inner.path, "b");
    }

    #[test]
    fn shown_value_is_source_text() {
        let source = Source::new(
            "f.conf",
            "port = \"abc\"\nn = 42\nlist = [\n  \"a\",\n  \"b\"]\n",
        );
        let body = source.parse().unwrap();
        let root = Section::root(&source, &body);
        let error = root.invalid_value("port", "bad".to_owned());
        assert_eq!(error.to_string(), "f.conf:1: port = \"abc\": bad");
        let error = root.invalid_value("n", "bad".to_owned());
        assert_eq!(error.to_string(), "f.conf:2: n = 42: bad");
        let error = root.invalid_value("list", "bad".to_owned());
        assert_eq!(error.to_string(), "f.conf:3: list = [ \"a\", \"b\"]: bad");
    }

    #[test]
    fn shown_value_redacts_secrets() {
        let source = Source::new("f.conf", "join_token = \"s3cret-token\"\n");
        let body = source.parse().unwrap();
        let root = Section::root(&source, &body);
        let message = root
            .invalid_value("join_token", "bad".to_owned())
            .to_string();
        assert_eq!(message, "f.conf:1: join_token = <redacted>: bad");
        assert!(!message.contains("s3cret"));
    }

    #[test]
    fn shown_value_shortens_long_values() {
        let long = "x".repeat(200);
        let text = format!("k = \"{long}\"\n");
        let source = Source::new("f.conf", &text);
        let body = source.parse().unwrap();
        let root = Section::root(&source, &body);
        let message = root.invalid_value("k", "bad".to_owned()).to_string();
        assert!(message.contains("..."), "{message}");
        assert!(message.len() < 120, "{message}");
    }
}
