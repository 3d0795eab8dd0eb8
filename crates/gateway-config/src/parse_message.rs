//! Rewording of the YAML parser's messages: drops what the error report already shows, names
//! types in YAML terms rather than Rust's, and adds the fix for common mistakes.

/// Integer fields that accept 0. Every other integer field must be at least 1, which
/// validation enforces.
const ZERO_ALLOWED: [&str; 1] = ["pool_max_idle_per_backend"];

/// Builds the message of a parse error at `field` from the parser's `message`, given the
/// configuration `text` and the 1-based line and column of the error.
pub(crate) fn explain(
    message: &str,
    field: &str,
    text: &str,
    position: Option<(usize, usize)>,
) -> String {
    let explained = explain_message(message, field, text, position);
    // An unclosed `{` or `[` turns the lines after it into values of the wrong type, or into
    // a syntax error, often lines later. Either way the bracket is the fault to name.
    match unclosed_flow(text) {
        Some((opened, swallowed)) if position.is_some_and(|(line, _)| line >= opened) => {
            format!(
                "{explained}: the `{{` or `[` opened on line {opened} is not closed before \
                 line {swallowed} starts a new field, so the lines after it were read as part \
                 of it: close it with `}}` or `]`"
            )
        }
        _ => explained,
    }
}

/// Builds the message of [`explain`] without the hint for an unclosed bracket.
fn explain_message(
    message: &str,
    field: &str,
    text: &str,
    position: Option<(usize, usize)>,
) -> String {
    let message = parser_message(message, field);
    if let Some(range) = integer_range_message(&message, field) {
        return range;
    }
    if let Some(number) = decimal_message(&message) {
        return number;
    }
    if let Some(reworded) = type_message(&message, field) {
        return reworded;
    }
    if is_tab_error(&message, text, position) {
        return format!("{message}: indent with spaces, not tabs");
    }
    if is_syntax_error(&message) {
        return format!("{message}: {SYNTAX_HINT}");
    }
    if let Some(key) = message
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return duplicate_message(&message, key, text, position);
    }
    if message.starts_with(MERGE_KEY) {
        return format!(
            "{MERGE_KEY}: YAML merge keys (`<<: *anchor` or `<<: {{...}}`) are not supported, \
             so write the merged fields out in this mapping instead. A value that repeats whole \
             can be written once with an anchor (`&name`) and reused with an alias (`*name`)"
        );
    }
    if message == MORE_THAN_ONE_DOCUMENT {
        return "the file contains more than one YAML document: put every section in one document, and remove the `---` lines after its start".to_owned();
    }
    message
}

/// Words the message of a repeated field. The parser points at the mapping that contains the
/// field, so the lines of each occurrence at that mapping's indentation are named.
fn duplicate_message(
    message: &str,
    key: &str,
    text: &str,
    position: Option<(usize, usize)>,
) -> String {
    let fix = format!("keep one `{key}:` and merge into it what the others set");
    let Some((line, column)) = position else {
        return format!("{message}: {fix}");
    };
    let indent = column.saturating_sub(1);
    let mut lines = Vec::new();
    for (index, content) in text.lines().enumerate().skip(line.saturating_sub(1)) {
        let trimmed = content.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let depth = content.len() - trimmed.len();
        if depth < indent && index + 1 > line {
            break;
        }
        let name = trimmed.strip_prefix("- ").filter(|_| depth + 2 == indent);
        let name = match name {
            Some(rest) => rest,
            None if depth == indent => trimmed,
            None => continue,
        };
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|&quote| {
                name.strip_prefix(quote)
                    .and_then(|rest| rest.strip_prefix(key))
                    .and_then(|rest| rest.strip_prefix(quote))
            })
            .or_else(|| name.strip_prefix(key));
        if unquoted.is_some_and(|rest| rest.trim_start().starts_with(':')) {
            lines.push((index + 1).to_string());
        }
    }
    if lines.len() >= 2 {
        format!("{message}, on lines {}: {fix}", lines.join(" and "))
    } else {
        format!("{message}: {fix}")
    }
}

