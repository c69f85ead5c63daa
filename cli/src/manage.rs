//! namerctl's commands (`list`, `get`, `create`, `update`, `delete`) with namerctl's output,
//! and the ones it lacks: `diff`, `history` and `rollback`.

use serde::Serialize;
use waymark_dtab::Dtab;
use waymark_dtab::json::{DentryJson, dtab_from_json};

use crate::client::{ChangeNote, Client, HistoryEntry, Versioned};
use crate::diff::{self, Op};
use crate::dry_run;
use crate::exit::{Exit, Failure};
use crate::input::read_dtab;
use crate::style::Style;

/// `waymark dtab update`'s arguments.
#[derive(Debug)]
pub struct Update<'a> {
    /// The namespace.
    pub namespace: &'a str,
    /// The dtab file, or `-`.
    pub file: &'a str,
    /// `--version`.
    pub version: Option<String>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--json` (for the dry run).
    pub json: bool,
}

/// `get --json`: the dtab with its version, as namerctl prints it.
#[derive(Debug, Serialize)]
struct VersionedJson<'a> {
    version: &'a str,
    dtab: Vec<DentryJson>,
}

/// One line of `diff --json`.
#[derive(Debug, Serialize)]
struct DiffLineJson {
    op: Op,
    prefix: String,
    dst: String,
}

/// `diff --json`.
#[derive(Debug, Serialize)]
struct DiffJson<'a> {
    version: Option<&'a str>,
    changes: Vec<DiffLineJson>,
}

/// namerctl's pretty form: a line per dentry, the arrows aligned two columns after the
/// longest prefix, each line ending in ` ;`. It is a valid dtab, so it can be edited and
/// given back to `create` or `update`.
pub fn pretty(dtab: &Dtab) -> String {
    let prefixes: Vec<String> = dtab.iter().map(|d| d.prefix().to_string()).collect();
    let width = prefixes.iter().map(|p| p.chars().count()).max().unwrap_or(0);
    dtab.iter()
        .zip(&prefixes)
        .map(|(d, prefix)| {
            let pad = " ".repeat(width - prefix.chars().count());
            format!("{prefix}  {pad}=> {} ;\n", d.dst())
        })
        .collect()
}

/// namerctl's `--pretty=false` form: `prefix=>dst;` for each dentry, on one line.
pub fn compact(dtab: &Dtab) -> String {
    dtab.iter().map(|d| format!("{d};")).collect()
}

/// The JSON `get --json` prints: `{"version":"<etag>","dtab":[{"prefix","dst"}]}`.
pub fn versioned_json(versioned: &Versioned) -> String {
    let json = VersionedJson { version: versioned.version.as_deref().unwrap_or(""), dtab: (&versioned.dtab).into() };
    serde_json::to_string(&json).unwrap_or_default()
}

/// `waymark dtab list`: one namespace per line, or the JSON array.
pub fn list(client: &Client, json: bool) -> Result<(), Failure> {
    let names = client.list()?;
    if json {
        println!("{}", serde_json::to_string(&names).unwrap_or_default());
    } else {
        for name in names {
            println!("{name}");
        }
    }
    Ok(())
}

/// `waymark dtab get`: namerctl's pretty form with a `# version` line, the one-line form,
/// or JSON with the version.
pub fn get(client: &Client, ns: &str, pretty_form: bool, json: bool) -> Result<(), Failure> {
    let versioned = client.get(ns)?;
    if json {
        println!("{}", versioned_json(&versioned));
    } else if pretty_form {
        if let Some(version) = &versioned.version {
            println!("# version {version}");
        }
        print!("{}", pretty(&versioned.dtab));
    } else {
        println!("{}", compact(&versioned.dtab));
    }
    Ok(())
}

/// `waymark dtab create`.
pub fn create(client: &Client, ns: &str, file: &str, note: &ChangeNote) -> Result<(), Failure> {
    let input = read_dtab(file)?;
    client.create(ns, &input.dtab, note)?;
    println!("Created {ns}");
    Ok(())
}

