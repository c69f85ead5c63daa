//! `waymark delegate`: explain how a path resolves, as an indented tree a person can read at a
//! glance, or as namerd's JSON.
//!
//! The renderer works on namerd's JSON shape, so that the same output comes from an offline
//! explanation, from our namer and from namerd itself.

use std::net::SocketAddr;

use waymark_dtab::global::InetTarget;
use waymark_dtab::json::{BoundJson, DelegateJson, DentryJson};
use waymark_dtab::{Addr, BoundName, DEFAULT_MAX_DEPTH, Dtab, Namers, Path};

use crate::client::Client;
use crate::exit::{Exit, Failure};
use crate::fmt::parse_file;
use crate::style::Style;

/// What a subtree amounts to, as binding would see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// It binds to something with (possibly) endpoints.
    Bound,
    /// It exists but has no endpoints (`$`); it still stops fall-through.
    Empty,
    /// Nothing here; an alternative falls through to the next one.
    Neg,
    /// It fails, and an alternative stops here.
    Fail,
}

/// What `node` amounts to: an alternative takes its first non-negative child, a union is
/// bound if any branch is.
fn outcome(node: &DelegateJson) -> Outcome {
    match node {
        DelegateJson::Delegate { delegate, .. } => outcome(delegate),
        DelegateJson::Alt { alt, .. } => alt.iter().map(outcome).find(|o| *o != Outcome::Neg).unwrap_or(Outcome::Neg),
        DelegateJson::Union { union, .. } => {
            let outcomes: Vec<Outcome> = union.iter().map(|w| outcome(&w.tree)).collect();
            [Outcome::Bound, Outcome::Empty, Outcome::Fail]
                .into_iter()
                .find(|o| outcomes.contains(o))
                .unwrap_or(Outcome::Neg)
        }
        DelegateJson::Leaf { bound, .. } => match &bound.addr {
            Some(Addr::Neg) => Outcome::Neg,
            Some(Addr::Failed { .. }) => Outcome::Fail,
            _ => Outcome::Bound,
        },
        DelegateJson::Neg { .. } => Outcome::Neg,
        DelegateJson::Fail { .. } | DelegateJson::Exception { .. } => Outcome::Fail,
        DelegateJson::Empty { .. } => Outcome::Empty,
        DelegateJson::Transformation { tree, .. } => outcome(tree),
    }
}

fn dentry_text(dentry: &Option<DentryJson>) -> Option<String> {
    dentry.as_ref().map(|d| format!("{} => {}", d.prefix, d.dst))
}

fn addresses(addr: &Option<Addr>, style: &Style) -> String {
    match addr {
        None => String::new(),
        Some(Addr::Pending) => style.dim("(addresses pending)"),
        Some(Addr::Neg) => style.yellow("(no such name)"),
        Some(Addr::Failed { cause }) => style.red(&format!("(failed: {cause})")),
        Some(Addr::Bound { addrs, .. }) if addrs.is_empty() => style.yellow("(no endpoints)"),
        Some(Addr::Bound { addrs, .. }) => {
            const SHOWN: usize = 4;
            let mut list: Vec<String> = addrs.iter().take(SHOWN).map(|a| a.socket_addr().to_string()).collect();
            if addrs.len() > SHOWN {
                list.push(format!("+{} more", addrs.len() - SHOWN));
            }
            style.green(&list.join(", "))
        }
    }
}

fn bound_text(bound: &BoundJson, style: &Style) -> String {
    let residual = if bound.path == "/" { String::new() } else { format!(" residual {}", bound.path) };
    let addrs = addresses(&bound.addr, style);
    let sep = if addrs.is_empty() { "" } else { "  " };
    format!("{} {}{residual}{sep}{addrs}", style.green("bound"), style.bold(&bound.id))
}

/// One line per node: the path, what it became, and (dimmed) the dentry that produced it.
fn line(node: &DelegateJson, style: &Style) -> String {
    let (path, dentry, what) = match node {
        DelegateJson::Delegate { path, dentry, .. } => (path, dentry, String::new()),
        DelegateJson::Alt { path, dentry, .. } => (path, dentry, style.dim("one of:")),
        DelegateJson::Union { path, dentry, .. } => (path, dentry, style.dim("split by weight:")),
        DelegateJson::Leaf { path, dentry, bound } => (path, dentry, bound_text(bound, style)),
        DelegateJson::Neg { path, dentry } => (path, dentry, style.yellow("~ negative")),
        DelegateJson::Fail { path, dentry } => (path, dentry, style.red("! fail")),
        DelegateJson::Empty { path, dentry } => (path, dentry, style.yellow("$ empty")),
        DelegateJson::Exception { path, dentry, message } => (path, dentry, style.red(&format!("error: {message}"))),
        DelegateJson::Transformation { path, name, bound, .. } => {
            (path, &None, format!("{} by {name}", bound_text(bound, style)))
        }
    };
    let mut out = style.bold(path);
    if !what.is_empty() {
        out.push_str("  ");
        out.push_str(&what);
    }
    if let Some(d) = dentry_text(dentry) {
        out.push_str("  ");
        out.push_str(&style.dim(&format!("[{d}]")));
    }
    out
}

fn children(node: &DelegateJson) -> Vec<(Option<f64>, &DelegateJson)> {
    match node {
        DelegateJson::Delegate { delegate, .. } => vec![(None, delegate.as_ref())],
        DelegateJson::Alt { alt, .. } => alt.iter().map(|c| (None, c)).collect(),
        DelegateJson::Union { union, .. } => union.iter().map(|w| (Some(w.weight), &w.tree)).collect(),
        DelegateJson::Transformation { tree, .. } => vec![(None, tree.as_ref())],
        _ => Vec::new(),
    }
}

