//! Progress of long copies and downloads on stderr: a redrawn bar (bytes, percent, rate, ETA)
//! on a terminal, plain lines every few seconds otherwise (logs, CI), and a summary at the end.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    /// Bytes already there when this run started (a resumed download): not counted in the rate.
    base: u64,
    start: Instant,
    last: Option<Instant>,
    tty: bool,
    every: Duration,
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

fn eta(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "--".into();
    }
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl Progress {
    pub fn new(label: &str, total: Option<u64>, already: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self {
            label: label.to_string(),
            total,
            done: already,
            base: already,
            start: Instant::now(),
            last: None,
            tty,
            every: if tty {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(5)
            },
        }
    }

    fn rate(&self) -> f64 {
        let s = self.start.elapsed().as_secs_f64();
        if s > 0.0 {
            (self.done - self.base) as f64 / s
        } else {
            0.0
        }
    }

    fn line(&self) -> String {
        let rate = self.rate();
        match self.total {
            Some(t) if t > 0 => {
                let pct = (self.done.min(t) * 100 / t) as usize;
                let left = (t.saturating_sub(self.done)) as f64 / rate;
                if self.tty {
                    format!(
                        "{} [{:<25}] {pct:>3}% {:.1}/{:.1} MB {:.1} MB/s ETA {}",
                        self.label,
                        "#".repeat(pct / 4),
                        mb(self.done),
                        mb(t),
                        mb(rate as u64),
                        eta(left)
                    )
                } else {
                    format!(
                        "{}: {pct}% {:.1}/{:.1} MB {:.1} MB/s ETA {}",
                        self.label,
                        mb(self.done),
                        mb(t),
                        mb(rate as u64),
                        eta(left)
                    )
                }
            }
            _ => format!(
                "{}: {:.1} MB {:.1} MB/s",
                self.label,
                mb(self.done),
                mb(rate as u64)
            ),
        }
    }

    /// `done` bytes so far (including those already there at the start).
    pub fn set(&mut self, done: u64) {
        self.done = done;
        let now = Instant::now();
        if self.last.is_some_and(|l| now - l < self.every) {
            return;
        }
        if self.last.is_none() && !self.tty {
            // The first plain line only after the first interval: short copies stay quiet.
            self.last = Some(now);
            return;
        }
        self.last = Some(now);
        let mut e = std::io::stderr();
        if self.tty {
            let _ = write!(e, "\r{}\x1b[K", self.line());
        } else {
            let _ = writeln!(e, "{}", self.line());
        }
        let _ = e.flush();
    }

    /// Print the final state (a newline after the bar on a terminal).
    pub fn finish(&mut self) {
        let mut e = std::io::stderr();
        if self.tty {
            let _ = writeln!(e, "\r{}\x1b[K", self.line());
        } else {
            let _ = writeln!(
                e,
                "{}: {:.1} MB in {:.1}s",
                self.label,
                mb(self.done),
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_formats() {
        assert_eq!(eta(5.2), "5s");
        assert_eq!(eta(125.0), "2m05s");
        assert_eq!(eta(3725.0), "1h02m");
        assert_eq!(eta(f64::INFINITY), "--");
    }
}
