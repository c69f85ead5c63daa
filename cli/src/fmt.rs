//! `waymark dtab fmt`: print a dtab file in canonical form, or check that it is.

use waymark_dtab::Dtab;

use crate::exit::{Exit, Failure, read_input};

/// The canonical file layout: one dentry per line, each in the canonical form the store
/// keeps (`prefix=>tree`), ending in `;`. Joining the lines gives exactly the stored text
/// (plus a final `;`), and a change to one dentry is a change to one line.
pub fn canonical_file(dtab: &Dtab) -> String {
    dtab.iter().map(|d| format!("{d};\n")).collect()
}

/// Parses `text` (from `origin`, a file name or `-`) as a dtab, or fails with
/// `origin:line:column` and a caret excerpt.
pub fn parse_file(text: &str, origin: &str) -> Result<Dtab, Failure> {
    text.parse::<Dtab>().map_err(|e| {
        let origin = if origin == "-" { "<stdin>" } else { origin };
        Failure::new(Exit::Invalid, format!("{origin}:{}:{}: {}", e.line(), e.column(), e.message()))
            .with_detail(e.excerpt())
    })
}

/// Runs `waymark dtab fmt`: prints the canonical form of `file`, or with `check` prints
/// nothing and fails with [`Exit::Differs`] when the file is not already canonical.
/// Comments are not kept: the store keeps none either.
pub fn run(file: &str, check: bool) -> Result<(), Failure> {
    let text = read_input(file)?;
    let dtab = parse_file(&text, file)?;
    let canonical = canonical_file(&dtab);
    if check {
        if text != canonical {
            let name = if file == "-" { "<stdin>" } else { file };
            return Err(Failure::new(
                Exit::Differs,
                format!("{name} is not in canonical form (run `waymark dtab fmt`)"),
            ));
        }
        return Ok(());
    }
    print!("{canonical}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_layout_is_one_dentry_per_line() {
        let dtab: Dtab = "# routes\n/svc => /#/io.l5d.fs ;\n/svc/web => 9 * /a & 1 * /b | /c".parse().unwrap();
        let text = canonical_file(&dtab);
        assert_eq!(text, "/svc=>/#/io.l5d.fs;\n/svc/web=>9.00*/a & /b | /c;\n");
        assert_eq!(text.parse::<Dtab>().unwrap(), dtab);
        assert_eq!(text.replace('\n', "").trim_end_matches(';'), dtab.to_string());
    }

    #[test]
    fn parse_errors_name_the_file_line_and_column() {
        let err = parse_file("/a => /b;\n/c = /d\n", "routes.dtab").unwrap_err();
        assert_eq!(err.exit, Exit::Invalid);
        assert_eq!(err.message, "routes.dtab:2:4: expected '=>' but found '='");
        assert_eq!(err.detail.as_deref(), Some("  /c = /d\n     ^"));
    }
}
