//! `waymark dtab edit`: edit the live dtab in `$VISUAL` or `$EDITOR`, then review and apply
//! the change as a compare-and-swap on the version the edit started from, so that a change
//! someone made meanwhile is never overwritten.

use std::io::{BufRead, Write};
use std::path::Path as FsPath;
use std::process::Command;

use waymark_dtab::{Dtab, ParseError};

use crate::client::{ChangeNote, Client};
use crate::diff;
use crate::exit::{Exit, Failure};
use crate::fmt::canonical_file;
use crate::manage::live_name;
use crate::style::Style;

/// The editor to run: `$VISUAL`, then `$EDITOR`, then `vi`.
pub fn editor(env: &dyn Fn(&str) -> Option<String>) -> String {
    ["VISUAL", "EDITOR"]
        .iter()
        .find_map(|v| env(v).filter(|e| !e.trim().is_empty()))
        .unwrap_or_else(|| "vi".to_string())
}

/// What the file holds when the editor first opens.
pub fn initial_text(ns: &str, version: &str, dtab: &Dtab) -> String {
    format!(
        "# The dtab of namespace {ns} at version {version}, one dentry per line.\n\
         # Lines starting with '#' are ignored. Save to review the change before it is applied;\n\
         # save an empty file to cancel.\n{}",
        canonical_file(dtab)
    )
}

/// The comment put above the text when it does not parse. Line numbers count from the top
/// of the file the user will see, that is, with this comment in place.
pub fn error_comment(error: &ParseError) -> String {
    let excerpt: String = error.excerpt().lines().map(|l| format!("#{l}\n")).collect();
    let lines = 3 + excerpt.lines().count();
    format!(
        "# error: line {}, column {}: {}\n{excerpt}# Fix the dtab and save, or save an empty file to cancel.\n#\n",
        error.line() + lines,
        error.column(),
        error.message()
    )
}

/// Runs the editor on `path`, through the shell so that `$EDITOR` may carry arguments
/// (`code --wait`), as git does.
fn open_editor(editor: &str, path: &FsPath) -> Result<(), Failure> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$@\""))
        .arg(editor)
        .arg(path)
        .status()
        .map_err(|e| Failure::new(Exit::Error, format!("cannot start the editor {editor}: {e}")))?;
    if !status.success() {
        return Err(Failure::new(Exit::Error, format!("the editor {editor} failed ({status}); nothing applied")));
    }
    Ok(())
}

fn read(path: &FsPath) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::new(Exit::Error, format!("reading {}: {e}", path.display())))
}

fn write(path: &FsPath, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(|e| Failure::new(Exit::Error, format!("writing {}: {e}", path.display())))
}

/// Asks on standard error and reads the answer from standard input; only `y` or `yes` agree.
fn confirm(question: &str) -> bool {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    match std::io::stdin().lock().read_line(&mut answer) {
        Ok(_) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        Err(_) => false,
    }
}

/// Opens the editor until the file parses. Cancelled when the file is saved empty, and
/// refused when it is saved unchanged after a parse error (the dtab still does not parse).
fn edit_until_valid(editor: &str, path: &FsPath, first: &str) -> Result<Dtab, Failure> {
    let mut written = first.to_string();
    let mut comment = String::new();
    let mut last_error: Option<Failure> = None;
    loop {
        open_editor(editor, path)?;
        let text = read(path)?;
        if text.trim().is_empty() {
            return Err(Failure::new(Exit::Error, "the file was saved empty; edit cancelled, nothing applied"));
        }
        if let Some(error) = last_error.take()
            && text == written
        {
            return Err(Failure::new(error.exit, format!("{}; nothing applied", error.message))
                .with_detail(error.detail.unwrap_or_default()));
        }
        // The previous error comment, if still there untouched, is not part of the dtab.
        let body = text.strip_prefix(comment.as_str()).unwrap_or(&text);
        match body.parse::<Dtab>() {
            Ok(dtab) => return Ok(dtab),
            Err(error) => {
                comment = error_comment(&error);
                written = format!("{comment}{body}");
                write(path, &written)?;
                let origin = path.display();
                let failure = Failure::new(
                    Exit::Invalid,
                    format!(
                        "{origin}:{}:{}: {}",
                        error.line() + comment.lines().count(),
                        error.column(),
                        error.message()
                    ),
                )
                .with_detail(error.excerpt());
                eprintln!("error: {}; reopening the editor", failure.message);
                last_error = Some(failure);
            }
        }
    }
}

