//! The dtab grammar, as Finagle reads it, written with nom.
//!
//! Each rule is one function with its production in the doc comment. Whitespace is Java's
//! `Character.isWhitespace` set, and `#` starts a comment to the end of the line, but only at a
//! token boundary: `#` is also a label character, so `/a#b` is one label.
//!
//! Rules return `nom::Err::Error` when they did not match at all (so an enclosing rule may try
//! something else) and `nom::Err::Failure` once they are committed (after an operator, an
//! opening parenthesis, a weight or an escape), so that errors point at the real mistake.
//! Nesting depth and input size are bounded, so no input can exhaust the stack or memory.

use std::fmt;

use nom::error::{ErrorKind, ParseError as NomParseError};
use nom::{Err, IResult};

use crate::dtab::{Dentry, Dtab};
use crate::path::{Label, Path, Prefix, PrefixElem, is_label_char};
use crate::tree::{NameTree, Weight, Weighted};

/// The largest input any parser accepts, in bytes.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// The deepest nesting of parentheses a name tree may have.
pub const MAX_NESTING: usize = 64;

/// Why a dtab, dentry, path, prefix or name tree could not be parsed, and where.
#[derive(Clone, PartialEq, Eq)]
pub struct ParseError {
    problem: Problem,
    offset: usize,
    line: usize,
    column: usize,
    line_text: String,
}

/// What went wrong, without the position.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    /// The parser needed one of `expected` and found `found` (`None` at the end of input).
    Unexpected { expected: Expected, found: Option<char> },
    /// A weight had two dots, or was just a dot.
    BadWeight(String),
    /// A weight was too large to be a finite number.
    WeightTooLarge,
    /// A `*` shared a prefix element with label characters.
    GluedWildcard,
    /// Parentheses nested deeper than [`MAX_NESTING`].
    TooDeep,
    /// The input was longer than [`MAX_INPUT_BYTES`].
    TooLong(usize),
}

/// A set of tokens the parser would have accepted at the failure position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Expected(u16);

/// The parser's internal error: the remaining input at the failure and what went wrong.
#[derive(Debug, Clone)]
pub(crate) struct Failure<'a> {
    at: &'a str,
    problem: Problem,
}

type PResult<'a, O> = IResult<&'a str, O, Failure<'a>>;

impl Expected {
    const SLASH: Expected = Expected(1);
    const LABEL_CHAR: Expected = Expected(1 << 1);
    const LOWER_X: Expected = Expected(1 << 2);
    const HEX_DIGIT: Expected = Expected(1 << 3);
    const PREFIX_ELEM: Expected = Expected(1 << 4);
    const ARROW: Expected = Expected(1 << 5);
    const TERM: Expected = Expected(1 << 6);
    const STAR: Expected = Expected(1 << 7);
    const CLOSE: Expected = Expected(1 << 8);
    const ALT: Expected = Expected(1 << 9);
    const UNION: Expected = Expected(1 << 10);
    const SEMICOLON: Expected = Expected(1 << 11);
    const END: Expected = Expected(1 << 12);

    const NAMES: [&'static str; 13] = [
        "'/'",
        "a label character",
        "'x' (escapes are written \\xHH)",
        "a hex digit",
        "a label or '*'",
        "'=>'",
        "a name ('/path', '!', '~', '$', '(' or a weight)",
        "'*' after the weight",
        "')'",
        "'|'",
        "'&'",
        "';'",
        "end of input",
    ];

    fn or(self, other: Expected) -> Expected {
        Expected(self.0 | other.0)
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> =
            Self::NAMES.iter().enumerate().filter(|(i, _)| self.0 & (1 << i) != 0).map(|(_, n)| *n).collect();
        match names.as_slice() {
            [] => f.write_str("something else"),
            [one] => f.write_str(one),
            [init @ .., last] => write!(f, "{} or {last}", init.join(", ")),
        }
    }
}

impl<'a> Failure<'a> {
    fn expected(at: &'a str, expected: Expected) -> Self {
        Failure { at, problem: Problem::Unexpected { expected, found: at.chars().next() } }
    }
}

impl<'a> NomParseError<&'a str> for Failure<'a> {
    fn from_error_kind(input: &'a str, _kind: ErrorKind) -> Self {
        Failure::expected(input, Expected::default())
    }

    fn append(_input: &'a str, _kind: ErrorKind, other: Self) -> Self {
        other
    }

    /// Of two failed alternatives, report the one that got further; at the same place,
    /// report everything either would have accepted.
    fn or(self, other: Self) -> Self {
        match self.at.len().cmp(&other.at.len()) {
            std::cmp::Ordering::Less => self,
            std::cmp::Ordering::Greater => other,
            std::cmp::Ordering::Equal => match (self.problem, other.problem) {
                (Problem::Unexpected { expected: a, found }, Problem::Unexpected { expected: b, .. }) => {
                    Failure { at: self.at, problem: Problem::Unexpected { expected: a.or(b), found } }
                }
                (problem, _) => Failure { at: self.at, problem },
            },
        }
    }
}

