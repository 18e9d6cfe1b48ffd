//! Progress lines on stderr for the long steps of a build, silenced by `--quiet`.

use std::time::Instant;

/// Reports steps as they start and finish, with their duration.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    quiet: bool,
    start: Instant,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            start: Instant::now(),
        }
    }

    /// A line of information (not a step).
    pub fn info(&self, msg: &str) {
        if !self.quiet {
            eprintln!("    {msg}");
        }
    }

    /// Start a step; its completion (with duration) is printed by `Step::done`.
    pub fn step(&self, msg: &str) -> Step {
        if !self.quiet {
            eprintln!("==> {msg}");
        }
        Step {
            quiet: self.quiet,
            start: Instant::now(),
        }
    }

    /// Time since the build started.
    pub fn elapsed_secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// A step under way.
pub struct Step {
    quiet: bool,
    start: Instant,
}

impl Step {
    /// Finish the step with a summary, e.g. "35.2 MiB".
    pub fn done(self, summary: &str) {
        if !self.quiet {
            eprintln!(
                "    {summary} ({:.2} s)",
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}
