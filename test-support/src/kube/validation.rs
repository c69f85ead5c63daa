//! Object metadata validation, worded as `apimachinery/pkg/util/validation` and
//! `apimachinery/pkg/api/validation` word it.

use serde_json::Value;

use super::kinds::NameRule;
use super::status::FieldError;

const DNS1123_LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MESSAGE: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MESSAGE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MESSAGE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// The total size annotations may have.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 label.
pub(crate) fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if is_dns1123_label(s) { Ok(()) } else { Err(DNS1123_LABEL_MESSAGE.into()) }
}

/// DNS-1123 subdomain.
pub(crate) fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    if !s.is_empty() && s.split('.').all(is_dns1123_label) { Ok(()) } else { Err(DNS1123_SUBDOMAIN_MESSAGE.into()) }
}

fn dns1035_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(DNS1035_LABEL_MESSAGE.into())
    }
}

fn path_segment(s: &str) -> Result<(), String> {
    if s == "." || s == ".." {
        return Err(format!("may not be '{s}'"));
    }
    for bad in ["/", "%"] {
        if s.contains(bad) {
            return Err(format!("may not contain '{bad}'"));
        }
    }
    Ok(())
}

/// A name following `rule`.
pub(crate) fn name(rule: NameRule, s: &str) -> Result<(), String> {
    match rule {
        NameRule::Subdomain => dns1123_subdomain(s),
        NameRule::Label => dns1123_label(s),
        NameRule::Dns1035Label => dns1035_label(s),
        NameRule::PathSegment => path_segment(s),
    }
}

fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A qualified name: `[prefix/]name`, as label and annotation keys are.
pub(crate) fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        dns1123_subdomain(prefix).map_err(|e| format!("prefix part {e}"))?;
    }
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".into());
    }
    if is_name_part(name) { Ok(()) } else { Err(QUALIFIED_NAME_MESSAGE.into()) }
}

/// A label value (may be empty).
pub(crate) fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if is_name_part(s) { Ok(()) } else { Err(LABEL_VALUE_MESSAGE.into()) }
}

/// Validates the parts of `metadata` every type shares: name, labels, annotations. Callers
/// have already turned a `generateName` into a name.
pub(crate) fn object_meta(rule: NameRule, metadata: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = metadata.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        errors.push(FieldError::required("metadata.name", "name or generateName is required"));
    } else if let Err(e) = self::name(rule, name) {
        errors.push(FieldError::invalid("metadata.name", name, e));
    }
    match metadata.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (key, value) in labels {
                if let Err(e) = qualified_name(key) {
                    errors.push(FieldError::invalid("metadata.labels", key.as_str(), e));
                }
                match value.as_str() {
                    Some(v) => {
                        if let Err(e) = label_value(v) {
                            errors.push(FieldError::invalid("metadata.labels", v, e));
                        }
                    }
                    None => errors.push(FieldError::invalid(
                        format!("metadata.labels[{key}]"),
                        value.clone(),
                        "must be a string",
                    )),
                }
            }
        }
        Some(other) => errors.push(FieldError::invalid("metadata.labels", other.clone(), "must be a map of strings")),
    }
    match metadata.get("annotations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(annotations)) => {
            let mut total = 0;
            for (key, value) in annotations {
                if let Err(e) = qualified_name(&key.to_lowercase()) {
                    errors.push(FieldError::invalid("metadata.annotations", key.as_str(), e));
                }
                total += key.len() + value.as_str().map_or(0, str::len);
                if !value.is_string() {
                    errors.push(FieldError::invalid(
                        format!("metadata.annotations[{key}]"),
                        value.clone(),
                        "must be a string",
                    ));
                }
            }
            if total > ANNOTATIONS_MAX_BYTES {
                errors.push(FieldError::too_long("metadata.annotations", "", ANNOTATIONS_MAX_BYTES));
            }
        }
        Some(other) => {
            errors.push(FieldError::invalid("metadata.annotations", other.clone(), "must be a map of strings"))
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_their_rules() {
        assert!(name(NameRule::Subdomain, "web.example-1").is_ok());
        assert!(name(NameRule::Subdomain, "Web").is_err());
        assert!(name(NameRule::Label, "a.b").is_err());
        assert!(name(NameRule::Dns1035Label, "1web").is_err());
        assert!(name(NameRule::Dns1035Label, "web-1").is_ok());
        assert!(name(NameRule::PathSegment, "system:controller:x").is_ok());
        assert!(name(NameRule::PathSegment, "a/b").is_err());
        assert!(qualified_name("app.kubernetes.io/name").is_ok());
        assert!(qualified_name("/x").is_err());
        assert!(qualified_name("Bad_Prefix/x").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("-x").is_err());
    }
}