/// Returns the part of a field path that the parser knew: `.` for the top level becomes
/// empty, and the `?` segments that stand for a field the parser had not read yet, as after
/// a syntax error, are dropped.
pub(crate) fn known_path(path: &str) -> String {
    let mut known = path;
    while let Some(parent) = known.strip_suffix(".?") {
        known = parent;
    }
    if known == "." || known == "?" {
        known = "";
    }
    known.to_owned()
}

/// The fix added to a YAML syntax error. The parser notices the fault where the structure
/// stops making sense, which may be lines after the mistake.
const SYNTAX_HINT: &str = "the YAML is not well formed here or on a line above: look for an \
     unclosed quote or bracket, a missing `:` after a key, or a line indented unlike its \
     neighbours";

/// Returns whether `message` is one of the YAML parser's syntax errors, which it words as
/// what it was doing when the structure broke.
pub(crate) fn is_syntax_error(message: &str) -> bool {
    [
        "while parsing",
        "while scanning",
        "did not find expected",
        "unexpected end of stream",
        "are not allowed in this context",
    ]
    .iter()
    .any(|phrase| message.contains(phrase))
}

/// The start of serde's message for a YAML merge key. serde_yaml_ng 0.10 does not apply
/// merge keys while it deserializes, so `<<` reaches the struct as a field name.
const MERGE_KEY: &str = "unknown field `<<`";

/// serde_yaml_ng's message for a file with a second document after a `---` line.
const MORE_THAN_ONE_DOCUMENT: &str =
    "deserializing from YAML containing more than one document is not supported";

/// Removes what the error report already shows from the YAML parser's message: the field
/// path it puts in front and the positions it puts at the end or before a comma.
fn parser_message(message: &str, field: &str) -> String {
    let mut text = strip_positions(message);
    if let Some((prefix, rest)) = text.split_once(": ") {
        let names_field = field == prefix
            || field.starts_with(&format!("{prefix}."))
            || field.starts_with(&format!("{prefix}["));
        if names_field {
            text = rest.to_owned();
        }
    }
    text
}

/// Removes each ` at line N column M` from `message`.
fn strip_positions(message: &str) -> String {
    const MARKER: &str = " at line ";
    let mut text = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARKER) {
        let tail = &rest[at + MARKER.len()..];
        let end = tail.find(',').unwrap_or(tail.len());
        let is_position = tail[..end]
            .split(" column ")
            .all(|n| n.parse::<usize>().is_ok());
        text.push_str(&rest[..at]);
        if is_position {
            rest = &tail[end..];
        } else {
            text.push_str(MARKER);
            rest = tail;
        }
    }
    text.push_str(rest);
    text
}

/// Rewrites serde's `invalid type: integer `-1`, expected u16` as the range the field
/// accepts, such as `must be between 1 and 65535, got -1`.
fn integer_range_message(message: &str, field: &str) -> Option<String> {
    let (found, expected) = message.rsplit_once(", expected ")?;
    let max = match expected {
        "u8" => u64::from(u8::MAX),
        "u16" => u64::from(u16::MAX),
        "u32" => u64::from(u32::MAX),
        "u64" | "usize" => u64::MAX,
        _ => return None,
    };
    let found = found
        .strip_prefix("invalid type: ")
        .or_else(|| found.strip_prefix("invalid value: "))
        .unwrap_or(found);
    let name = field.rsplit('.').next().unwrap_or(field);
    let min = u64::from(!ZERO_ALLOWED.contains(&name));
    // Validation limits these fields to a lower maximum than their type's.
    let max = match name {
        "weight" => u64::from(crate::validate::MAX_WEIGHT),
        "workers" => crate::validate::MAX_WORKERS as u64,
        "batch_size" => crate::validate::MAX_BATCH_SIZE as u64,
        "queue_capacity" => crate::validate::MAX_QUEUE_CAPACITY as u64,
        "max_rows" => crate::validate::MAX_LOG_ROWS,
        "pool_max_idle_per_backend" => crate::validate::MAX_POOL_IDLE_PER_BACKEND as u64,
        "ipv6_prefix" => u64::from(crate::validate::MAX_IPV6_PREFIX),
        _ => max,
    };

    let whole = if found.starts_with("integer ") {
        ""
    } else {
        "a whole number "
    };
    // serde reports an integer too large for i64 or u64 as "integer `N` as u128".
    let found = found.strip_prefix("integer ").unwrap_or(found);
    let found = found
        .strip_suffix(" as u128")
        .or_else(|| found.strip_suffix(" as i128"))
        .unwrap_or(found);
    let hint = leading_zero_hint(found);
    let found = yaml_value(found);
    Some(format!(
        "must be {whole}between {min} and {max}, got {found}{hint}"
    ))
}