/// A recoverable mismatch: an enclosing rule may try something else.
fn mismatch<'a, O>(at: &'a str, expected: Expected) -> PResult<'a, O> {
    Err(Err::Error(Failure::expected(at, expected)))
}

/// A committed failure: the input is wrong here.
fn fatal<'a, O>(at: &'a str, expected: Expected) -> PResult<'a, O> {
    Err(Err::Failure(Failure::expected(at, expected)))
}

/// Turns a recoverable mismatch into a committed failure (nom's `cut`).
fn committed<'a, O>(result: PResult<'a, O>) -> PResult<'a, O> {
    result.map_err(|e| match e {
        Err::Error(f) => Err::Failure(f),
        other => other,
    })
}

/// Java's `Character.isWhitespace`: ASCII controls 9-13 and 28-31, and the Unicode space,
/// line and paragraph separators except the no-break spaces U+00A0, U+2007 and U+202F.
fn is_java_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1c}'..='\u{1f}'
            | ' '
            | '\u{1680}'
            | '\u{2000}'..='\u{2006}'
            | '\u{2008}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// `ws := ( whitespace | '#' any-char* (newline | end) )*`
fn ws(mut i: &str) -> &str {
    loop {
        i = i.trim_start_matches(is_java_whitespace);
        match i.strip_prefix('#') {
            Some(comment) => i = comment.split_once('\n').map_or("", |(_, rest)| rest),
            None => return i,
        }
    }
}

/// `escape := '\x' HEX HEX`, one arbitrary byte.
fn escape(i: &str) -> PResult<'_, u8> {
    let Some(rest) = i.strip_prefix('\\') else { return mismatch(i, Expected::LABEL_CHAR) };
    let Some(rest) = rest.strip_prefix('x') else { return fatal(rest, Expected::LOWER_X) };
    let mut value = 0u8;
    let mut rest = rest;
    for _ in 0..2 {
        match rest.chars().next().and_then(|c| c.to_digit(16)) {
            Some(d) => {
                value = value << 4 | d as u8;
                rest = &rest[1..];
            }
            None => return fatal(rest, Expected::HEX_DIGIT),
        }
    }
    Ok((rest, value))
}

/// `label := ( plainchar | escape )+` where `plainchar` is one of `0-9 A-Z a-z _ : . # $ % -`.
fn label(i: &str) -> PResult<'_, Label> {
    let plain = i.bytes().take_while(|&b| is_label_char(b)).count();
    if !i[plain..].starts_with('\\') {
        // The common case: no escapes, so the label is a slice of the input.
        if plain == 0 {
            return mismatch(i, Expected::LABEL_CHAR);
        }
        return Ok((&i[plain..], Label::from_plain(&i.as_bytes()[..plain])));
    }
    let mut bytes = i.as_bytes()[..plain].to_vec();
    let mut rest = &i[plain..];
    loop {
        if rest.starts_with('\\') {
            let (r, byte) = escape(rest)?;
            bytes.push(byte);
            rest = r;
        } else {
            let n = rest.bytes().take_while(|&b| is_label_char(b)).count();
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&rest.as_bytes()[..n]);
            rest = &rest[n..];
        }
    }
    Ok((rest, Label::from_plain(&bytes)))
}

fn starts_label(i: &str) -> bool {
    i.as_bytes().first().is_some_and(|&b| is_label_char(b) || b == b'\\')
}

/// `path := '/' [ label ( '/' label )* ]`; a `/` not followed by a label is the empty path.
fn path(i: &str) -> PResult<'_, Path> {
    let Some(mut rest) = i.strip_prefix('/') else { return mismatch(i, Expected::SLASH) };
    let mut labels = Vec::new();
    if starts_label(rest) {
        loop {
            let (r, l) = committed(label(rest))?;
            labels.push(l);
            match r.strip_prefix('/') {
                Some(after) => rest = after,
                None => {
                    rest = r;
                    break;
                }
            }
        }
    }
    Ok((rest, Path::from_labels(labels)))
}

