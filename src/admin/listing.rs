//! Standard output for the admin commands. `println!` panics when the reader of a pipe has
//! exited (`jitocsp admin revoke ... | head`), which after a commit would cut the command short
//! (its CDN purges not yet requested, say). Here a reader that went away is not an error: the
//! command does its work to the end.

use std::fmt::Arguments;
use std::io::{self, BufWriter, StdoutLock, Write};

/// `println!` for an admin command's report, through [`write_line`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::admin::listing::write_line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// Writes one line of a report. A reader that went away is ignored; another failure (a full
/// disk behind a redirection) is told on standard error, once per line, and the command goes
/// on: its exit status says whether its work was done.
pub fn write_line(line: Arguments<'_>) {
    if let Err(e) = writeln!(io::stdout(), "{line}") {
        if e.kind() != io::ErrorKind::BrokenPipe {
            eprintln!("warning: cannot write to standard output: {e}");
        }
    }
}

/// A listing that can be long (a dry run over a file of serials, what a revocation changed,
/// the audit log, the issuers): written in large writes (a mass revocation lists millions of
/// lines) until the reader goes away, then nothing more. [`Listing::finish`] tells of a failure
/// other than that.
pub struct Listing {
    out: BufWriter<StdoutLock<'static>>,
    failed: Option<io::Error>,
}

impl Listing {
    pub fn new() -> Self {
        Listing { out: BufWriter::new(io::stdout().lock()), failed: None }
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
