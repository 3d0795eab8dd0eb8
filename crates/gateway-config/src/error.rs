//! Errors from loading a configuration file.

use std::fmt;

/// A failure to load a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {file}")]
    Read {
        /// Path of the file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file is not valid YAML, or a field has the wrong type or an unknown name.
    #[error("{file}{}: {}{message}", location(*line, *column), field_prefix(field))]
    Parse {
        /// Path of the file.
        file: String,
        /// Path of the field, such as `routes[0].backends[1].weight`; empty at the top level.
        field: String,
        /// Line of the error, counted from 1, when the parser reports one.
        line: Option<usize>,
        /// Column of the error, counted from 1, when the parser reports one.
        column: Option<usize>,
        /// The parser's message.
        message: String,
    },

    /// The file parsed, but some values are invalid.
    #[error("{file}: invalid configuration:\n{}", ProblemList(problems))]
    Invalid {
        /// Path of the file.
        file: String,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

/// One invalid value, or one without effect: where it is and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the field, such as `routes[0].backends[1].weight`.
    pub field: String,
    /// The reason the value is invalid or has no effect, and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {problem}")?;
        }
        Ok(())
    }
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(":{line}:{column}"),
        (Some(line), None) => format!(":{line}"),
        _ => String::new(),
    }
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}