/// `waymark dtab update`: with `--version` or a versioned JSON file, a compare-and-swap;
/// with `--dry-run`, only a report.
pub fn update(client: &Client, args: Update<'_>, note: &ChangeNote) -> Result<(), Failure> {
    let input = read_dtab(args.file)?;
    let flag = args.version.filter(|v| !v.is_empty());
    let version = match (flag, input.version) {
        (Some(flag), Some(file)) if flag != file => {
            return Err(Failure::new(
                Exit::Error,
                format!("--version {flag} and the version in {} ({file}) differ; give one", args.file),
            ));
        }
        (flag, file) => flag.or(file),
    };
    if args.dry_run {
        return dry_run::run(client, args.namespace, &input.dtab, version.as_deref(), args.json);
    }
    client.update(args.namespace, &input.dtab, version.as_deref(), note)?;
    println!("Updated {}", args.namespace);
    Ok(())
}

/// `waymark dtab delete`.
pub fn delete(client: &Client, ns: &str, note: &ChangeNote) -> Result<(), Failure> {
    client.delete(ns, note)?;
    println!("Deleted {ns}");
    Ok(())
}

/// How the live side of a diff is named: `web (version AAAAAAAAAAE=)`.
pub fn live_name(ns: &str, version: Option<&str>) -> String {
    match version {
        Some(version) => format!("{ns} (version {version})"),
        None => ns.to_string(),
    }
}

/// `waymark dtab diff`: the live dtab against a file; [`Exit::Differs`] when they differ.
pub fn diff(client: &Client, ns: &str, file: &str, json: bool) -> Result<(), Failure> {
    let input = read_dtab(file)?;
    let live = client.get(ns)?;
    let lines = diff::diff(&live.dtab, &input.dtab);
    if json {
        let changes = lines
            .iter()
            .map(|l| DiffLineJson { op: l.op, prefix: l.dentry.prefix().to_string(), dst: l.dentry.dst().to_string() })
            .collect();
        let json = DiffJson { version: live.version.as_deref(), changes };
        println!("{}", serde_json::to_string(&json).unwrap_or_default());
    } else {
        let file_name = if file == "-" { "<stdin>" } else { file };
        print!("{}", diff::render(&lines, &live_name(ns, live.version.as_deref()), file_name, &Style::for_stdout()));
    }
    if diff::has_changes(&lines) { Err(Failure::silent(Exit::Differs)) } else { Ok(()) }
}

fn entry_dtab(entry: &HistoryEntry) -> Result<Option<Dtab>, Failure> {
    entry
        .dtab
        .as_deref()
        .map(|dentries| {
            dtab_from_json(dentries).map_err(|e| {
                Failure::new(Exit::Error, format!("the history entry {} does not parse: {e}", entry.version))
            })
        })
        .transpose()
}

/// What an entry changed compared with the one before it (the next in the list).
fn change_summary(entry: &HistoryEntry, before: Option<&HistoryEntry>) -> Result<String, Failure> {
    let Some(after) = entry_dtab(entry)? else { return Ok("deleted".to_string()) };
    let before = match before {
        None => return Ok(format!("{} dentries", after.len())),
        Some(before) => entry_dtab(before)?,
    };
    Ok(match before {
        None => format!("created, {} dentries", after.len()),
        Some(before) => diff::summary(diff::counts(&diff::diff(&before, &after))),
    })
}

