//! How a long admin command (an import, a revocation of many certificates) shows that it
//! advances, on stderr, so that stdout keeps exactly the lines it always printed.
//!
//! On a terminal: a progress bar per stage (certificates done, rate, time left). Otherwise
//! (a log file, a pipe, a CI job): a plain line each time the work advances a step (a batch
//! committed, a chunk read or streamed), and nothing for a stage done in one step, so that a
//! small command stays as quiet as it was.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::status::Progress;

const BAR_TEMPLATE: &str =
    "{prefix} {msg:<10} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {per_sec} ETA {eta}";

/// Shows the progress of one command on stderr.
pub struct Reporter {
    command: &'static str,
    /// Drawn on a terminal only; one bar for every stage.
    bar: Option<ProgressBar>,
    stage: &'static str,
    total: u64,
    /// Steps reported in the current stage.
    steps: u64,
    started: Instant,
}

impl Reporter {
    /// A reporter for `command` ("import", "revoke"), drawing a bar if stderr is a terminal.
    pub fn new(command: &'static str) -> Self {
        Reporter::with_terminal(command, std::io::stderr().is_terminal())
    }

    fn with_terminal(command: &'static str, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let style = ProgressStyle::with_template(BAR_TEMPLATE).unwrap_or_else(|_| ProgressStyle::default_bar());
            ProgressBar::new(0).with_style(style).with_prefix(command)
        });
        Reporter { command, bar, stage: "", total: 0, steps: 0, started: Instant::now() }
    }

    /// Runs `print` (which writes to stdout) with the bar out of the way, so that the two do
    /// not mix on a terminal.
    pub fn suspend_for(bar: Option<&ProgressBar>, print: impl FnOnce()) {
        match bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// The bar, if one is drawn (for [`Reporter::suspend_for`]).
    pub fn bar(&self) -> Option<ProgressBar> {
        self.bar.clone()
    }

    /// Ends the work: the bar disappears (what was done follows on stdout).
    pub fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// The plain line for `done` of the stage, at the time `elapsed` since it began.
    fn line(&self, done: u64, elapsed: Duration) -> String {
        let seconds = elapsed.as_secs_f64();
        let rate = if seconds > 0.0 { done as f64 / seconds } else { 0.0 };
        let percent = done.saturating_mul(100).checked_div(self.total).unwrap_or(100);
        let left = if rate > 0.0 && done < self.total {
            format!(", about {:.0} s left", (self.total - done) as f64 / rate)
        } else {
            String::new()
        };
        format!(
            "{}: {} {done}/{} ({percent}%) in {seconds:.1} s, {rate:.0}/s{left}",
            self.command, self.stage, self.total
        )
    }
}

impl Progress for Reporter {
    fn stage(&mut self, name: &'static str, total: u64) {
        self.stage = name;
        self.total = total;
        self.steps = 0;
        self.started = Instant::now();
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_length(total);
            bar.set_message(name);
            // Ticks while one long statement runs, so the elapsed time shows it is alive.
            bar.enable_steady_tick(Duration::from_millis(200));
        }
    }

    fn advance(&mut self, done: u64) {
        self.steps += 1;
        match &self.bar {
            Some(bar) => bar.set_position(done),
            // A stage done in one step says nothing: what it did follows at once.
            None if self.steps == 1 && done >= self.total => {}
            None => eprintln!("{}", self.line(done, self.started.elapsed())),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_tell_done_rate_and_time_left() {
        let mut r = Reporter::with_terminal("revoke", false);
        r.stage("revoking", 1000);
        assert_eq!(
            r.line(250, Duration::from_secs(5)),
            "revoke: revoking 250/1000 (25%) in 5.0 s, 50/s, about 15 s left"
        );
        assert_eq!(r.line(1000, Duration::from_secs(10)), "revoke: revoking 1000/1000 (100%) in 10.0 s, 100/s");
        assert!(r.bar().is_none());
    }
}