/// Rewrites serde's `invalid type: string "fast", expected f64` for a field that takes a
/// decimal number, such as `rate_limiting.requests_per_second`. Validation checks the range.
fn decimal_message(message: &str) -> Option<String> {
    let found = message.strip_suffix(", expected f64")?;
    let found = found
        .strip_prefix("invalid type: ")
        .or_else(|| found.strip_prefix("invalid value: "))
        .unwrap_or(found);
    let hint = leading_zero_hint(found);
    let found = yaml_value(found);
    Some(format!(
        "must be a number, whole or decimal, such as 10 or 0.5, got {found}{hint}"
    ))
}

/// Returns a hint for a string of digits with a leading zero, such as `"010"`, which the
/// YAML parser reads as text rather than as a number.
fn leading_zero_hint(found: &str) -> String {
    let digits = found
        .strip_prefix("string \"")
        .and_then(|rest| rest.strip_suffix('"'))
        .filter(|digits| {
            digits.len() > 1
                && digits.starts_with('0')
                && digits.bytes().all(|b| b.is_ascii_digit())
        });
    match digits {
        Some(_) => ": a number with a leading zero is read as text, so write it without the zero"
            .to_owned(),
        None => String::new(),
    }
}

/// Rewrites serde's `invalid type: FOUND, expected WHAT` in YAML terms, as `must be WHAT, got
/// FOUND`. serde names a Rust struct where the file needs a mapping, such as `struct
/// ServerConfig`, and calls an empty value `unit value`.
fn type_message(message: &str, field: &str) -> Option<String> {
    let (found, expected) = message
        .strip_prefix("invalid type: ")?
        .rsplit_once(", expected ")?;
    let found = yaml_value(found);
    if expected.starts_with("struct ") && field.is_empty() {
        return Some(format!(
            "the file must be a mapping of sections, like `server:` and `routes:`, got {found}"
        ));
    }
    let expected = if expected.starts_with("struct ") {
        "a mapping of `name: value` fields"
    } else {
        match expected {
            "a boolean" => "true or false",
            "a map" => "a mapping",
            // An enum such as `rate_limiting.key` given a mapping or a sequence.
            "a YAML tag starting with '!'" => "a plain word",
            other => other,
        }
    };
    Some(format!("must be {expected}, got {found}"))
}

/// Rewrites serde's description of a value, such as `unit value` or `map`, in YAML terms.
fn yaml_value(found: &str) -> String {
    match found {
        "unit value" => "an empty value".to_owned(),
        "map" => "a mapping".to_owned(),
        "sequence" => "a sequence".to_owned(),
        _ => match found.strip_prefix("floating point ") {
            Some(number) => format!("the floating-point number {}", short_float(number)),
            None => found.to_owned(),
        },
    }
}

/// Returns `number`, a float as serde prints it in backticks, in exponent form when it has
/// more than 20 characters: serde writes `1e300` out in 301 digits.
fn short_float(number: &str) -> String {
    let digits = number.trim_matches('`');
    match digits.parse::<f64>() {
        Ok(value) if digits.len() > 20 => format!("`{value:e}`"),
        _ => number.to_owned(),
    }
}

