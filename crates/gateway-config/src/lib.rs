//! The gateway's configuration file: its types, defaults and validation.
//!
//! The file is YAML, and loading it runs in two steps. First serde reads the text into
//! [`Config`], rejecting unknown fields and reporting the first type error with its field path
//! and line. Then [`Config::validate`] checks the values and collects every problem with its
//! path and the fix.
//! No I/O happens here besides reading the file, so every other crate can trust a loaded
//! [`Config`].
//!
//! # Layout
//!
//! - [`model`]: the serde types of every section, with their defaults.
//! - `duration`: durations written as `30s`, `500ms` or `1m`.
//! - `parse_message`: the parser's messages, reworded with the fix for common mistakes.
//! - `method`: the method names that method lists take, and the messages for the others.
//! - `route_path`: the route path syntax (`:name` for one segment, `*name` for the rest), and
//!   the paths the gateway serves itself.
//! - `route_conflict`: pairs of routes that the router cannot order.
//! - `trusted_proxies`: the networks of `server.trusted_proxies`.
//! - `origin`: the forms of `cors.allowed_origins` entries that a browser can send.
//! - `validate`: the checks that run after parsing.
//! - `warnings`: settings that are valid but have no effect, which [`Config::warnings`] lists.
//! - [`error`]: [`ConfigError`] and the [`Problem`] list it carries.

#![warn(missing_docs)]

mod duration;
pub mod error;
mod method;
pub mod model;
mod networks;
mod origin;
mod parse_message;
mod route_conflict;
mod route_path;
mod validate;
mod warnings;

pub use error::{ConfigError, Problem};
pub use model::*;
pub use networks::canonical as canonical_network;
pub use route_path::{RoutePattern, dot_segment, is_admin_path, match_form, route_patterns};
pub use validate::backend_key;

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
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|error| {
            // The position of the first byte that is not UTF-8, counted as a text editor would.
            let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&byte| byte == b'\n').count() + 1;
            let line_start = valid
                .iter()
                .rposition(|&byte| byte == b'\n')
                .map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count()
                + 1;
            ConfigError::Parse {
                file: path.display().to_string(),
                field: String::new(),
                line: Some(line),
                column: Some(column),
                message: "the file is not UTF-8 text: save it as UTF-8".to_owned(),
            }
        })?;
        Config::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `file` names its origin in error messages. A
    /// UTF-8 byte order mark at the start is skipped.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Parse`] or [`ConfigError::Invalid`] as [`Config::load`] does.
    pub fn from_yaml(text: &str, file: &str) -> Result<Config, ConfigError> {
        // YAML allows a byte order mark at the start, and some Windows editors save one, but
        // serde_yaml_ng 0.10 then fails with "more than one document is not supported".
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let raw = error.inner().to_string();
            // After a syntax error the parser's path is where it stopped making sense of the
            // structure, often a field before the fault, so none is shown.
            let field = if parse_message::is_syntax_error(&raw) {
                String::new()
            } else {
                parse_message::known_path(&error.path().to_string())
            };
            let location = error.inner().location();
            let message = parse_message::explain(
                &raw,
                &field,
                text,
                location.as_ref().map(|l| (l.line(), l.column())),
            );
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
