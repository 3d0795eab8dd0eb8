//! The gateway's configuration file: its types, defaults and validation.
//!
//! The file is YAML. Loading it runs in two steps: serde reads the text into [`Config`], rejecting
//! unknown fields and reporting the first type error with its field path and line, then
//! [`Config::validate`] checks the values and collects every problem with its path and the fix.
//! No I/O happens here besides reading the file, so every other crate can trust a loaded
//! [`Config`].
//!
//! # Layout
//!
//! - [`model`]: the serde types of every section, with their defaults.
//! - `duration`: durations written as `30s`, `500ms` or `1m`.
//! - `route_path`: the route path syntax (`:name` for one segment, `*name` for the rest).
//! - `validate`: the checks that run after parsing.
//! - [`error`]: [`ConfigError`] and the [`Problem`] list it carries.

mod duration;
pub mod error;
pub mod model;
mod route_path;
mod validate;

pub use error::{ConfigError, Problem};
pub use model::*;
pub use route_path::{RoutePattern, route_patterns};

use std::path::Path;

impl Config {
    /// Reads, parses and validates the configuration file at `path`.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Parse`] when it
    /// is not valid YAML for this format, and [`ConfigError::Invalid`] with every problem found
    /// when values are out of range or inconsistent.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Config::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `file` names its origin in error messages.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Parse`] or [`ConfigError::Invalid`] as [`Config::load`] does.
    pub fn from_yaml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let field = error.path().to_string();
            let field = if field == "." { String::new() } else { field };
            let location = error.inner().location();
            let message = parser_message(&error.inner().to_string(), &field);
            ConfigError::Parse {
                file: file.to_owned(),
                field,
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message,
            }
        })?;

        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                file: file.to_owned(),
                problems,
            })
        }
    }
}

/// Removes what the error report already shows from the YAML parser's message: the field
/// path it puts in front and the position it puts at the end.
fn parser_message(message: &str, field: &str) -> String {
    let mut text = message;
    if let Some(at) = text.rfind(" at line ") {
        let tail = &text[at + " at line ".len()..];
        if tail.split(" column ").all(|n| n.parse::<usize>().is_ok()) {
            text = &text[..at];
        }
    }
    if let Some((prefix, rest)) = text.split_once(": ") {
        let names_field = field == prefix
            || field.starts_with(&format!("{prefix}."))
            || field.starts_with(&format!("{prefix}["));
        if names_field {
            text = rest;
        }
    }
    text.to_owned()
}

#[cfg(test)]
mod tests {
    use super::parser_message;

    #[test]
    fn parser_message_drops_path_and_position() {
        let message = "server: unknown field `hots`, expected `host` at line 2 column 3";
        assert_eq!(
            parser_message(message, "server.hots"),
            "unknown field `hots`, expected `host`"
        );
        let message =
            "routes[1].backends[0].weight: invalid type: integer `-1` at line 5 column 52";
        assert_eq!(
            parser_message(message, "routes[1].backends[0].weight"),
            "invalid type: integer `-1`"
        );
        assert_eq!(parser_message("invalid type: map", ""), "invalid type: map");
    }
}
