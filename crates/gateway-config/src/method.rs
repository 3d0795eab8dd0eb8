//! The method names that `routes[].methods` and CORS `allowed_methods` accept, and the
//! messages for those they reject.

use http::Method;
use serde::{Deserialize, Deserializer, de};

/// The methods of RFC 9110 and PATCH (RFC 5789). Clients send them in capitals, so another
/// spelling of one of them in a method list is an error.
pub(crate) const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

/// Maximum length of a method name, in bytes. Methods in use, such as WebDAV's
/// VERSION-CONTROL (15 bytes), are far shorter, so a longer name is more likely a pasted value
/// than a method.
pub(crate) const MAX_METHOD_LENGTH: usize = 32;

/// The characters that RFC 9110 (section 5.6.2, `tchar`) allows in a method besides ASCII
/// letters and digits.
const METHOD_PUNCTUATION: &[u8] = b"!#$%&'*+-.^_`|~";

/// The form of method that the gateway takes, quoted by the messages for the others.
const METHOD_FORM: &str = "a method must start with a letter and contain only letters, \
                           digits, '-' and '_', like GET, PURGE or VERSION-CONTROL";

/// The words that YAML reads as a null or a boolean when unquoted, in lower case, each with
/// what YAML reads it as. YAML 1.2's core schema has `~`, `null`, `true` and `false` (in
/// lower case, capitalised or in capitals), and YAML 1.1 adds `yes`, `no`, `on`, `off`, `y`
/// and `n` as booleans. serde_yaml_ng 0.10 hands each of them to a string field as the text
/// written, so without this check `[GET, ~]` would list a method named `~`.
const YAML_WORDS: [(&str, &str); 10] = [
    ("~", "YAML reads ~ as a null value"),
    ("null", "YAML reads the word null as a null value"),
    ("true", "YAML reads the word true as a boolean"),
    ("false", "YAML reads the word false as a boolean"),
    ("yes", "YAML 1.1 reads the word yes as a boolean"),
    ("no", "YAML 1.1 reads the word no as a boolean"),
    ("on", "YAML 1.1 reads the word on as a boolean"),
    ("off", "YAML 1.1 reads the word off as a boolean"),
    ("y", "YAML 1.1 reads the word y as a boolean"),
    ("n", "YAML 1.1 reads the word n as a boolean"),
];

/// Checks that `method` can stand in a method list, and returns the message with the fix
/// when it cannot.
///
/// A method has at most [`MAX_METHOD_LENGTH`] bytes and the form that methods in use have: a
/// letter, then letters, digits, `-` and `_`, like PURGE or UPnP's M-SEARCH. That form narrows
/// the tokens of RFC 9110 (section 9.1) and rules out `~` and what YAML reads as a number
/// (`12`, `0x10`, `.inf`). YAML's null and boolean words are rejected in any case, and so is a
/// standard method in another case (`get`), because methods are case-sensitive and clients
/// send those in capitals.
pub(crate) fn check_method(method: &str) -> Result<(), String> {
    if method.is_empty() {
        return Err("the method is empty: write a method name, like GET or PURGE".to_owned());
    }
    let lowercase = method.to_ascii_lowercase();
    if let Some((_, reading)) = YAML_WORDS.iter().find(|(word, _)| *word == lowercase) {
        return Err(format!(
            "invalid HTTP method {method:?}: {reading}, and no HTTP method has that name: \
             remove it, or write the method you meant, like GET or PURGE"
        ));
    }
    if let Some(invalid) = method.chars().find(|&c| !is_token_char(c)) {
        let fix = match split_list(method) {
            Some(items) => format!(
                "list each method as an item of its own, like {}",
                yaml_list(items.iter().map(String::as_str))
            ),
            None => format!("{invalid:?} cannot appear in any HTTP method, and {METHOD_FORM}"),
        };
        return Err(format!("invalid HTTP method {method:?}: {fix}"));
    }
    if method.len() > MAX_METHOD_LENGTH {
        return Err(format!(
            "invalid HTTP method {method:?}: it is {} bytes long, and a method may have at \
             most {MAX_METHOD_LENGTH} bytes: write the method name alone, like PURGE",
            method.len()
        ));
    }
    let capitals = method.to_ascii_uppercase();
    if capitals != method && STANDARD_METHODS.contains(&capitals.as_str()) {
        return Err(case_message(method, &capitals));
    }
    if !is_method_name(method) {
        return Err(format!("invalid HTTP method {method:?}: {METHOD_FORM}"));
    }
    debug_assert!(Method::from_bytes(method.as_bytes()).is_ok());
    Ok(())
}

