//! Exit statuses and the one-line error a failed command prints.

use std::fmt;
use std::process::ExitCode;

/// How a command ended. Each failure class has its own status so that scripts can tell a
/// missing namespace from a version conflict from an unreachable namer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// A check found something to report: a file that is not canonical, or a difference.
    Differs = 1,
    /// Any failure without a status of its own.
    Error = 2,
    /// The namespace does not exist.
    NotFound = 3,
    /// The namespace already exists.
    Exists = 4,
    /// The dtab changed since the version given (HTTP 412).
    Conflict = 5,
    /// The dtab (or path) does not parse, or the namer rejected it.
    Invalid = 6,
    /// The namer could not be reached.
    Unreachable = 7,
}

/// A failed command: its exit status and a one-line message (plus optional detail lines,
/// such as a caret excerpt, printed after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit status.
    pub exit: Exit,
    /// The one-line message.
    pub message: String,
    /// Extra lines, printed after the message.
    pub detail: Option<String>,
}

impl Failure {
    /// A failure with status `exit` and `message`.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure { exit, message: message.into(), detail: None }
    }

    /// A failure that prints nothing: the command has already said what it found, and only
    /// the status remains (a diff that found differences).
    pub fn silent(exit: Exit) -> Self {
        Failure { exit, message: String::new(), detail: None }
    }

    /// Adds detail lines.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Prints the failure to standard error and returns the exit code.
    pub fn report(&self) -> ExitCode {
        if !self.message.is_empty() {
            eprintln!("error: {}", self.message);
        }
        if let Some(detail) = &self.detail {
            eprintln!("{detail}");
        }
        self.exit.into()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Reads a file, or standard input for `-`.
pub fn read_input(file: &str) -> Result<String, Failure> {
    if file == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| Failure::new(Exit::Error, format!("reading standard input: {e}")))?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).map_err(|e| Failure::new(Exit::Error, format!("reading {file}: {e}")))
    }
}
