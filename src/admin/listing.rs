//! Standard output for the listings that can be long: a dry run over a file of serials, the
//! audit log, the issuers.

use std::fmt::Arguments;
use std::io::{self, StdoutLock, Write};

/// Lines written to standard output until its reader goes away. `println!` panics when the
/// reader of a pipe has exited (`jitocsp admin revoke --dry-run ... | head`); here the listing
/// just stops: the command's work is unaffected, and it ends as it would have.
pub struct Listing {
    out: StdoutLock<'static>,
    failed: Option<io::Error>,
}

impl Listing {
    pub fn new() -> Self {
        Listing { out: io::stdout().lock(), failed: None }
    }

    /// Writes `line` and a newline, unless an earlier line could not be written.
    pub fn line(&mut self, line: Arguments<'_>) {
        if self.failed.is_none() {
            if let Err(e) = writeln!(self.out, "{line}") {
                self.failed = Some(e);
            }
        }
    }

    /// Flushes, and reports a failure to write other than a reader that went away (a full
    /// disk behind a redirection, say).
    pub fn finish(mut self) -> io::Result<()> {
        let result = match self.failed.take() {
            Some(e) => Err(e),
            None => self.out.flush(),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }
}
