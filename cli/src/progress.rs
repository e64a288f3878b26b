//! The one progress line of the CLI: rewritten in place on stderr when stderr is a
//! terminal, silent otherwise. Hand-written (a few escape codes) so that it adds no
//! syscall to what `kickstat` counts beyond the write itself, and none at all when
//! stderr is not a terminal.

use std::io::{IsTerminal, Write};

/// A progress line on stderr.
#[derive(Debug)]
pub struct Progress {
    on: bool,
}

impl Progress {
    /// A line shown only if stderr is a terminal and `wanted`.
    pub fn new(wanted: bool) -> Self {
        Self {
            on: wanted && std::io::stderr().is_terminal(),
        }
    }

    /// Whether the line is shown.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Replaces the line with `what`.
    pub fn show(&self, what: &str) {
        if self.on {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{what}");
            let _ = err.flush();
        }
    }

    /// Replaces the line with a bar: `done` of `total`, then `what`.
    pub fn bar(&self, done: u64, total: u64, what: &str) {
        const WIDTH: u64 = 30;
        let filled = (done.min(total) * WIDTH / total.max(1)) as usize;
        self.show(&format!(
            "[{}{}] {done}/{total} {what}",
            "#".repeat(filled),
            "-".repeat(WIDTH as usize - filled)
        ));
    }

    /// Erases the line.
    pub fn clear(&self) {
        self.show("");
    }
}
