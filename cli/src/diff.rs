//! Dentry-by-dentry differences between two dtabs: a longest common subsequence over the
//! dentries' canonical text, so that a changed dentry shows as one removal and one addition
//! and moved dentries show where they went (order matters in a dtab).

use serde::Serialize;
use waymark_dtab::{Dentry, Dtab};

use crate::style::Style;

/// Unchanged dentries shown around each change; longer unchanged runs are elided.
const CONTEXT: usize = 3;

/// Above this many cells the quadratic table is not built; the middle is shown as removed
/// and re-added instead (still correct, only not minimal).
const MAX_TABLE_CELLS: usize = 16_000_000;

/// What happened to one dentry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// In both.
    Unchanged,
    /// Only in the old dtab.
    Removed,
    /// Only in the new dtab.
    Added,
}

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// What happened.
    pub op: Op,
    /// The dentry.
    pub dentry: &'a Dentry,
}

/// How many dentries were added and removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Dentries only in the new dtab.
    pub added: usize,
    /// Dentries only in the old dtab.
    pub removed: usize,
}

/// The dentries of `old` and `new` in order, each marked unchanged, removed or added.
pub fn diff<'a>(old: &'a Dtab, new: &'a Dtab) -> Vec<Line<'a>> {
    let a: Vec<String> = old.iter().map(ToString::to_string).collect();
    let b: Vec<String> = new.iter().map(ToString::to_string).collect();
    let (old, new) = (old.dentries(), new.dentries());

    // Common ends first: most edits touch a few dentries of a long dtab.
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..].iter().rev().zip(b[head..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (a_mid, b_mid) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);

    let mut lines: Vec<Line<'a>> = old[..head].iter().map(|d| Line { op: Op::Unchanged, dentry: d }).collect();
    let (n, m) = (a_mid.len(), b_mid.len());
    if n.saturating_mul(m) > MAX_TABLE_CELLS {
        lines.extend(old[head..head + n].iter().map(|d| Line { op: Op::Removed, dentry: d }));
        lines.extend(new[head..head + m].iter().map(|d| Line { op: Op::Added, dentry: d }));
    } else {
        // lcs[i][j]: the longest common subsequence of a_mid[i..] and b_mid[j..].
        let mut lcs = vec![vec![0u32; m + 1]; n + 1];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i][j] = if a_mid[i] == b_mid[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && a_mid[i] == b_mid[j] {
                lines.push(Line { op: Op::Unchanged, dentry: &old[head + i] });
                (i, j) = (i + 1, j + 1);
            } else if j == m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1]) {
                // Removals before additions, so that a replaced dentry reads old then new.
                lines.push(Line { op: Op::Removed, dentry: &old[head + i] });
                i += 1;
            } else {
                lines.push(Line { op: Op::Added, dentry: &new[head + j] });
                j += 1;
            }
        }
    }
    lines.extend(old[old.len() - tail..].iter().map(|d| Line { op: Op::Unchanged, dentry: d }));
    lines
}