/// Renders a delegation tree as indented lines. In an alternative, the branch that binding
/// takes is marked `=>`; the others are the fall-backs it did not need.
pub fn render(tree: &DelegateJson, style: &Style) -> String {
    let mut out = String::new();
    render_into(tree, style, "", "", &mut out);
    out
}

fn render_into(node: &DelegateJson, style: &Style, lead: &str, child_lead: &str, out: &mut String) {
    out.push_str(lead);
    out.push_str(&line(node, style));
    out.push('\n');
    let kids = children(node);
    let chosen = match node {
        DelegateJson::Alt { .. } => kids.iter().position(|(_, c)| outcome(c) != Outcome::Neg),
        _ => None,
    };
    for (i, (weight, kid)) in kids.iter().enumerate() {
        let last = i + 1 == kids.len();
        let mut branch = String::from(if last { "└─ " } else { "├─ " });
        if let Some(w) = weight {
            branch.push_str(&style.dim(&format!("{w:.2} × ")));
        }
        if chosen == Some(i) {
            branch.push_str(&style.green("=> "));
        }
        let lead = format!("{child_lead}{branch}");
        let next = format!("{child_lead}{}", if last { "   " } else { "│  " });
        render_into(kid, style, &lead, &next, out);
    }
}

/// The address of an inet id whose host is an IP literal; offline, nothing else is known.
fn literal_addr(name: &BoundName) -> Option<Addr> {
    let target = InetTarget::from_id(name.id())?;
    let ip = target.literal_ip()?;
    Some(Addr::bound([SocketAddr::new(ip, target.port)]))
}

fn parse_path(path: &str) -> Result<Path, Failure> {
    path.parse().map_err(|e: waymark_dtab::ParseError| {
        Failure::new(Exit::Invalid, format!("invalid path: {}", e.message())).with_detail(e.excerpt())
    })
}

/// Runs `waymark delegate --dtab DTAB PATH` offline: only the built-in `/$/` namers, and
/// addresses only for IP literals.
pub fn run_offline(dtab: &str, path: &str, json: bool) -> Result<(), Failure> {
    let dtab: Dtab = parse_file(dtab, "--dtab")?;
    let path = parse_path(path)?;
    let tree = waymark_dtab::delegate(&dtab, &Namers::new(), &path, DEFAULT_MAX_DEPTH)
        .map_err(|e| Failure::new(Exit::Invalid, format!("cannot delegate {path}: {e}")))?;
    let tree = DelegateJson::from_tree(&tree, &mut literal_addr);
    print_tree(&tree, json);
    Ok(())
}

/// Runs `waymark delegate NAMESPACE PATH [--dtab EXTRA]`: the namer explains `path` through
/// the namespace's dtab followed by `extra`, with its namers and live addresses. `--json`
/// prints the namer's answer as it came.
pub fn run_online(client: &Client, ns: &str, path: &str, extra: Option<&str>, json: bool) -> Result<(), Failure> {
    // Checked here first, so that a typo gets a caret rather than the namer's 400.
    let path = parse_path(path)?;
    let extra = extra.map(|text| parse_file(text, "--dtab")).transpose()?;
    let delegation = client.delegate(ns, &path.to_string(), extra.as_ref())?;
    if json {
        println!("{}", delegation.raw.trim_end());
    } else {
        print!("{}", render(&delegation.tree, &Style::for_stdout()));
    }
    Ok(())
}

/// Prints a delegation tree as namerd's JSON or as the indented tree.
pub fn print_tree(tree: &DelegateJson, json: bool) {
    if json {
        println!("{}", serde_json::to_string(tree).unwrap_or_default());
    } else {
        print!("{}", render(tree, &Style::for_stdout()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explain(dtab: &str, path: &str) -> String {
        let dtab: Dtab = dtab.parse().unwrap();
        let tree = waymark_dtab::delegate(&dtab, &Namers::new(), &path.parse().unwrap(), 100).unwrap();
        render(&DelegateJson::from_tree(&tree, &mut literal_addr), &Style::plain())
    }

    #[test]
    fn the_chosen_alternative_is_marked_and_dentries_are_shown() {
        let text = explain("/svc/web=>/svc/web-v2 | /$/nil;/svc/web-v2=>~", "/svc/web");
        assert_eq!(
            text,
            "/svc/web  one of:\n\
             ├─ /svc/web-v2  [/svc/web => /svc/web-v2 | /$/nil]\n\
             │  └─ ~  ~ negative  [/svc/web-v2 => ~]\n\
             └─ => /$/nil  $ empty  [/svc/web => /svc/web-v2 | /$/nil]\n"
        );
    }

    #[test]
    fn unions_show_weights_and_leaves_show_addresses() {
        let text = explain("/a=>0.3*/$/inet/127.0.0.1/2 & 0.7*/b", "/a/x");
        assert_eq!(
            text,
            "/a/x  split by weight:\n\
             ├─ 0.30 × /$/inet/127.0.0.1/2/x  bound /$/inet/127.0.0.1/2 residual /x  127.0.0.1:2  [/a => 0.30*/$/inet/127.0.0.1/2 & 0.70*/b]\n\
             └─ 0.70 × /b/x  ~ negative  [/a => 0.30*/$/inet/127.0.0.1/2 & 0.70*/b]\n"
        );
    }
}
