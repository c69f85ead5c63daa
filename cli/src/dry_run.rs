//! `waymark dtab update --dry-run`: how every name the namer has bound in a namespace would
//! resolve under a new dtab, before it goes live. Nothing is written.
//!
//! The names come from `/api/1/bound-names/<ns>` (the names clients are routing with now).
//! The old resolution is `/api/1/bind/<ns>?path=` (the stored dtab); the new one is
//! `/api/1/bind?path=&dtab=<new dtab>` (the new dtab alone, which is what the namespace will
//! hold). Addresses are left out of the comparison: a dtab change cannot change them.

use serde::Serialize;
use waymark_dtab::json::{BoundTreeJson, WeightedJson};
use waymark_dtab::{Addr, Dtab};

use crate::client::{Bound, Client};
use crate::exit::{Exit, Failure};
use crate::style::Style;

/// What a bound tree amounts to for the traffic that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It binds to something.
    Bound,
    /// It binds to nothing (`$`): requests find no endpoints.
    Empty,
    /// Nothing matches (`~`): requests fail as unroutable.
    Neg,
    /// It fails (`!`), or binding fails.
    Fail,
}

/// One name whose resolution would change.
#[derive(Debug, Clone, Serialize)]
pub struct NameChange {
    /// The logical name, such as `/svc/web`.
    pub name: String,
    /// How it resolves now, compactly.
    pub before: String,
    /// How it would resolve.
    pub after: String,
    /// What the new resolution amounts to.
    pub outcome: Outcome,
    /// True if it resolves to something now and would not afterwards.
    pub breaks: bool,
}

/// `update --dry-run --json`.
#[derive(Debug, Serialize)]
struct Report<'a> {
    namespace: &'a str,
    bound: usize,
    changes: &'a [NameChange],
}

/// What `tree` amounts to: an alternative takes its first non-negative branch, a union is
/// bound if any branch is.
pub fn outcome(tree: &BoundTreeJson) -> Outcome {
    match tree {
        BoundTreeJson::Leaf { bound } => match &bound.addr {
            Some(Addr::Neg) => Outcome::Neg,
            Some(Addr::Failed { .. }) => Outcome::Fail,
            _ => Outcome::Bound,
        },
        BoundTreeJson::Alt { alt } => alt.iter().map(outcome).find(|o| *o != Outcome::Neg).unwrap_or(Outcome::Neg),
        BoundTreeJson::Union { union } => {
            let outcomes: Vec<Outcome> = union.iter().map(|w| outcome(&w.tree)).collect();
            [Outcome::Bound, Outcome::Empty, Outcome::Fail]
                .into_iter()
                .find(|o| outcomes.contains(o))
                .unwrap_or(Outcome::Neg)
        }
        BoundTreeJson::Neg => Outcome::Neg,
        BoundTreeJson::Fail => Outcome::Fail,
        BoundTreeJson::Empty => Outcome::Empty,
    }
}

fn bound_outcome(bound: &Bound) -> Outcome {
    match bound {
        Bound::Tree(tree) => outcome(tree),
        Bound::Failed(_) => Outcome::Fail,
    }
}

/// The tree without addresses: what a dtab decides.
fn without_addrs(tree: &BoundTreeJson) -> BoundTreeJson {
    match tree {
        BoundTreeJson::Leaf { bound } => {
            let mut bound = bound.clone();
            bound.addr = None;
            BoundTreeJson::Leaf { bound }
        }
        BoundTreeJson::Alt { alt } => BoundTreeJson::Alt { alt: alt.iter().map(without_addrs).collect() },
        BoundTreeJson::Union { union } => BoundTreeJson::Union {
            union: union.iter().map(|w| WeightedJson { weight: w.weight, tree: without_addrs(&w.tree) }).collect(),
        },
        other => other.clone(),
    }
}

fn same_resolution(a: &Bound, b: &Bound) -> bool {
    match (a, b) {
        (Bound::Tree(a), Bound::Tree(b)) => without_addrs(a) == without_addrs(b),
        (Bound::Failed(a), Bound::Failed(b)) => a == b,
        _ => false,
    }
}

/// A bound tree on one line: leaf ids (with a residual path if any), `~`, `!`, `$`,
/// alternatives with `|` and weighted unions with `&`, as in a dtab.
pub fn compact(tree: &BoundTreeJson) -> String {
    fn nested(tree: &BoundTreeJson) -> String {
        match tree {
            BoundTreeJson::Alt { alt } if alt.len() > 1 => format!("({})", compact(tree)),
            BoundTreeJson::Union { union } if union.len() > 1 => format!("({})", compact(tree)),
            BoundTreeJson::Leaf { bound } if bound.path != "/" => format!("({})", compact(tree)),
            _ => compact(tree),
        }
    }
    match tree {
        BoundTreeJson::Leaf { bound } if bound.path == "/" => bound.id.clone(),
        BoundTreeJson::Leaf { bound } => format!("{} residual {}", bound.id, bound.path),
        BoundTreeJson::Alt { alt } if alt.is_empty() => "~".to_string(),
        BoundTreeJson::Alt { alt } => alt.iter().map(nested).collect::<Vec<_>>().join(" | "),
        BoundTreeJson::Union { union } if union.is_empty() => "~".to_string(),
        BoundTreeJson::Union { union } => union
            .iter()
            .map(
                |w| if w.weight == 1.0 { nested(&w.tree) } else { format!("{}*{}", weight(w.weight), nested(&w.tree)) },
            )
            .collect::<Vec<_>>()
            .join(" & "),
        BoundTreeJson::Neg => "~".to_string(),
        BoundTreeJson::Fail => "!".to_string(),
        BoundTreeJson::Empty => "$".to_string(),
    }
}