/// How many dentries a diff adds and removes.
pub fn counts(lines: &[Line<'_>]) -> Counts {
    let count = |op| lines.iter().filter(|l| l.op == op).count();
    Counts { added: count(Op::Added), removed: count(Op::Removed) }
}

/// True if the diff has any change.
pub fn has_changes(lines: &[Line<'_>]) -> bool {
    lines.iter().any(|l| l.op != Op::Unchanged)
}

/// Renders a diff as `-`, `+` and ` ` lines of dentries in the canonical file form, under
/// a `---`/`+++` header naming both sides. Long unchanged runs are elided to [`CONTEXT`]
/// dentries either side of a change. Nothing at all when there is no change.
pub fn render(lines: &[Line<'_>], old_name: &str, new_name: &str, style: &Style) -> String {
    if !has_changes(lines) {
        return String::new();
    }
    let near_change = |at: usize| {
        let from = at.saturating_sub(CONTEXT);
        let to = (at + CONTEXT + 1).min(lines.len());
        lines[from..to].iter().any(|l| l.op != Op::Unchanged)
    };
    let mut out = format!("{}\n{}\n", style.bold(&format!("--- {old_name}")), style.bold(&format!("+++ {new_name}")));
    let mut elided = 0;
    for (at, line) in lines.iter().enumerate() {
        if line.op == Op::Unchanged && !near_change(at) {
            elided += 1;
            continue;
        }
        if elided > 0 {
            out.push_str(&style.dim(&format!("  ... {elided} unchanged\n")));
            elided = 0;
        }
        let text = format!("{};", line.dentry);
        let shown = match line.op {
            Op::Unchanged => format!("  {text}"),
            Op::Removed => style.red(&format!("- {text}")),
            Op::Added => style.green(&format!("+ {text}")),
        };
        out.push_str(&shown);
        out.push('\n');
    }
    if elided > 0 {
        out.push_str(&style.dim(&format!("  ... {elided} unchanged\n")));
    }
    out
}

/// A short summary: `+2 -1`, or `no change`.
pub fn summary(counts: Counts) -> String {
    match counts {
        Counts { added: 0, removed: 0 } => "no change".to_string(),
        Counts { added, removed } => format!("+{added} -{removed}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dtab(text: &str) -> Dtab {
        text.parse().unwrap()
    }

    fn ops(old: &str, new: &str) -> Vec<(Op, String)> {
        let (old, new) = (dtab(old), dtab(new));
        diff(&old, &new).iter().map(|l| (l.op, l.dentry.to_string())).collect()
    }

    #[test]
    fn a_changed_dentry_is_a_removal_then_an_addition() {
        assert_eq!(
            ops("/a=>/1;/b=>/2;/c=>/3", "/a=>/1;/b => /two;/c=>/3"),
            vec![
                (Op::Unchanged, "/a=>/1".into()),
                (Op::Removed, "/b=>/2".into()),
                (Op::Added, "/b=>/two".into()),
                (Op::Unchanged, "/c=>/3".into()),
            ]
        );
    }

    #[test]
    fn dentries_compare_in_canonical_form_and_moves_show() {
        assert!(!has_changes(&diff(&dtab("/a => 1*/b & /c"), &dtab("/a=>/b & /c"))));
        assert_eq!(
            ops("/a=>/1;/b=>/2", "/b=>/2;/a=>/1"),
            vec![(Op::Removed, "/a=>/1".into()), (Op::Unchanged, "/b=>/2".into()), (Op::Added, "/a=>/1".into())]
        );
        assert_eq!(ops("", "/a=>/1"), vec![(Op::Added, "/a=>/1".into())]);
        assert_eq!(ops("/a=>/1", ""), vec![(Op::Removed, "/a=>/1".into())]);
    }

    #[test]
    fn the_diff_is_minimal() {
        let old = "/a=>/1;/b=>/2;/c=>/3;/d=>/4;/e=>/5";
        let new = "/b=>/2;/x=>/9;/c=>/3;/e=>/5;/f=>/6";
        let lines = ops(old, new);
        let changes = counts(&diff(&dtab(old), &dtab(new)));
        assert_eq!(changes, Counts { added: 2, removed: 2 });
        assert_eq!(lines.iter().filter(|(op, _)| *op == Op::Unchanged).count(), 3);
        assert_eq!(summary(changes), "+2 -2");
        assert_eq!(summary(Counts::default()), "no change");
    }

    #[test]
    fn rendering_elides_long_unchanged_runs() {
        let old: Vec<String> = (0..12).map(|i| format!("/n{i}=>/v{i}")).collect();
        let mut new = old.clone();
        new[6] = "/n6=>/changed".to_string();
        let (old, new) = (dtab(&old.join(";")), dtab(&new.join(";")));
        let text = render(&diff(&old, &new), "live web (version AAAAAAAAAAE=)", "web.dtab", &Style::plain());
        assert_eq!(
            text,
            "--- live web (version AAAAAAAAAAE=)\n\
             +++ web.dtab\n\
             \x20 ... 3 unchanged\n\
             \x20 /n3=>/v3;\n\
             \x20 /n4=>/v4;\n\
             \x20 /n5=>/v5;\n\
             - /n6=>/v6;\n\
             + /n6=>/changed;\n\
             \x20 /n7=>/v7;\n\
             \x20 /n8=>/v8;\n\
             \x20 /n9=>/v9;\n\
             \x20 ... 2 unchanged\n"
        );
        assert_eq!(render(&diff(&old, &old), "a", "b", &Style::plain()), "");
    }
}