/// `prefix := '/' [ pelem ( '/' pelem )* ]` and `pelem := '*' | label`; a `*` is a whole
/// element on its own.
fn prefix(i: &str) -> PResult<'_, Prefix> {
    let Some(mut rest) = i.strip_prefix('/') else { return mismatch(i, Expected::SLASH) };
    let mut elems = Vec::new();
    if starts_label(rest) || rest.starts_with('*') {
        loop {
            let (r, elem) = match rest.strip_prefix('*') {
                Some(r) if starts_label(r) || r.starts_with('*') => return Err(Err::Failure(glued_wildcard(r))),
                Some(r) => (r, PrefixElem::Any),
                None => {
                    let (r, l) = match label(rest) {
                        Err(Err::Error(_)) => return fatal(rest, Expected::PREFIX_ELEM),
                        other => other?,
                    };
                    if r.starts_with('*') {
                        return Err(Err::Failure(glued_wildcard(r)));
                    }
                    (r, PrefixElem::Label(l))
                }
            };
            elems.push(elem);
            match r.strip_prefix('/') {
                Some(after) => rest = after,
                None => {
                    rest = r;
                    break;
                }
            }
        }
    }
    Ok((rest, Prefix::new(elems)))
}

fn glued_wildcard(at: &str) -> Failure<'_> {
    Failure { at, problem: Problem::GluedWildcard }
}

/// `number := ( DIGIT | '.' )+`, with at most one `.` and not a lone `.`.
fn number(i: &str) -> PResult<'_, Weight> {
    let len = i.bytes().take_while(|&b| b.is_ascii_digit() || b == b'.').count();
    if len == 0 {
        return mismatch(i, Expected::TERM);
    }
    let text = &i[..len];
    let dots: Vec<usize> = text.match_indices('.').map(|(at, _)| at).collect();
    if dots.len() > 1 || text == "." {
        // Point just past the offending dot, as the reference does.
        let at = dots.get(1).map_or(1, |second| second + 1);
        let problem = Problem::BadWeight(text.to_string());
        return Err(Err::Failure(Failure { at: &i[at..], problem }));
    }
    match text.parse::<f64>().ok().and_then(|w| Weight::new(w).ok()) {
        Some(w) => Ok((&i[len..], w)),
        None => Err(Err::Failure(Failure { at: i, problem: Problem::WeightTooLarge })),
    }
}

/// `simple := WS* ( '(' tree WS* ')' | path | '!' | '~' | '$' )`
fn simple(i: &str, depth: usize) -> PResult<'_, NameTree<Path>> {
    let i = ws(i);
    match i.chars().next() {
        Some('(') => {
            if depth >= MAX_NESTING {
                return Err(Err::Failure(Failure { at: i, problem: Problem::TooDeep }));
            }
            let (rest, t) = committed(tree(&i[1..], depth + 1))?;
            let rest = ws(rest);
            match rest.strip_prefix(')') {
                Some(rest) => Ok((rest, t)),
                None => fatal(rest, Expected::CLOSE.or(Expected::ALT).or(Expected::UNION)),
            }
        }
        Some('/') => {
            let (rest, p) = path(i)?;
            Ok((rest, NameTree::Leaf(p)))
        }
        Some('!') => Ok((&i[1..], NameTree::Fail)),
        Some('~') => Ok((&i[1..], NameTree::Neg)),
        Some('$') => Ok((&i[1..], NameTree::Empty)),
        _ => mismatch(i, Expected::TERM),
    }
}

/// `weighted := WS* [ number WS* '*' WS* ] simple`
fn weighted(i: &str, depth: usize) -> PResult<'_, Weighted<Path>> {
    let i = ws(i);
    if i.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        let (rest, weight) = number(i)?;
        let rest = ws(rest);
        let Some(rest) = rest.strip_prefix('*') else { return fatal(rest, Expected::STAR) };
        let (rest, tree) = committed(simple(rest, depth))?;
        return Ok((rest, Weighted::new(weight, tree)));
    }
    let (rest, tree) = simple(i, depth)?;
    Ok((rest, Weighted::new(Weight::DEFAULT, tree)))
}

/// `tree1 := weighted ( WS* '&' weighted )*`; a single branch is returned without its
/// weight, as the reference does.
fn tree1(i: &str, depth: usize) -> PResult<'_, NameTree<Path>> {
    let (mut rest, first) = weighted(i, depth)?;
    let mut branches = vec![first];
    while let Some(after) = ws(rest).strip_prefix('&') {
        let (r, branch) = committed(weighted(after, depth))?;
        branches.push(branch);
        rest = r;
    }
    if branches.len() == 1 {
        return Ok((rest, branches.pop().map_or(NameTree::Neg, |w| w.tree)));
    }
    Ok((rest, NameTree::Union(branches)))
}