/// Returns whether the parser rejected a tab, which YAML does not allow in indentation: its
/// message names a tab, or it stopped at a character it cannot read, and that character is a
/// tab.
fn is_tab_error(message: &str, text: &str, position: Option<(usize, usize)>) -> bool {
    if message.contains("tab character") {
        return true;
    }
    let found = position.and_then(|(line, column)| {
        let line_text = text.lines().nth(line.checked_sub(1)?)?;
        line_text.chars().nth(column.checked_sub(1)?)
    });
    message.contains("found character that cannot start any token") && found == Some('\t')
}

/// Returns the line of a `{` or `[` still open where a later line starts a new field at the
/// left margin, and that later line, both 1-based. Inside brackets YAML reads on across
/// lines, so `server: {port: 1` followed by `routes:` makes `routes` part of the port's value.
///
/// Quotes and comments are skipped. A bracket may be closed on a later, indented line.
fn unclosed_flow(text: &str) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    let mut opened = 0;
    for (index, line) in text.lines().enumerate() {
        let starts_field = line
            .chars()
            .next()
            .is_some_and(|first| !first.is_whitespace() && !"#}]-".contains(first));
        if depth > 0 && starts_field {
            return Some((opened, index + 1));
        }
        let mut quote = None;
        let mut previous = ' ';
        for character in line.chars() {
            match (quote, character) {
                (Some(open), _) if character == open => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(character),
                (None, '#') if previous.is_whitespace() => break,
                (None, '{' | '[') => {
                    if depth == 0 {
                        opened = index + 1;
                    }
                    depth += 1;
                }
                (None, '}' | ']') => depth = depth.saturating_sub(1),
                _ => {}
            }
            previous = character;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn position_before_comma_is_dropped() {
        let message = "server: found character that cannot start any token at line 2 column 1, while scanning for the next token";
        assert_eq!(
            parser_message(message, "server"),
            "found character that cannot start any token, while scanning for the next token"
        );
        assert_eq!(
            strip_positions("a value at line one"),
            "a value at line one"
        );
    }

    #[test]
    fn port_out_of_range_names_range() {
        for (message, got) in [
            ("invalid type: integer `-1`, expected u16", "`-1`"),
            ("invalid value: integer `70000`, expected u16", "`70000`"),
        ] {
            assert_eq!(
                explain(message, "server.port", "", None),
                format!("must be between 1 and 65535, got {got}")
            );
        }
    }

    #[test]
    fn integer_fields_name_their_range() {
        let cases = [
            ("routes[0].backends[0].weight", "u32", "between 1 and 10000"),
            ("rate_limiting.burst", "u32", "between 1 and 4294967295"),
            ("rate_limiting.ipv6_prefix", "u8", "between 1 and 128"),
            ("request_log.batch_size", "usize", "between 1 and 100000"),
            (
                "request_log.queue_capacity",
                "usize",
                "between 1 and 10000000",
            ),
            ("request_log.max_rows", "u64", "between 1 and 1000000000"),
            ("server.workers", "usize", "between 1 and 1024"),
            (
                "proxy.pool_max_idle_per_backend",
                "usize",
                "between 0 and 10000",
            ),
        ];
        for (field, kind, range) in cases {
            let message = format!("invalid type: integer `-1`, expected {kind}");
            assert_eq!(
                explain(&message, field, "", None),
                format!("must be {range}, got `-1`"),
                "{field}"
            );
        }
        assert_eq!(
            explain(
                "invalid type: string \"abc\", expected u16",
                "server.port",
                "",
                None
            ),
            "must be a whole number between 1 and 65535, got string \"abc\""
        );
    }

    #[test]
    fn decimal_fields_name_their_form() {
        let cases = [
            (
                "invalid type: string \"fast\", expected f64",
                "got string \"fast\"",
            ),
            (
                "invalid type: unit value, expected f64",
                "got an empty value",
            ),
            ("invalid type: map, expected f64", "got a mapping"),
        ];
        for (message, got) in cases {
            assert_eq!(
                explain(message, "rate_limiting.requests_per_second", "", None),
                format!("must be a number, whole or decimal, such as 10 or 0.5, {got}"),
                "{message}"
            );
        }
    }

    #[test]
    fn leading_zero_gets_hint() {
        assert_eq!(
            explain(
                "invalid type: string \"010\", expected u32",
                "rate_limiting.burst",
                "",
                None
            ),
            "must be a whole number between 1 and 4294967295, got string \"010\": a number \
             with a leading zero is read as text, so write it without the zero"
        );
    }

    #[test]
    fn huge_integer_drops_rust_type() {
        for (message, got) in [
            (
                "invalid value: integer `99999999999999999999999` as u128, expected usize",
                "`99999999999999999999999`",
            ),
            (
                "invalid value: integer `-99999999999999999999999` as i128, expected usize",
                "`-99999999999999999999999`",
            ),
        ] {
            assert_eq!(
                explain(message, "server.workers", "", None),
                format!("must be between 1 and 1024, got {got}")
            );
        }
    }

    #[test]
    fn huge_integer_names_maximum() {
        let cases = [
            (
                "request_log.batch_size",
                "`99999999999999999999`",
                "between 1 and 100000",
            ),
            (
                "proxy.pool_max_idle_per_backend",
                "`18446744073709551616`",
                "between 0 and 10000",
            ),
        ];
        for (field, got, range) in cases {
            let message = format!("invalid value: integer {got} as u128, expected usize");
            assert_eq!(
                explain(&message, field, "", None),
                format!("must be {range}, got {got}"),
                "{field}"
            );
        }
    }

    #[test]
    fn empty_and_decimal_numbers_read_in_yaml_terms() {
        assert_eq!(
            explain(
                "invalid type: unit value, expected u16",
                "server.port",
                "",
                None
            ),
            "must be a whole number between 1 and 65535, got an empty value"
        );
        assert_eq!(
            explain(
                "invalid type: floating point `1.5`, expected u32",
                "routes[0].backends[0].weight",
                "",
                None
            ),
            "must be a whole number between 1 and 10000, got the floating-point number `1.5`"
        );
    }

    #[test]
    fn type_errors_read_in_yaml_terms() {
        let cases = [
            (
                "invalid type: integer `5`, expected a sequence",
                "server.trusted_proxies",
                "must be a sequence, got integer `5`",
            ),
            (
                "invalid type: integer `5`, expected struct ServerConfig",
                "server",
                "must be a mapping of `name: value` fields, got integer `5`",
            ),
            (
                "invalid type: sequence, expected struct Config",
                "",
                "the file must be a mapping of sections, like `server:` and `routes:`, got a sequence",
            ),
            (
                "invalid type: map, expected a sequence",
                "routes",
                "must be a sequence, got a mapping",
            ),
            (
                "invalid type: unit value, expected a boolean",
                "rate_limiting.enabled",
                "must be true or false, got an empty value",
            ),
            (
                "invalid type: map, expected a YAML tag starting with '!'",
                "rate_limiting.key",
                "must be a plain word, got a mapping",
            ),
            (
                "invalid type: sequence, expected a string",
                "server.host",
                "must be a string, got a sequence",
            ),
        ];
        for (message, field, expected) in cases {
            assert_eq!(explain(message, field, "", None), expected, "{message}");
        }
    }

    #[test]
    fn other_messages_are_kept() {
        for message in [
            "missing field `url`",
            "unknown variant `foo`, expected `client_ip` or `global`",
        ] {
            assert_eq!(explain(message, "x", "", None), message);
        }
    }

    #[test]
    fn duplicate_field_names_lines() {
        let text = "server:\n  host: a\n  port: 1\n  port: 2\nroutes: []\nserver:\n  host: b\n";
        let reworded = explain("duplicate field `server`", "", text, Some((1, 1)));
        assert_eq!(
            reworded,
            "duplicate field `server`, on lines 1 and 6: keep one `server:` and merge into it \
             what the others set"
        );
        let nested = explain("duplicate field `port`", "server", text, Some((2, 3)));
        assert_eq!(
            nested,
            "duplicate field `port`, on lines 3 and 4: keep one `port:` and merge into it what \
             the others set"
        );
        let quoted = "server: {}\n\"server\": {}\n";
        let reworded = explain("duplicate field `server`", "", quoted, Some((1, 1)));
        assert!(reworded.contains("on lines 1 and 2"), "{reworded}");
        // A list item's mapping starts after its dash.
        let item = "routes:\n  - path: /a\n    path: /b\n";
        let reworded = explain("duplicate field `path`", "routes[0]", item, Some((2, 5)));
        assert!(reworded.contains("on lines 2 and 3"), "{reworded}");
    }

    #[test]
    fn merge_key_gets_fix() {
        let message = "unknown field `<<`, expected one of `enabled`, `path`, `interval`";
        let reworded = explain(message, "health_check.<<", "", None);
        assert!(
            reworded.starts_with("unknown field `<<`: YAML merge keys"),
            "{reworded}"
        );
        assert!(reworded.contains("are not supported"), "{reworded}");
        assert!(
            reworded.contains("write the merged fields out in this mapping"),
            "{reworded}"
        );
        assert!(!reworded.contains("expected one of"), "{reworded}");

        // Another unknown field keeps serde's list of the expected ones.
        let other = "unknown field `<<x`, expected one of `enabled`, `path`";
        assert_eq!(explain(other, "health_check.<<x", "", None), other);
    }

    #[test]
    fn second_document_gets_fix() {
        let reworded = explain(MORE_THAN_ONE_DOCUMENT, "", "", None);
        assert!(
            reworded.contains("more than one YAML document"),
            "{reworded}"
        );
        assert!(reworded.contains("remove the `---` lines"), "{reworded}");
    }

    #[test]
    fn unknown_path_segments_are_dropped() {
        assert_eq!(known_path("routes[0].?"), "routes[0]");
        assert_eq!(known_path("server.?.?"), "server");
        assert_eq!(known_path("?"), "");
        assert_eq!(known_path("."), "");
        assert_eq!(known_path("server.port"), "server.port");
    }

    #[test]
    fn tab_indentation_gets_hint() {
        let text = "server:\n\tport: 1\n";
        let message =
            "found character that cannot start any token, while scanning for the next token";
        assert!(
            explain(message, "server", text, Some((2, 1)))
                .ends_with("indent with spaces, not tabs")
        );
        // Without a tab on the line, the message gets the general hint for a syntax error.
        assert_eq!(
            explain(message, "server", "server:\n  x\n", Some((2, 3))),
            format!("{message}: {SYNTAX_HINT}")
        );
    }

    #[test]
    fn tab_elsewhere_on_line_is_not_blamed() {
        let text = "server:\n  host: `x`\t# note\n";
        let message =
            "found character that cannot start any token, while scanning for the next token";
        assert_eq!(
            explain(message, "", text, Some((2, 9))),
            format!("{message}: {SYNTAX_HINT}")
        );
    }

    #[test]
    fn unclosed_bracket_is_found() {
        let cases = [
            ("server: {port: 1\nroutes:\n", Some((1, 2))),
            ("a: [1,\n  2\nb: 3\n", Some((1, 3))),
            // Closed on a later, indented line, or at the margin: valid YAML.
            ("a: [1,\n  2]\nb: 3\n", None),
            ("routes: [\n  {path: /a},\n]\nb: 1\n", None),
            // Brackets in quotes and comments do not count.
            ("a: \"{\"\nb: '['\nc: 1 # {\nd: 2\n", None),
            ("a: {b: 1}\nc: 2\n", None),
        ];
        for (text, expected) in cases {
            assert_eq!(unclosed_flow(text), expected, "{text:?}");
        }
    }

    #[test]
    fn huge_float_is_shown_in_exponent_form() {
        let long = format!("`1{}`", "0".repeat(300));
        assert_eq!(short_float(&long), "`1e300`");
        assert_eq!(short_float("`2.5`"), "`2.5`");
        let message = format!("invalid type: floating point {long}, expected u32");
        assert_eq!(
            explain(&message, "rate_limiting.burst", "", None),
            "must be a whole number between 1 and 4294967295, got the floating-point number `1e300`"
        );
    }
}