/// A weight with two decimals as the dtab printer writes it, or exactly if two would hide it.
fn weight(w: f64) -> String {
    let short = format!("{w:.2}");
    if short.parse::<f64>() == Ok(w) { short } else { w.to_string() }
}

fn shown(bound: &Bound) -> String {
    match bound {
        Bound::Tree(tree) => compact(tree),
        Bound::Failed(reason) => format!("binding fails: {}", reason.lines().next().unwrap_or("")),
    }
}

/// Compares the resolutions of `names` before and after: `before(name)` and `after(name)`
/// bind one name each.
pub fn compare(
    names: &[String],
    mut before: impl FnMut(&str) -> Result<Bound, Failure>,
    mut after: impl FnMut(&str) -> Result<Bound, Failure>,
) -> Result<Vec<NameChange>, Failure> {
    let mut changes = Vec::new();
    for name in names {
        let (old, new) = (before(name)?, after(name)?);
        if same_resolution(&old, &new) {
            continue;
        }
        let outcome = bound_outcome(&new);
        changes.push(NameChange {
            name: name.clone(),
            before: shown(&old),
            after: shown(&new),
            outcome,
            breaks: bound_outcome(&old) == Outcome::Bound && outcome != Outcome::Bound,
        });
    }
    Ok(changes)
}

fn warning(outcome: Outcome, breaks: bool) -> Option<String> {
    let what = match outcome {
        Outcome::Bound => return None,
        Outcome::Empty => "empty: no endpoints",
        Outcome::Neg => "negative: nothing would route",
        Outcome::Fail => "failing",
    };
    Some(if breaks {
        format!("would become {what}")
    } else {
        format!("would be {what} (it does not resolve now either)")
    })
}

/// The report for people.
pub fn render(ns: &str, bound: usize, changes: &[NameChange], style: &Style) -> String {
    if bound == 0 {
        return format!("No names are bound in {ns} now; nothing to compare.\n");
    }
    if changes.is_empty() {
        let names = if bound == 1 { "the 1 name".to_string() } else { format!("all {bound} names") };
        return format!("No change: {names} bound in {ns} would resolve as they do now.\n");
    }
    let mut out = format!("{} of {bound} names bound in {ns} would resolve differently:\n", changes.len());
    for change in changes {
        out.push('\n');
        let marker = if change.breaks { style.red("! ") } else { "  ".to_string() };
        out.push_str(&format!("{marker}{}\n", style.bold(&change.name)));
        out.push_str(&format!("    before: {}\n", change.before));
        out.push_str(&format!("    after:  {}\n", change.after));
        if let Some(warning) = warning(change.outcome, change.breaks) {
            let text = format!("    {} {warning}", if change.breaks { "!" } else { "~" });
            out.push_str(&if change.breaks { style.red(&text) } else { style.yellow(&text) });
            out.push('\n');
        }
    }
    let broken: Vec<&str> = changes.iter().filter(|c| c.breaks).map(|c| c.name.as_str()).collect();
    if !broken.is_empty() {
        let noun = if broken.len() == 1 { "name" } else { "names" };
        out.push_str(&format!("\n{} {noun} would break: {}\n", broken.len(), broken.join(", ")));
    }
    out
}