/// `tree := tree1 ( WS* '|' tree1 )*`; a single alternative is returned as it is.
fn tree(i: &str, depth: usize) -> PResult<'_, NameTree<Path>> {
    let (mut rest, first) = tree1(i, depth)?;
    let mut alts = vec![first];
    while let Some(after) = ws(rest).strip_prefix('|') {
        let (r, alt) = committed(tree1(after, depth))?;
        alts.push(alt);
        rest = r;
    }
    if alts.len() == 1 {
        return Ok((rest, alts.pop().unwrap_or(NameTree::Neg)));
    }
    Ok((rest, NameTree::Alt(alts)))
}

/// `dentry := WS* prefix WS* '=>' tree`
fn dentry(i: &str) -> PResult<'_, Dentry> {
    let (rest, pfx) = prefix(ws(i))?;
    let rest = ws(rest);
    let Some(rest) = rest.strip_prefix("=>") else { return fatal(rest, Expected::ARROW) };
    let (rest, dst) = committed(tree(rest, 0))?;
    Ok((rest, Dentry::new(pfx, dst)))
}

/// `dtab := WS* [ dentry WS* ( ';' WS* dentry WS* )* [ ';' WS* ] ]`: one trailing `;` at most.
fn dtab(i: &str) -> PResult<'_, Dtab> {
    let mut rest = ws(i);
    let mut dentries = Vec::new();
    if rest.is_empty() {
        return Ok((rest, Dtab::empty()));
    }
    let (r, first) = dentry(rest)?;
    dentries.push(first);
    rest = ws(r);
    while let Some(after) = rest.strip_prefix(';') {
        let after = ws(after);
        if after.is_empty() {
            rest = after;
            break;
        }
        let (r, d) = committed(dentry(after))?;
        dentries.push(d);
        rest = ws(r);
    }
    Ok((rest, Dtab::new(dentries)))
}

/// Runs `rule` over the whole of `input`, with surrounding whitespace, and turns its error
/// into a [`ParseError`] with line, column and excerpt.
fn entire<'a, O>(
    input: &'a str,
    rule: impl FnOnce(&'a str) -> PResult<'a, O>,
    trailing: Expected,
) -> Result<O, ParseError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(ParseError::new(input, 0, Problem::TooLong(input.len())));
    }
    let failure = match rule(input) {
        Ok((rest, value)) => {
            let rest = ws(rest);
            if rest.is_empty() {
                return Ok(value);
            }
            Failure::expected(rest, trailing.or(Expected::END))
        }
        Err(Err::Error(f) | Err::Failure(f)) => f,
        Err(Err::Incomplete(_)) => Failure::expected("", Expected::END),
    };
    Err(ParseError::new(input, input.len() - failure.at.len(), failure.problem))
}

/// Parses a whole path.
pub(crate) fn parse_path(input: &str) -> Result<Path, ParseError> {
    entire(input, |i| path(ws(i)), Expected::default())
}

/// Parses a whole dentry prefix.
pub(crate) fn parse_prefix(input: &str) -> Result<Prefix, ParseError> {
    entire(input, |i| prefix(ws(i)), Expected::default())
}

/// Parses a whole name tree.
pub(crate) fn parse_tree(input: &str) -> Result<NameTree<Path>, ParseError> {
    entire(input, |i| tree(i, 0), Expected::ALT.or(Expected::UNION))
}

/// Parses a single dentry (no trailing `;`).
pub(crate) fn parse_dentry(input: &str) -> Result<Dentry, ParseError> {
    entire(input, dentry, Expected::ALT.or(Expected::UNION))
}

/// Parses a whole dtab.
pub(crate) fn parse_dtab(input: &str) -> Result<Dtab, ParseError> {
    entire(input, dtab, Expected::ALT.or(Expected::UNION).or(Expected::SEMICOLON))
}

impl ParseError {
    fn new(input: &str, offset: usize, problem: Problem) -> Self {
        let before = &input[..offset];
        let line_start = before.rfind('\n').map_or(0, |n| n + 1);
        let line_end = input[offset..].find('\n').map_or(input.len(), |n| offset + n);
        let line = before.matches('\n').count() + 1;
        let column = input[line_start..offset].chars().count() + 1;
        // Keep the excerpt short and printable: tabs would misplace the caret.
        let line_text: String =
            input[line_start..line_end].chars().take(200).map(|c| if c.is_control() { ' ' } else { c }).collect();
        ParseError { problem, offset, line, column, line_text }
    }

    /// The byte offset of the error in the input.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The 1-based line of the error.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The 1-based column (in characters) of the error.
    pub fn column(&self) -> usize {
        self.column
    }

