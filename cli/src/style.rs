//! Terminal colour, used only when standard output is a terminal and `NO_COLOR` is unset.

use std::io::IsTerminal;

/// Whether to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    colour: bool,
}

impl Style {
    /// Colour when standard output is a terminal and `NO_COLOR` is not set.
    pub fn for_stdout() -> Self {
        Style { colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    /// No colour at all.
    pub fn plain() -> Self {
        Style { colour: false }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }

    /// Bold, for the names that matter.
    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    /// Dim, for context such as the dentry that produced a path.
    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }

    /// Green, for success.
    pub fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    /// Red, for failure.
    pub fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }

    /// Yellow, for negative or empty results.
    pub fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }
}