/// The history as a table: version, time, author, message and what changed.
pub fn history_table(entries: &[HistoryEntry]) -> Result<String, Failure> {
    let mut rows = vec![["VERSION", "AT", "AUTHOR", "CHANGE", "MESSAGE"].map(String::from)];
    for (i, entry) in entries.iter().enumerate() {
        rows.push([
            entry.version.clone(),
            entry.at.clone(),
            entry.author.clone().unwrap_or_else(|| "-".to_string()),
            change_summary(entry, entries.get(i + 1))?,
            entry.message.as_deref().map(one_line).unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..4).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c < 4 {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// A message on one line: a table row must not break.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `waymark dtab history`.
pub fn history(client: &Client, ns: &str, json: bool) -> Result<(), Failure> {
    let history = client.history(ns)?;
    if json {
        println!("{}", history.raw.trim_end());
    } else {
        print!("{}", history_table(&history.entries)?);
    }
    Ok(())
}

/// Two ETags name the same version, whether or not one is quoted.
fn same_version(a: &str, b: &str) -> bool {
    a.trim().trim_matches('"') == b.trim().trim_matches('"')
}

/// The entry `rollback` restores by default: the newest one older than the current version
/// whose dtab differs from the current dtab (or, for a deleted namespace, the dtab it had).
pub fn default_target<'h>(
    ns: &str,
    entries: &'h [HistoryEntry],
    current: Option<&Versioned>,
) -> Result<&'h HistoryEntry, Failure> {
    let fail = |message: String| Failure::new(Exit::Error, message);
    let (start, current_dtab) = match current {
        Some(current) => {
            let version = current.version.as_deref().unwrap_or("");
            let at = entries.iter().position(|e| same_version(&e.version, version)).ok_or_else(|| {
                fail(format!("the current version {version} of {ns} is not in its history; name one with --to"))
            })?;
            (at + 1, Some(&current.dtab))
        }
        // Deleted: the newest entry is the deletion; restore what was there before it.
        None => (entries.iter().position(|e| e.dtab.is_none()).map_or(0, |at| at + 1), None),
    };
    for entry in &entries[start..] {
        match (entry_dtab(entry)?, current_dtab) {
            (None, _) => {
                return Err(fail(format!(
                    "the change before the current one deleted {ns}, which cannot be rolled back to; name a \
                     version with --to"
                )));
            }
            (Some(dtab), Some(current)) if &dtab == current => continue,
            (Some(_), _) => return Ok(entry),
        }
    }
    Err(fail(format!("the history of {ns} has no earlier dtab to roll back to")))
}

/// `waymark dtab rollback`: restores an earlier dtab from the history with the current
/// version as If-Match, so that a change made meanwhile wins and nothing is applied. A
/// deleted namespace is restored with a create, which fails if it was re-created meanwhile.
pub fn rollback(
    client: &Client,
    ns: &str,
    to: Option<&str>,
    author: Option<String>,
    message: Option<String>,
) -> Result<(), Failure> {
    // The current version first: if the history then holds a newer one, the write below is
    // refused, as it should be.
    let current = match client.get(ns) {
        Ok(current) => Some(current),
        Err(failure) if failure.exit == Exit::NotFound => None,
        Err(failure) => return Err(failure),
    };
    let history = client.history(ns)?;
    let target = match to {
        Some(version) => history
            .entries
            .iter()
            .find(|e| same_version(&e.version, version))
            .ok_or_else(|| Failure::new(Exit::Error, format!("version {version} is not in the history of {ns}")))?,
        None => default_target(ns, &history.entries, current.as_ref())?,
    };
    let Some(dtab) = entry_dtab(target)? else {
        return Err(Failure::new(
            Exit::Error,
            format!("version {} deleted {ns}; a deletion cannot be rolled back to", target.version),
        ));
    };
    let note = ChangeNote::new(author, Some(message.unwrap_or_else(|| format!("rollback to {}", target.version))));
    match &current {
        Some(current) if current.dtab == dtab => {
            println!("{ns} already has the dtab of version {}; nothing to roll back", target.version);
            return Ok(());
        }
        Some(current) => {
            let version = current.version.as_deref().ok_or_else(|| {
                Failure::new(Exit::Error, format!("the namer sent no version for {ns}; cannot roll back safely"))
            })?;
            client.update(ns, &dtab, Some(version), &note)?;
        }
        None => {
            client.create(ns, &dtab, &note)?;
        }
    }
    println!("Rolled back {ns} to version {}", target.version);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dtab(text: &str) -> Dtab {
        text.parse().unwrap()
    }

    fn entry(version: &str, dtab_text: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            version: version.to_string(),
            dtab: dtab_text.map(|t| (&dtab(t)).into()),
            at: "2030-01-02T03:04:05.678Z".to_string(),
            author: None,
            message: None,
        }
    }

    #[test]
    fn pretty_output_aligns_arrows_as_namerctl_does_and_parses_back() {
        let d = dtab("/svc=>/#/io.l5d.fs;/svc/web=>0.9*/a & 0.1*/b;/x=>~");
        let text = pretty(&d);
        assert_eq!(
            text,
            "/svc      => /#/io.l5d.fs ;\n\
             /svc/web  => 0.90*/a & 0.10*/b ;\n\
             /x        => ~ ;\n"
        );
        let with_version = format!("# version AAAAAAAAAAE=\n{text}");
        assert_eq!(with_version.parse::<Dtab>().unwrap(), d);
        assert_eq!(pretty(&Dtab::empty()), "");
    }

    #[test]
    fn compact_and_json_forms() {
        let d = dtab("/a=>/b;/c=>/d | /e");
        assert_eq!(compact(&d), "/a=>/b;/c=>/d | /e;");
        let versioned = Versioned { version: Some("AAAAAAAAAAE=".into()), dtab: d };
        assert_eq!(
            versioned_json(&versioned),
            r#"{"version":"AAAAAAAAAAE=","dtab":[{"prefix":"/a","dst":"/b"},{"prefix":"/c","dst":"/d | /e"}]}"#
        );
    }

    #[test]
    fn history_tables_summarise_each_change() {
        let mut entries = vec![
            entry("AAAAAAAAAAM=", None),
            entry("AAAAAAAAAAI=", Some("/a=>/v2;/b=>/c")),
            entry("AAAAAAAAAAE=", Some("/a=>/v1")),
        ];
        entries[1].author = Some("alice".into());
        entries[1].message = Some("move a\nto v2".into());
        let table = history_table(&entries).unwrap();
        assert_eq!(
            table,
            "VERSION       AT                        AUTHOR  CHANGE      MESSAGE\n\
             AAAAAAAAAAM=  2030-01-02T03:04:05.678Z  -       deleted\n\
             AAAAAAAAAAI=  2030-01-02T03:04:05.678Z  alice   +2 -1       move a to v2\n\
             AAAAAAAAAAE=  2030-01-02T03:04:05.678Z  -       1 dentries\n"
        );
        let recreated = [entry("AAAAAAAAAAE=", Some("/a=>/b")), entry("AAAAAAAAAAM=", None)];
        assert!(history_table(&recreated).unwrap().contains("created, 1 dentries"));
    }

    #[test]
    fn rollback_goes_one_real_change_back() {
        let entries = [
            entry("v4", Some("/a=>/2")),
            entry("v3", Some("/a=>/2")),
            entry("v2", Some("/a=>/1")),
            entry("v1", Some("/a=>/0")),
        ];
        let current = Versioned { version: Some("v4".into()), dtab: dtab("/a=>/2") };
        assert_eq!(default_target("ns", &entries, Some(&current)).unwrap().version, "v2");
        let quoted = Versioned { version: Some("\"v2\"".into()), dtab: dtab("/a=>/1") };
        assert_eq!(default_target("ns", &entries, Some(&quoted)).unwrap().version, "v1");

        let unknown = Versioned { version: Some("v9".into()), dtab: dtab("/a=>/2") };
        let err = default_target("ns", &entries, Some(&unknown)).unwrap_err();
        assert!(err.message.contains("not in its history"), "{}", err.message);
        let oldest = Versioned { version: Some("v1".into()), dtab: dtab("/a=>/0") };
        assert!(default_target("ns", &entries, Some(&oldest)).unwrap_err().message.contains("no earlier dtab"));
    }

    #[test]
    fn rollback_does_not_go_back_to_a_deletion_but_restores_a_deleted_namespace() {
        let entries = [entry("v3", Some("/a=>/new")), entry("v2", None), entry("v1", Some("/a=>/old"))];
        let current = Versioned { version: Some("v3".into()), dtab: dtab("/a=>/new") };
        let err = default_target("ns", &entries, Some(&current)).unwrap_err();
        assert!(err.message.contains("deleted ns, which cannot be rolled back to"), "{}", err.message);

        let deleted = [entry("v2", None), entry("v1", Some("/a=>/old"))];
        assert_eq!(default_target("ns", &deleted, None).unwrap().version, "v1");
    }
}
