//! Label selectors (every operator of `apimachinery/pkg/labels`) and field selectors
//! (`=`, `==`, `!=` with backslash escapes, as `apimachinery/pkg/fields`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::validation;

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: LabelOp,
    values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum LabelOp {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// A parsed field selector: every term must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector {
    pub(crate) terms: Vec<FieldTerm>,
}

/// `field=value` or `field!=value`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldTerm {
    pub(crate) field: String,
    pub(crate) equal: bool,
    pub(crate) value: String,
}

impl LabelSelector {
    /// Parses a selector; the error is the message of the 400 the server answers.
    pub(crate) fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut lexer = Lexer { chars: text.chars().collect(), pos: 0 };
        let mut requirements = Vec::new();
        if lexer.peek_token().is_none() {
            return Ok(LabelSelector::default());
        }
        loop {
            requirements.push(parse_requirement(&mut lexer)?);
            match lexer.next_token() {
                None => break,
                Some(Token::Comma) => continue,
                Some(other) => return Err(format!("found '{}', expected: ',' or 'end of string'", other.text())),
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            LabelOp::Equals | LabelOp::In => value.is_some_and(|v| self.values.contains(v)),
            LabelOp::NotEquals | LabelOp::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelOp::Exists => value.is_some(),
            LabelOp::DoesNotExist => value.is_none(),
            LabelOp::GreaterThan | LabelOp::LessThan => {
                let Some(have) = value.and_then(|v| v.parse::<i64>().ok()) else { return false };
                let Some(want) = self.values.first().and_then(|v| v.parse::<i64>().ok()) else { return false };
                if self.op == LabelOp::GreaterThan { have > want } else { have < want }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Identifier(String),
    Comma,
    Equals,
    DoubleEquals,
    NotEquals,
    Bang,
    Greater,
    Less,
    Open,
    Close,
}

impl Token {
    fn text(&self) -> String {
        match self {
            Token::Identifier(s) => s.clone(),
            Token::Comma => ",".into(),
            Token::Equals => "=".into(),
            Token::DoubleEquals => "==".into(),
            Token::NotEquals => "!=".into(),
            Token::Bang => "!".into(),
            Token::Greater => ">".into(),
            Token::Less => "<".into(),
            Token::Open => "(".into(),
            Token::Close => ")".into(),
        }
    }
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
}

impl Lexer {
    fn next_token(&mut self) -> Option<Token> {
        while self.pos < self.chars.len() && self.chars[self.pos].is_whitespace() {
            self.pos += 1;
        }
        let c = *self.chars.get(self.pos)?;
        let next = self.chars.get(self.pos + 1).copied();
        let (token, len) = match (c, next) {
            (',', _) => (Token::Comma, 1),
            ('=', Some('=')) => (Token::DoubleEquals, 2),
            ('=', _) => (Token::Equals, 1),
            ('!', Some('=')) => (Token::NotEquals, 2),
            ('!', _) => (Token::Bang, 1),
            ('>', _) => (Token::Greater, 1),
            ('<', _) => (Token::Less, 1),
            ('(', _) => (Token::Open, 1),
            (')', _) => (Token::Close, 1),
            _ => {
                let start = self.pos;
                while self.pos < self.chars.len()
                    && !self.chars[self.pos].is_whitespace()
                    && !",=!<>()".contains(self.chars[self.pos])
                {
                    self.pos += 1;
                }
                return Some(Token::Identifier(self.chars[start..self.pos].iter().collect()));
            }
        };
        self.pos += len;
        Some(token)
    }

    fn peek_token(&mut self) -> Option<Token> {
        let pos = self.pos;
        let token = self.next_token();
        self.pos = pos;
        token
    }
}

fn parse_requirement(lexer: &mut Lexer) -> Result<Requirement, String> {
    let (key, negated) = match lexer.next_token() {
        Some(Token::Bang) => match lexer.next_token() {
            Some(Token::Identifier(key)) => (key, true),
            other => {
                return Err(format!("found '{}', expected: identifier", other.map(|t| t.text()).unwrap_or_default()));
            }
        },
        Some(Token::Identifier(key)) => (key, false),
        other => {
            return Err(format!("found '{}', expected: !, identifier", other.map(|t| t.text()).unwrap_or_default()));
        }
    };
    validate_key(&key)?;
    if negated {
        return Ok(Requirement { key, op: LabelOp::DoesNotExist, values: Vec::new() });
    }
    let op = match lexer.peek_token() {
        None | Some(Token::Comma) => return Ok(Requirement { key, op: LabelOp::Exists, values: Vec::new() }),
        Some(Token::Identifier(word)) if word == "in" => LabelOp::In,
        Some(Token::Identifier(word)) if word == "notin" => LabelOp::NotIn,
        Some(Token::Equals) | Some(Token::DoubleEquals) => LabelOp::Equals,
        Some(Token::NotEquals) => LabelOp::NotEquals,
        Some(Token::Greater) => LabelOp::GreaterThan,
        Some(Token::Less) => LabelOp::LessThan,
        Some(other) => {
            return Err(format!("found '{}', expected: in, notin, =, ==, !=, gt, lt", other.text()));
        }
    };
    lexer.next_token();
    let values = if matches!(op, LabelOp::In | LabelOp::NotIn) {
        if lexer.next_token() != Some(Token::Open) {
            return Err("found '', expected: '('".to_string());
        }
        let mut values = Vec::new();
        loop {
            match lexer.next_token() {
                Some(Token::Identifier(v)) => {
                    values.push(v);
                    match lexer.next_token() {
                        Some(Token::Comma) => continue,
                        Some(Token::Close) => break,
                        other => {
                            return Err(format!(
                                "found '{}', expected: ',' or ')'",
                                other.map(|t| t.text()).unwrap_or_default()
                            ));
                        }
                    }
                }
                Some(Token::Comma) => values.push(String::new()),
                Some(Token::Close) => break,
                other => {
                    return Err(format!(
                        "found '{}', expected: ',', ')' or identifier",
                        other.map(|t| t.text()).unwrap_or_default()
                    ));
                }
            }
        }
        if values.is_empty() {
            return Err(format!(
                "unable to parse requirement: values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty (key {key:?})"
            ));
        }
        values
    } else {
        match lexer.peek_token() {
            Some(Token::Identifier(v)) => {
                lexer.next_token();
                vec![v]
            }
            _ => vec![String::new()],
        }
    };
    for (i, value) in values.iter().enumerate() {
        if let Err(e) = validation::label_value(value) {
            return Err(format!("unable to parse requirement: values[{i}][{key}]: Invalid value: {value:?}: {e}"));
        }
    }
    if matches!(op, LabelOp::GreaterThan | LabelOp::LessThan) && values[0].parse::<i64>().is_err() {
        return Err(format!(
            "unable to parse requirement: values[0]: Invalid value: {:?}: for 'Gt', 'Lt' operators, the value must be an integer",
            values[0]
        ));
    }
    Ok(Requirement { key, op, values })
}

fn validate_key(key: &str) -> Result<(), String> {
    validation::qualified_name(key)
        .map_err(|e| format!("unable to parse requirement: key: Invalid value: {key:?}: {e}"))
}

impl FieldSelector {
    /// Parses a selector; the error is the message of the 400 the server answers.
    pub(crate) fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        if text.trim().is_empty() {
            return Ok(FieldSelector::default());
        }
        for part in split_unescaped(text, ',') {
            let (field, equal, value) = if let Some(i) = find_unescaped(&part, "!=") {
                (&part[..i], false, &part[i + 2..])
            } else if let Some(i) = find_unescaped(&part, "==") {
                (&part[..i], true, &part[i + 2..])
            } else if let Some(i) = find_unescaped(&part, "=") {
                (&part[..i], true, &part[i + 1..])
            } else {
                return Err(format!("invalid selector: '{text}'; can't understand '{part}'"));
            };
            terms.push(FieldTerm { field: field.trim().to_string(), equal, value: unescape(value) });
        }
        Ok(FieldSelector { terms })
    }
}

/// Splits on `sep` where it is not preceded by a backslash escape.
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            current.push('\\');
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

fn find_unescaped(text: &str, needle: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if text[i..].starts_with(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// The string a field selector compares for the value at a dotted JSON path: strings as they
/// are, booleans and numbers printed, anything missing as empty.
pub(crate) fn field_value(object: &Value, path: &str) -> String {
    let mut current = object;
    for part in path.split('.') {
        match current.get(part) {
            Some(v) => current = v,
            None => return String::new(),
        }
    }
    match current {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_label_operator() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=api",
            "missing!=x",
            "app in (api, web)",
            "app notin (api,db)",
            "missing notin (a)",
            "app",
            "!missing",
            "n>4",
            "n<6",
            "app=web,tier=front",
            " app = web , tier in ( front ) ",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&l), "{s} should match");
        }
        let no =
            ["app=api", "app!=web", "app in (api)", "app notin (web)", "missing", "!app", "n>5", "n<5", "missing>1"];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&l), "{s} should not match");
        }
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for s in ["app in ()", "app in (a", "n>x", "a b", "app=we b", "=x", "app=(x)", "bad key!=x", "-x=y"] {
            assert!(LabelSelector::parse(s).is_err(), "{s} should be refused");
        }
    }

    #[test]
    fn field_selectors_with_escapes() {
        let s = FieldSelector::parse("metadata.name=a\\,b,spec.nodeName!=n1,status.phase==Running").unwrap();
        assert_eq!(s.terms.len(), 3);
        assert_eq!(s.terms[0].value, "a,b");
        assert!(!s.terms[1].equal);
        assert!(FieldSelector::parse("nonsense").is_err());
        let pod = serde_json::json!({"spec": {"hostNetwork": true}, "status": {"phase": "Running"}});
        assert_eq!(field_value(&pod, "spec.hostNetwork"), "true");
        assert_eq!(field_value(&pod, "spec.nodeName"), "");
    }
}
