//! Environment variable substitution in the configuration text, like SPIRE's `-expandEnv`.

use std::env::VarError;

use crate::ConfigError;

/// Replaces `$NAME` and `${NAME}` in `text` with the value of the environment variable `NAME`,
/// looked up through `lookup` (`std::env::var` outside tests).
///
/// A name is an ASCII letter or `_` followed by letters, digits and `_`. `$$` produces a literal
/// `$`, and a `$` followed by anything else is kept as it is. The whole text is expanded,
/// comments included, as SPIRE does.
///
/// # Errors
/// Returns [`ConfigError::UnsetEnvVar`] for a variable that is not set, and
/// [`ConfigError::InvalidEnvReference`] for an unterminated or empty `${`, an invalid name or a
/// value that is not UTF-8.
pub(crate) fn expand(
    text: &str,
    file: &str,
    lookup: impl Fn(&str) -> Result<String, VarError>,
) -> Result<String, ConfigError> {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    let mut line = 1;
    // Limit: a substituted value that contains newlines shifts the line numbers that later
    // parse and validation errors report, because they count lines of the expanded text.
    while let Some(dollar) = rest.find('$') {
        let (before, from_dollar) = rest.split_at(dollar);
        line += before.matches('\n').count();
        output.push_str(before);
        let after_dollar = &from_dollar[1..];

        if let Some(after) = after_dollar.strip_prefix('$') {
            output.push('$');
            rest = after;
        } else if let Some(braced) = after_dollar.strip_prefix('{') {
            let Some(close) = braced.find('}') else {
                return Err(invalid_reference(
                    file,
                    line,
                    "\"${\" without a closing \"}\"",
                ));
            };
            let name = &braced[..close];
            if name.is_empty() || name.len() != name_len(name) {
                let reason = format!("\"${{{name}}}\" is not a valid variable name");
                return Err(invalid_reference(file, line, &reason));
            }
            output.push_str(&value_of(name, file, line, &lookup)?);
            rest = &braced[close + 1..];
        } else {
            let len = name_len(after_dollar);
            if len == 0 {
                output.push('$');
            } else {
                output.push_str(&value_of(&after_dollar[..len], file, line, &lookup)?);
            }
            rest = &after_dollar[len..];
        }
    }
    output.push_str(rest);
    Ok(output)
}

/// Returns the length of the variable name at the start of `text`, 0 if there is none.
fn name_len(text: &str) -> usize {
    let starts_name = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_name {
        return 0;
    }
    text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len())
}

fn value_of(
    name: &str,
    file: &str,
    line: usize,
    lookup: &impl Fn(&str) -> Result<String, VarError>,
) -> Result<String, ConfigError> {
    lookup(name).map_err(|error| match error {
        VarError::NotPresent => ConfigError::UnsetEnvVar {
            file: file.to_owned(),
            line,
            name: name.to_owned(),
        },
        VarError::NotUnicode(_) => {
            let reason = format!("the value of environment variable {name} is not valid UTF-8");
            invalid_reference(file, line, &reason)
        }
    })
}

fn invalid_reference(file: &str, line: usize, reason: &str) -> ConfigError {
    ConfigError::InvalidEnvReference {
        file: file.to_owned(),
        line,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Result<String, VarError> {
        match name {
            "DOMAIN" => Ok("example.org".to_owned()),
            "PORT" => Ok("8081".to_owned()),
            "EMPTY" => Ok(String::new()),
            "_under_9" => Ok("u".to_owned()),
            "BINARY" => Err(VarError::NotUnicode(std::ffi::OsString::from("x"))),
            _ => Err(VarError::NotPresent),
        }
    }

    fn expand_ok(text: &str) -> String {
        expand(text, "t.conf", lookup).expect(text)
    }

    #[test]
    fn expand_forms_table() {
        let cases = [
            ("no references", "no references"),
            ("$DOMAIN", "example.org"),
            ("${DOMAIN}", "example.org"),
            ("td = \"$DOMAIN\"", "td = \"example.org\""),
            ("${DOMAIN}x", "example.orgx"),
            ("$DOMAIN.x", "example.org.x"),
            ("$PORT$PORT", "80818081"),
            ("a${EMPTY}b", "ab"),
            ("$_under_9!", "u!"),
            ("cost $$5", "cost $5"),
            ("$$DOMAIN", "$DOMAIN"),
            ("end $", "end $"),
            ("$ space", "$ space"),
            ("$1", "$1"),
            ("unicode é $DOMAIN é", "unicode é example.org é"),
        ];
        for (input, expected) in cases {
            assert_eq!(expand_ok(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn expand_unset_names_variable_and_line() {
        let error = expand("a = 1\nb = \"$MISSING_VAR\"\n", "x.conf", lookup).unwrap_err();
        assert_eq!(
            error.to_string(),
            "x.conf:2: environment variable MISSING_VAR is not set (referenced as $MISSING_VAR)"
        );
    }

    #[test]
    fn expand_unset_braced() {
        let error = expand("\n\n${NOPE}", "x.conf", lookup).unwrap_err();
        assert!(matches!(
            error,
            ConfigError::UnsetEnvVar { line: 3, ref name, .. } if name == "NOPE"
        ));
    }

    #[test]
    fn expand_unterminated_brace() {
        let error = expand("x = \"${DOMAIN\"", "x.conf", lookup).unwrap_err();
        assert_eq!(
            error.to_string(),
            "x.conf:1: invalid environment variable reference: \"${\" without a closing \"}\""
        );
    }

    #[test]
    fn expand_non_utf8_value() {
        let error = expand("x = \"$BINARY\"", "x.conf", lookup).unwrap_err();
        assert_eq!(
            error.to_string(),
            "x.conf:1: invalid environment variable reference: \
             the value of environment variable BINARY is not valid UTF-8"
        );
    }

    #[test]
    fn expand_invalid_braced_name() {
        for input in ["${}", "${1A}", "${A-B}"] {
            let error = expand(input, "x.conf", lookup).unwrap_err();
            assert!(
                matches!(error, ConfigError::InvalidEnvReference { .. }),
                "{input}: {error}"
            );
        }
    }
}
