//! The `waymark` command-line tools that work on dtabs: formatting and checking dtab files,
//! explaining how a path resolves (offline, or through a namer), and managing the dtabs a
//! namer stores, compatibly with namerctl and against namerd as well as our namer.
//!
//! Commands print plain text for people, JSON with `--json` for scripts, and use colour only
//! when standard output is a terminal. Each failure class has its own exit status, so that
//! scripts can tell them apart; a failure prints one line, `error: ...`, on standard error
//! (followed, for a dtab that does not parse, by the offending line and a caret).
//!
//! # Exit statuses
//!
//! | status | [`Exit`] | when |
//! | --- | --- | --- |
//! | 0 | `Ok` | success (and `diff` or `update --dry-run` found nothing to report) |
//! | 1 | `Differs` | `diff`: the dtabs differ; `fmt --check`: not canonical; `update --dry-run`: a bound name would become negative, empty or fail |
//! | 2 | `Error` | any other failure: bad arguments, unreadable file, unexpected HTTP status, edit cancelled |
//! | 3 | `NotFound` | the namespace does not exist (HTTP 404) |
//! | 4 | `Exists` | `create`: the namespace already exists (HTTP 409) |
//! | 5 | `Conflict` | the dtab changed since the version given (HTTP 412) |
//! | 6 | `Invalid` | the dtab or path does not parse (`file:line:column` and a caret), or the namer rejected it (HTTP 400, with its reason) |
//! | 7 | `Unreachable` | the namer could not be reached or did not answer in time |
//!
//! namerctl exits 255 on every error. Scripts that only test for a non-zero status (such as
//! `if waymark dtab get ns >/dev/null 2>&1`) behave the same; scripts that want to know why
//! can tell the cases apart. Usage errors are clap's, status 2.

pub mod client;
pub mod delegate;
pub mod diff;
pub mod dry_run;
pub mod edit;
pub mod exit;
pub mod fmt;
pub mod input;
pub mod manage;
pub mod style;

pub use exit::{Exit, Failure};

use clap::{ArgAction, Args, Subcommand};

use crate::client::{ChangeNote, Client, NamerOptions};

/// `waymark dtab ...`
#[derive(Debug, Args)]
pub struct DtabArgs {
    /// How to reach the namer.
    #[command(flatten)]
    pub namer: NamerOptions,
    /// Print JSON for scripts (list, get, diff, history, update --dry-run).
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: DtabCommand,
}

/// Who made a change and why, for the namer's history.
#[derive(Debug, Clone, Args)]
pub struct NoteArgs {
    /// Why: recorded in the namer's history.
    #[arg(long, short)]
    pub message: Option<String>,
    /// Who: recorded in the namer's history (default: the user name).
    #[arg(long)]
    pub author: Option<String>,
}

/// `waymark dtab ...`
#[derive(Debug, Subcommand)]
pub enum DtabCommand {
    /// Print a dtab file in canonical form: one dentry per line, as the store keeps it.
    Fmt {
        /// Only check: exit with status 1 if the file is not already canonical.
        #[arg(long)]
        check: bool,
        /// The dtab file, or `-` for standard input.
        #[arg(default_value = "-")]
        file: String,
    },
    /// List the namespaces, one per line.
    #[command(visible_alias = "ls")]
    List,
    /// Print a namespace's dtab, with its version.
    #[command(visible_alias = "cat")]
    Get {
        /// The namespace.
        namespace: String,
        /// One dentry per line with aligned arrows; `--pretty=false` prints one line.
        #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
              default_value_t = true, default_missing_value = "true", value_name = "BOOL")]
        pretty: bool,
    },
    /// Create a namespace from a dtab file (text, or JSON as `get --json` prints it).
    #[command(visible_alias = "new")]
    Create {
        /// The namespace.
        namespace: String,
        /// The dtab file, or `-` for standard input.
        file: String,
        #[command(flatten)]
        note: NoteArgs,
    },
    /// Replace a namespace's dtab; with a version, only if it is still current.
    #[command(visible_alias = "up")]
    Update {
        /// The namespace.
        namespace: String,
        /// The dtab file, or `-` for standard input.
        file: String,
        /// Update only if this is still the current version (sent as If-Match). A JSON file
        /// from `get --json` carries its own.
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
        /// Write nothing: show how each name the namer has bound would resolve afterwards.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        note: NoteArgs,
    },
    /// Delete a namespace.
    #[command(visible_aliases = ["del", "rm"])]
    Delete {
        /// The namespace.
        namespace: String,
        #[command(flatten)]
        note: NoteArgs,
    },
    /// Compare a namespace's dtab with a file, dentry by dentry (status 1 when they differ).
    Diff {
        /// The namespace.
        namespace: String,
        /// The dtab file, or `-` for standard input.
        file: String,
    },
    /// Edit a namespace's dtab in $VISUAL or $EDITOR, then apply it if nobody changed it meanwhile.
    Edit {
        /// The namespace.
        namespace: String,
        /// Apply without asking.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        note: NoteArgs,
    },
    /// Show a namespace's changes, newest first.
    History {
        /// The namespace.
        namespace: String,
    },
    /// Restore an earlier dtab from the history, if nobody changed it meanwhile.
    Rollback {
        /// The namespace.
        namespace: String,
        /// The version to restore (default: the dtab before the current one).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        #[command(flatten)]
        note: NoteArgs,
    },
}

