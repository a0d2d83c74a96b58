//! The command functions' view of the terminal: two writers, an optional
//! interactive input, and whether stdout is a terminal. `main` wires the real
//! ones; tests pass buffers.

use std::fmt;
use std::io::{BufRead, Write};

/// Where a command writes and, for confirmations, reads.
pub struct Terminal<'a> {
    /// Results (tables, cards, the one-time token).
    pub out: &'a mut dyn Write,
    /// Progress, warnings and prompts.
    pub err: &'a mut dyn Write,
    /// Answers to prompts; `None` when stdin is not a terminal, which makes
    /// every confirmation a refusal unless the user passed `--yes`.
    pub input: Option<&'a mut dyn BufRead>,
    /// Whether stdout is a terminal (enables the OSC 52 clipboard sequence).
    pub stdout_is_tty: bool,
}

impl fmt::Debug for Terminal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminal")
            .field("interactive", &self.input.is_some())
            .field("stdout_is_tty", &self.stdout_is_tty)
            .finish_non_exhaustive()
    }
}

impl Terminal<'_> {
    /// Asks a yes/no question on stderr; anything but `y`/`yes` is a no.
    /// Returns `None` when there is no interactive input to ask.
    pub fn confirm(&mut self, question: &str) -> std::io::Result<Option<bool>> {
        let Some(input) = self.input.as_mut() else {
            return Ok(None);
        };
        write!(self.err, "{question} [y/N] ")?;
        self.err.flush()?;
        let mut answer = String::new();
        input.read_line(&mut answer)?;
        let answer = answer.trim().to_ascii_lowercase();
        Ok(Some(answer == "y" || answer == "yes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(answer: &str) -> (Option<bool>, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut input = answer.as_bytes();
        let mut term = Terminal {
            out: &mut out,
            err: &mut err,
            input: Some(&mut input),
            stdout_is_tty: true,
        };
        let got = term.confirm("Revoke?").unwrap();
        (got, String::from_utf8(err).unwrap())
    }

    #[test]
    fn only_an_explicit_yes_confirms() {
        assert_eq!(ask("y\n"), (Some(true), "Revoke? [y/N] ".into()));
        assert_eq!(ask(" YES \n").0, Some(true));
        for no in ["\n", "n\n", "yep\n", ""] {
            assert_eq!(ask(no).0, Some(false), "{no:?}");
        }
    }

    #[test]
    fn without_input_nothing_is_asked() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut term = Terminal {
            out: &mut out,
            err: &mut err,
            input: None,
            stdout_is_tty: false,
        };
        assert_eq!(term.confirm("Revoke?").unwrap(), None);
        assert!(err.is_empty());
    }
}