/// Returns the message for `method`, a standard method written in another case than its
/// `capitals`.
fn case_message(method: &str, capitals: &str) -> String {
    if capitals == "PATCH" {
        // Browsers put a method in capitals only when it is DELETE, GET, HEAD, OPTIONS, POST
        // or PUT in another case (Fetch standard, "normalize a method", which XMLHttpRequest's
        // open() applies too), so `fetch(url, {method: "patch"})` sends `patch`.
        format!(
            "{method:?} is not PATCH, because methods are case-sensitive. Clients send the \
             standard methods in capitals, except browsers, which send PATCH in the case the \
             page wrote it, because fetch() and XMLHttpRequest put only DELETE, GET, HEAD, \
             OPTIONS, POST and PUT in capitals: write it in capitals, \"PATCH\", and change a \
             page that sends {method:?} to send \"PATCH\""
        )
    } else {
        format!(
            "{method:?} is not {capitals}, because methods are case-sensitive, and clients \
             send the standard methods in capitals, so {method:?} would match only requests \
             that send it as written: write it in capitals, {capitals:?}"
        )
    }
}

/// Returns the methods of `text` when it is a list written as one item, such as
/// `"GET, POST"`, with standard methods in capitals, or `None`. A space alone separates a
/// list only of standard methods, so that "PUR GE" is taken for one mistyped method.
fn split_list(text: &str) -> Option<Vec<String>> {
    let items: Vec<&str> = text
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|item| !item.is_empty())
        .collect();
    let standard = |item: &&str| STANDARD_METHODS.contains(&item.to_ascii_uppercase().as_str());
    let is_list = items.len() > 1
        && items.iter().all(|item| is_list_item(item))
        && (text.contains(',') || items.iter().all(standard));
    if !is_list {
        return None;
    }
    let methods = items
        .into_iter()
        .map(|item| {
            if standard(&item) {
                item.to_ascii_uppercase()
            } else {
                item.to_owned()
            }
        })
        .collect();
    Some(methods)
}

/// Returns whether `item` of a list written as one item is a valid method or a standard
/// method in another case, which the suggested list writes in capitals.
fn is_list_item(item: &str) -> bool {
    STANDARD_METHODS.contains(&item.to_ascii_uppercase().as_str()) || check_method(item).is_ok()
}

/// Returns whether `text` has the form that the gateway takes for a method: an ASCII letter,
/// then ASCII letters, digits, `-` and `_`.
fn is_method_name(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// Returns whether RFC 9110 (section 5.6.2) allows `c` in a token, such as a method.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || (c.is_ascii() && METHOD_PUNCTUATION.contains(&(c as u8)))
}

/// Formats `items` as a YAML flow sequence of double-quoted strings, like `["GET", "POST"]`.
/// Quoting keeps each item a string: unquoted, an item that starts with `#` would start a
/// comment, one that starts with `!` a tag, and words such as `null` another type.
pub(crate) fn yaml_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = items.into_iter().map(yaml_quote).collect();
    format!("[{}]", quoted.join(", "))
}

/// Formats `text` as a YAML double-quoted scalar, escaping `"`, `\` and control characters.
fn yaml_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Reads a method list that may be left out. Written without a value (`methods:`, `~` or
/// `null`) it is an error rather than the default, because the default accepts every method,
/// the opposite of what an empty-looking list suggests.
pub(crate) fn deserialize_list<'de, D>(deserializer: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    match Option::<Vec<String>>::deserialize(deserializer)? {
        Some(list) => Ok(Some(list)),
        None => Err(de::Error::custom(
            "the method list has no value (nothing after the colon, ~ or null): list the \
             methods, like [\"GET\", \"POST\"], or remove the field for its default",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_list_quotes_items() {
        assert_eq!(yaml_list(["GET", "POST"]), r#"["GET", "POST"]"#);
        assert_eq!(yaml_list(["#X", "!Y"]), r##"["#X", "!Y"]"##);
        assert_eq!(
            yaml_list(["a\"b", "c\\d", "e\tf"]),
            r#"["a\"b", "c\\d", "e\u0009f"]"#
        );
        assert_eq!(yaml_list([]), "[]");
    }

    #[test]
    fn yaml_list_reads_back_as_items() {
        let items = ["#X", "!Y", "~", "null", "a\"b", "c\\d", "e\tf", "12"];
        let text = yaml_list(items);
        let read: Vec<String> = serde_yaml_ng::from_str(&text).expect(&text);
        assert_eq!(read, items);
    }

    #[test]
    fn method_names_accepted() {
        for method in [
            "GET",
            "PURGE",
            "PROPFIND",
            "VERSION-CONTROL",
            "M-SEARCH",
            "BASELINE-CONTROL",
            "MKCALENDAR",
            "LINK",
            "X_CUSTOM_1",
            "Purge",
        ] {
            assert_eq!(check_method(method), Ok(()), "{method}");
        }
    }

    #[test]
    fn method_name_form() {
        for name in ["A", "GET", "M-SEARCH", "X_1", "a-b"] {
            assert!(is_method_name(name), "{name}");
        }
        for name in ["", "1", "-A", "_A", "A.B", "A~", "~", ".inf", "0x10", "A B"] {
            assert!(!is_method_name(name), "{name}");
        }
    }
}