/// `waymark delegate ...`
#[derive(Debug, Args)]
#[command(after_help = "With one argument, PATH is explained offline through --dtab alone, with the built-in /$/ \
                        namers only.\nWith two, NAMESPACE and PATH, the namer explains PATH through the namespace's \
                        dtab followed by --dtab.")]
pub struct DelegateArgs {
    /// Offline, the complete dtab; with a namespace, a dtab appended to the namespace's.
    #[arg(long)]
    pub dtab: Option<String>,
    /// The namespace to ask the namer about, or the path when explaining offline.
    #[arg(value_name = "NAMESPACE|PATH")]
    pub first: String,
    /// The path to explain, such as `/svc/web`.
    #[arg(value_name = "PATH")]
    pub path: Option<String>,
    /// Print namerd's JSON instead of the indented tree.
    #[arg(long)]
    pub json: bool,
    /// How to reach the namer.
    #[command(flatten)]
    pub namer: NamerOptions,
}

impl NoteArgs {
    fn note(&self) -> ChangeNote {
        ChangeNote::new(self.author.clone(), self.message.clone())
    }
}

/// Runs a `waymark dtab` command.
pub fn run_dtab(args: DtabArgs) -> Result<(), Failure> {
    let json = args.json;
    let client = || Client::from_options(&args.namer);
    match args.command {
        DtabCommand::Fmt { check, file } => fmt::run(&file, check),
        DtabCommand::List => manage::list(&client()?, json),
        DtabCommand::Get { namespace, pretty } => manage::get(&client()?, &namespace, pretty, json),
        DtabCommand::Create { namespace, file, note } => manage::create(&client()?, &namespace, &file, &note.note()),
        DtabCommand::Update { namespace, file, version, dry_run, note } => {
            let update = manage::Update { namespace: &namespace, file: &file, version, dry_run, json };
            manage::update(&client()?, update, &note.note())
        }
        DtabCommand::Delete { namespace, note } => manage::delete(&client()?, &namespace, &note.note()),
        DtabCommand::Diff { namespace, file } => manage::diff(&client()?, &namespace, &file, json),
        DtabCommand::Edit { namespace, yes, note } => edit::run(&client()?, &namespace, yes, &note.note()),
        DtabCommand::History { namespace } => manage::history(&client()?, &namespace, json),
        DtabCommand::Rollback { namespace, to, note } => {
            let message = note.message.clone();
            manage::rollback(&client()?, &namespace, to.as_deref(), note.author.clone(), message)
        }
    }
}

/// Runs `waymark delegate`: offline with one argument, through the namer with two.
pub fn run_delegate(args: DelegateArgs) -> Result<(), Failure> {
    match (&args.path, &args.dtab) {
        (Some(path), extra) => {
            let client = Client::from_options(&args.namer)?;
            delegate::run_online(&client, &args.first, path, extra.as_deref(), args.json)
        }
        (None, Some(dtab)) => delegate::run_offline(dtab, &args.first, args.json),
        (None, None) => Err(Failure::new(
            Exit::Error,
            "give the dtab to explain the path through (--dtab DTAB PATH), or a namespace and a path to ask the \
             namer (NAMESPACE PATH)",
        )),
    }
}