    /// What is wrong, without the position: `expected '=>' but found '-'`.
    pub fn message(&self) -> String {
        match &self.problem {
            Problem::Unexpected { expected, found: Some(c) } => format!("expected {expected} but found {c:?}"),
            Problem::Unexpected { expected, found: None } => format!("expected {expected} but the input ended"),
            Problem::BadWeight(w) => format!("{w:?} is not a weight: use digits and at most one '.'"),
            Problem::WeightTooLarge => "the weight is too large".to_string(),
            Problem::GluedWildcard => "'*' must be a whole prefix element, as in /a/*/b".to_string(),
            Problem::TooDeep => format!("parentheses are nested more than {MAX_NESTING} deep"),
            Problem::TooLong(n) => format!("the input is {n} bytes long; the limit is {MAX_INPUT_BYTES}"),
        }
    }

    /// The offending line with a caret under the error, on two lines.
    pub fn excerpt(&self) -> String {
        let caret_pad: String = self
            .line_text
            .chars()
            .take(self.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        format!("  {}\n  {caret_pad}^", self.line_text)
    }

    /// The error as a compiler would print it about `origin` (a file name):
    /// `origin:line:column: message`, then the excerpt.
    pub fn render(&self, origin: &str) -> String {
        format!("{origin}:{}:{}: {}\n{}", self.line, self.column, self.message(), self.excerpt())
    }
}

impl fmt::Display for ParseError {
    /// One line: `line 1, column 6: expected '=>' but found '-'`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message())
    }
}

impl fmt::Debug for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParseError({self})")
    }
}

impl std::error::Error for ParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_a_label_character_unless_it_follows_whitespace() {
        assert_eq!(parse_path("/a#b").unwrap().labels().len(), 1);
        assert_eq!(parse_path("/a #b").unwrap().to_string(), "/a");
        assert_eq!(parse_tree("! #c").unwrap(), NameTree::Fail);
        assert_eq!(parse_tree("!#c").unwrap(), NameTree::Fail);
    }

    #[test]
    fn java_whitespace_differs_from_rusts() {
        assert!(parse_path("\u{1f}/a").is_ok());
        assert!(parse_path("\u{a0}/a").is_err());
        assert!(parse_path("\u{85}/a").is_err());
        assert!(parse_path("\u{2007}/a").is_err());
        assert!(parse_path("\u{3000}/a").is_ok());
    }

    #[test]
    fn errors_have_line_column_expectation_and_caret() {
        let err = parse_dtab("/a => /b;\n/c = > /d").unwrap_err();
        assert_eq!((err.line(), err.column()), (2, 4));
        assert_eq!(err.message(), "expected '=>' but found '='");
        assert_eq!(err.excerpt(), "  /c = > /d\n     ^");
        assert_eq!(err.to_string(), "line 2, column 4: expected '=>' but found '='");
        let err = parse_tree("/a &").unwrap_err();
        assert!(err.message().contains("but the input ended"), "{err}");
        let err = parse_dtab("/a=>/b /c").unwrap_err();
        assert_eq!(err.message(), "expected '|', '&', ';' or end of input but found '/'");
    }

    #[test]
    fn weights_are_checked() {
        assert!(parse_tree("1.2.3*/a").is_err());
        assert!(parse_tree(". */a").is_err());
        assert!(parse_tree("5 /a").is_err());
        let huge = format!("{}*/a & /b", "9".repeat(400));
        assert_eq!(parse_tree(&huge).unwrap_err().message(), "the weight is too large");
        assert_eq!(parse_tree("01.50*/a & .5*/b").unwrap().to_string(), "1.50*/a & 0.50*/b");
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let ok = format!("{}/a{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert!(parse_tree(&ok).is_ok());
        let deep = format!("{}/a{}", "(".repeat(MAX_NESTING + 1), ")".repeat(MAX_NESTING + 1));
        assert!(parse_tree(&deep).unwrap_err().message().contains("nested"));
        let huge = "(".repeat(10_000_000);
        assert!(parse_tree(&huge).unwrap_err().message().contains("limit"));
        let many_opens = "(".repeat(100_000);
        assert!(parse_tree(&many_opens).is_err());
    }

    #[test]
    fn wildcards_stand_alone() {
        assert!(parse_prefix("/a/*/c").is_ok());
        for bad in ["/a*", "/*a", "/**", "/a/b*/c"] {
            let err = parse_prefix(bad).unwrap_err();
            assert!(err.message().contains("whole prefix element"), "{bad}: {err}");
        }
    }
}
