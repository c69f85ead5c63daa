//! The dtab a command reads from a file or standard input: dtab text, or JSON as
//! `waymark dtab get --json` and `namerctl dtab get --json` write it, or a bare JSON array of
//! dentries.

use serde::Deserialize;
use waymark_dtab::Dtab;
use waymark_dtab::json::{DentryJson, DtabJsonError, dtab_from_json};

use crate::exit::{Exit, Failure, read_input};
use crate::fmt::parse_file;

/// A dtab read from a file, with the version the file carries (JSON only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtabInput {
    /// The dtab.
    pub dtab: Dtab,
    /// The `version` of a `{"version","dtab"}` file, when not empty.
    pub version: Option<String>,
}

/// `{"version": .., "dtab": [..]}`. Unknown fields are ignored, as namerctl ignores them.
#[derive(Debug, Deserialize)]
struct VersionedJson {
    #[serde(default)]
    version: Option<String>,
    dtab: Vec<DentryJson>,
}

/// Reads `file` (`-` for standard input) and parses it with [`parse_input`].
pub fn read_dtab(file: &str) -> Result<DtabInput, Failure> {
    let text = read_input(file)?;
    parse_input(&text, file)
}

/// Parses a dtab given as text, or as JSON when it starts with `{` or `[`. Errors name
/// `origin` (a file name, `-` for standard input), the line and the column, with a caret.
pub fn parse_input(text: &str, origin: &str) -> Result<DtabInput, Failure> {
    match text.trim_start().chars().next() {
        Some('{') => {
            let parsed: VersionedJson = json(text, origin)?;
            let dtab = from_json(&parsed.dtab, origin)?;
            Ok(DtabInput { dtab, version: parsed.version.filter(|v| !v.is_empty()) })
        }
        Some('[') => {
            let dentries: Vec<DentryJson> = json(text, origin)?;
            Ok(DtabInput { dtab: from_json(&dentries, origin)?, version: None })
        }
        _ => Ok(DtabInput { dtab: parse_file(text, origin)?, version: None }),
    }
}

fn shown(origin: &str) -> &str {
    if origin == "-" { "<stdin>" } else { origin }
}

fn json<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, Failure> {
    serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        // serde_json appends " at line L column C"; the position goes in front instead.
        let message = message.split(" at line ").next().unwrap_or(&message).to_string();
        let failure = Failure::new(
            Exit::Invalid,
            format!("{}:{}:{}: invalid JSON dtab: {message}", shown(origin), e.line(), e.column()),
        );
        match excerpt(text, e.line(), e.column()) {
            Some(excerpt) => failure.with_detail(excerpt),
            None => failure,
        }
    })
}

/// The line `line` of `text` with a caret under `column`, as the dtab parser shows errors.
fn excerpt(text: &str, line: usize, column: usize) -> Option<String> {
    let content = text.lines().nth(line.checked_sub(1)?)?;
    let content: String = content.chars().take(200).map(|c| if c.is_control() { ' ' } else { c }).collect();
    let pad = " ".repeat(column.saturating_sub(1).min(content.chars().count()));
    Some(format!("  {content}\n  {pad}^"))
}

fn from_json(dentries: &[DentryJson], origin: &str) -> Result<Dtab, Failure> {
    dtab_from_json(dentries).map_err(|e| {
        let (index, side, text, error) = match &e {
            DtabJsonError::Prefix { index, text, error } => (index, "prefix", text, error),
            DtabJsonError::Dst { index, text, error } => (index, "dst", text, error),
        };
        Failure::new(
            Exit::Invalid,
            format!(
                "{}: dentry {index}: invalid {side} {text:?}: column {}: {}",
                shown(origin),
                error.column(),
                error.message()
            ),
        )
        .with_detail(error.excerpt())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_json_objects_and_bare_arrays_are_accepted() {
        let text = parse_input("# version AAAAAAAAAAE=\n/svc  => /a ;\n/svc/web  => /b ;\n", "f").unwrap();
        assert_eq!((text.dtab.to_string().as_str(), text.version), ("/svc=>/a;/svc/web=>/b", None));

        let object =
            parse_input(r#" {"version":"AAAAAAAAAAI=","dtab":[{"prefix":"/svc","dst":"/a | /b"}]}"#, "f.json").unwrap();
        assert_eq!(object.dtab.to_string(), "/svc=>/a | /b");
        assert_eq!(object.version.as_deref(), Some("AAAAAAAAAAI="));

        let unversioned = parse_input(r#"{"version":"","dtab":[],"extra":1}"#, "f").unwrap();
        assert_eq!((unversioned.dtab, unversioned.version), (Dtab::empty(), None));

        let array = parse_input("\n[{\"prefix\":\"/a\",\"dst\":\"/b\"}]", "-").unwrap();
        assert_eq!(array.dtab.to_string(), "/a=>/b");
    }

    #[test]
    fn json_errors_have_a_position_and_a_caret() {
        let err = parse_input("{\"version\":\"v\",\n \"dtab\": [}", "f.json").unwrap_err();
        assert_eq!(err.exit, Exit::Invalid);
        assert!(err.message.starts_with("f.json:2:11: invalid JSON dtab: "), "{}", err.message);
        assert_eq!(err.detail.as_deref(), Some("   \"dtab\": [}\n            ^"));

        let err = parse_input(r#"{"version":"v"}"#, "-").unwrap_err();
        assert!(err.message.starts_with("<stdin>:1:15: invalid JSON dtab: missing field `dtab`"), "{}", err.message);
    }

    #[test]
    fn json_dentries_that_do_not_parse_name_the_dentry() {
        let err = parse_input(r#"[{"prefix":"/a","dst":"/b"},{"prefix":"/c","dst":"/d &"}]"#, "f").unwrap_err();
        assert_eq!(err.exit, Exit::Invalid);
        assert_eq!(
            err.message,
            "f: dentry 1: invalid dst \"/d &\": column 5: expected a name ('/path', '!', '~', '$', '(' or a weight) but the input ended"
        );
        assert_eq!(err.detail.as_deref(), Some("  /d &\n      ^"));
    }

    #[test]
    fn text_errors_are_the_dtab_parser_errors() {
        let err = parse_input("/a => /b;\n/c = /d\n", "routes.dtab").unwrap_err();
        assert_eq!(err.message, "routes.dtab:2:4: expected '=>' but found '='");
    }
}