/// Runs the dry run; [`Exit::Differs`] when a name would break. With `version`, the dry run
/// first checks that it is still current, since the update would be refused otherwise.
pub fn run(client: &Client, ns: &str, new: &Dtab, version: Option<&str>, json: bool) -> Result<(), Failure> {
    if let Some(version) = version {
        let current = client.get(ns)?;
        if current.version.as_deref() != Some(version) {
            return Err(Failure::new(
                Exit::Conflict,
                format!(
                    "namespace {ns} is no longer at version {version} (now {}); the update would be refused",
                    current.version.as_deref().unwrap_or("unknown")
                ),
            ));
        }
    }
    let names = client.bound_names(ns)?;
    let changes = compare(&names, |name| client.bind(Some(ns), name, None), |name| client.bind(None, name, Some(new)))?;
    if json {
        let report = Report { namespace: ns, bound: names.len(), changes: &changes };
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print!("{}", render(ns, names.len(), &changes, &Style::for_stdout()));
    }
    if changes.iter().any(|c| c.breaks) { Err(Failure::silent(Exit::Differs)) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(json: &str) -> BoundTreeJson {
        serde_json::from_str(json).unwrap()
    }

    fn leaf(id: &str, port: u16) -> String {
        format!(
            r#"{{"type":"leaf","bound":{{"addr":{{"type":"bound","addrs":[{{"ip":"127.0.0.1","port":{port},"meta":{{}}}}],"meta":{{}}}},"id":"{id}","path":"/"}}}}"#
        )
    }

    #[test]
    fn trees_print_compactly() {
        let union = format!(
            r#"{{"type":"union","union":[{{"weight":0.9,"tree":{}}},{{"weight":0.1,"tree":{{"type":"alt","alt":[{},{{"type":"neg"}}]}}}}]}}"#,
            leaf("/#/io.l5d.fs/v1", 1),
            leaf("/#/io.l5d.fs/v2", 2)
        );
        assert_eq!(compact(&tree(&union)), "0.90*/#/io.l5d.fs/v1 & 0.10*(/#/io.l5d.fs/v2 | ~)");
        let residual = r#"{"type":"leaf","bound":{"id":"/$/inet/h/1","path":"/x/y"}}"#;
        assert_eq!(compact(&tree(residual)), "/$/inet/h/1 residual /x/y");
        assert_eq!(compact(&tree(r#"{"type":"fail"}"#)), "!");
        assert_eq!(compact(&tree(r#"{"type":"empty"}"#)), "$");
        assert_eq!(weight(1.0 / 3.0), (1.0f64 / 3.0).to_string());
    }

    #[test]
    fn outcomes_follow_binding_semantics() {
        assert_eq!(outcome(&tree(r#"{"type":"alt","alt":[{"type":"neg"},{"type":"empty"}]}"#)), Outcome::Empty);
        assert_eq!(outcome(&tree(r#"{"type":"alt","alt":[{"type":"neg"}]}"#)), Outcome::Neg);
        let neg_leaf = r#"{"type":"leaf","bound":{"addr":{"type":"neg"},"id":"/#/x","path":"/"}}"#;
        assert_eq!(outcome(&tree(neg_leaf)), Outcome::Neg);
        let union = format!(
            r#"{{"type":"union","union":[{{"weight":1,"tree":{{"type":"fail"}}}},{{"weight":1,"tree":{}}}]}}"#,
            leaf("/#/a", 1)
        );
        assert_eq!(outcome(&tree(&union)), Outcome::Bound);
    }

    #[test]
    fn only_changed_names_are_reported_and_new_breakage_is_flagged() {
        let names: Vec<String> =
            ["/svc/same", "/svc/moved", "/svc/gone", "/svc/error", "/svc/was-neg"].map(String::from).into();
        let before = |name: &str| {
            Ok(match name {
                "/svc/same" => Bound::Tree(tree(&leaf("/#/io.l5d.fs/same", 1))),
                "/svc/was-neg" => Bound::Tree(tree(r#"{"type":"neg"}"#)),
                other => Bound::Tree(tree(&leaf(&format!("/#/io.l5d.fs{}", &other[4..]), 1))),
            })
        };
        let after = |name: &str| {
            Ok(match name {
                // Only the addresses differ: not a change a dtab made.
                "/svc/same" => Bound::Tree(tree(&leaf("/#/io.l5d.fs/same", 2))),
                "/svc/moved" => Bound::Tree(tree(&leaf("/#/io.l5d.fs/elsewhere", 1))),
                "/svc/gone" => Bound::Tree(tree(r#"{"type":"neg"}"#)),
                "/svc/error" => Bound::Failed("Max recursion level reached\n".into()),
                _ => Bound::Tree(tree(r#"{"type":"empty"}"#)),
            })
        };
        let changes = compare(&names, before, after).unwrap();
        let summary: Vec<(&str, Outcome, bool)> =
            changes.iter().map(|c| (c.name.as_str(), c.outcome, c.breaks)).collect();
        assert_eq!(
            summary,
            vec![
                ("/svc/moved", Outcome::Bound, false),
                ("/svc/gone", Outcome::Neg, true),
                ("/svc/error", Outcome::Fail, true),
                ("/svc/was-neg", Outcome::Empty, false),
            ]
        );
        let text = render("default", 5, &changes, &Style::plain());
        assert!(text.starts_with("4 of 5 names bound in default would resolve differently:\n"), "{text}");
        assert!(
            text.contains("! /svc/gone\n    before: /#/io.l5d.fs/gone\n    after:  ~\n    ! would become negative"),
            "{text}"
        );
        assert!(text.contains("    after:  binding fails: Max recursion level reached\n"), "{text}");
        assert!(text.contains("  /svc/was-neg\n    before: ~\n    after:  $\n    ~ would be empty: no endpoints (it does not resolve now either)"), "{text}");
        assert!(text.ends_with("\n2 names would break: /svc/gone, /svc/error\n"), "{text}");
    }

    #[test]
    fn nothing_bound_or_nothing_changed_says_so() {
        assert_eq!(render("ns", 0, &[], &Style::plain()), "No names are bound in ns now; nothing to compare.\n");
        assert_eq!(
            render("ns", 3, &[], &Style::plain()),
            "No change: all 3 names bound in ns would resolve as they do now.\n"
        );
    }
}
