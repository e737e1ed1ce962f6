//! Rate-limited log lines for guest-triggerable paths.
//!
//! A guest can make a device complain as fast as it can write a register, so every log line on
//! such a path goes through a [`RateLimitedLog`]: a fixed number of lines per window, then only a
//! count of what was suppressed, reported with the next line that gets through. Counters, not log
//! lines, are the record of how often something happened.

use std::fmt;
use std::time::{Duration, Instant};

/// Lines allowed per window.
pub const LINES_PER_WINDOW: u32 = 10;
/// Length of a window.
pub const WINDOW: Duration = Duration::from_secs(5);

/// A per-source log limiter writing `component: message` lines to standard error.
#[derive(Debug)]
pub struct RateLimitedLog {
    component: &'static str,
    window_start: Option<Instant>,
    lines_in_window: u32,
    suppressed: u64,
}

impl RateLimitedLog {
    /// A limiter whose lines start with `component`.
    pub const fn new(component: &'static str) -> RateLimitedLog {
        RateLimitedLog {
            component,
            window_start: None,
            lines_in_window: 0,
            suppressed: 0,
        }
    }

    /// Logs `message` if the limit allows; returns whether it was written.
    pub fn log(&mut self, message: fmt::Arguments<'_>) -> bool {
        let now = Instant::now();
        let window_over = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= WINDOW);
        if window_over {
            self.window_start = Some(now);
            self.lines_in_window = 0;
        }
        if self.lines_in_window >= LINES_PER_WINDOW {
            self.suppressed += 1;
            return false;
        }
        self.lines_in_window += 1;
        let mut line = format!("{}: {message}", self.component);
        if self.suppressed > 0 {
            line.push_str(&format!(
                " ({} similar lines suppressed)",
                std::mem::take(&mut self.suppressed)
            ));
        }
        line.push('\n');
        // One formatted write per line, under the stderr lock (captured by the test harness).
        eprint!("{line}");
        true
    }

    /// Lines suppressed since the last one written.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_limited_and_counted() {
        let mut log = RateLimitedLog::new("test");
        let written = (0..100)
            .filter(|index| log.log(format_args!("line {index}")))
            .count();
        assert_eq!(written, LINES_PER_WINDOW as usize);
        assert_eq!(log.suppressed(), 100 - u64::from(LINES_PER_WINDOW));
    }
}