/// Runs `waymark dtab edit`.
pub fn run(client: &Client, ns: &str, yes: bool, note: &ChangeNote) -> Result<(), Failure> {
    let start = client.get(ns)?;
    let version = start.version.clone().ok_or_else(|| {
        Failure::new(Exit::Error, format!("the namer sent no version for {ns}; cannot edit it safely"))
    })?;
    let safe_name: String = ns.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let file = tempfile::Builder::new()
        .prefix(&format!("{safe_name}-"))
        .suffix(".dtab")
        .tempfile()
        .map_err(|e| Failure::new(Exit::Error, format!("cannot create a file to edit: {e}")))?;
    let first = initial_text(ns, &version, &start.dtab);
    write(file.path(), &first)?;

    let edited = edit_until_valid(&editor(&|v| std::env::var(v).ok()), file.path(), &first)?;
    let lines = diff::diff(&start.dtab, &edited);
    if !diff::has_changes(&lines) {
        println!("No changes to {ns}");
        return Ok(());
    }
    print!("{}", diff::render(&lines, &live_name(ns, Some(&version)), "edited", &Style::for_stdout()));
    let _ = std::io::stdout().flush();
    if !yes && !confirm("Apply? [y/N] ") {
        return Err(Failure::new(Exit::Error, format!("not applied; {ns} is unchanged")));
    }
    match client.update(ns, &edited, Some(&version), note) {
        Ok(_) => {
            println!("Updated {ns}");
            Ok(())
        }
        Err(failure) if failure.exit == Exit::Conflict => {
            // Keep the work: the user will want to merge it with the other change.
            let kept = file.keep().map(|(_, path)| format!("; your edit is kept in {}", path.display()));
            Err(Failure::new(
                Exit::Conflict,
                format!(
                    "{ns} changed while you were editing (it is no longer at version {version}); nothing applied{}",
                    kept.unwrap_or_default()
                ),
            ))
        }
        Err(failure) => Err(failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_editor_is_visual_then_editor_then_vi() {
        let both = |v: &str| Some(format!("{v}-editor"));
        assert_eq!(editor(&both), "VISUAL-editor");
        let only_editor = |v: &str| (v == "EDITOR").then(|| "nano -w".to_string());
        assert_eq!(editor(&only_editor), "nano -w");
        let blank = |_: &str| Some(" ".to_string());
        assert_eq!(editor(&blank), "vi");
    }

    #[test]
    fn the_file_starts_with_a_header_and_parses_to_the_dtab() {
        let dtab: Dtab = "/svc=>/#/io.l5d.fs;/svc/web=>/svc/v2 | /svc/v1".parse().unwrap();
        let text = initial_text("web", "AAAAAAAAAAE=", &dtab);
        assert!(text.starts_with("# The dtab of namespace web at version AAAAAAAAAAE=,"), "{text}");
        assert!(text.ends_with("\n/svc=>/#/io.l5d.fs;\n/svc/web=>/svc/v2 | /svc/v1;\n"), "{text}");
        assert_eq!(text.parse::<Dtab>().unwrap(), dtab);
    }

    #[test]
    fn the_error_comment_points_at_the_line_as_the_user_will_see_it() {
        let body = "# header\n/a=>/b;\n/c = /d;\n";
        let error = body.parse::<Dtab>().unwrap_err();
        let comment = error_comment(&error);
        assert_eq!(
            comment,
            "# error: line 8, column 4: expected '=>' but found '='\n\
             #  /c = /d;\n\
             #     ^\n\
             # Fix the dtab and save, or save an empty file to cancel.\n\
             #\n"
        );
        let file = format!("{comment}{body}");
        assert_eq!(file.lines().nth(7), Some("/c = /d;"));
        // The comment is a comment: fixing the dentry is enough.
        assert!(file.replace("/c = /d", "/c => /d").parse::<Dtab>().is_ok());
    }
}
