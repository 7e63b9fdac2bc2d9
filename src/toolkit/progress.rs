//! How a long walk shows itself and how fast it goes: a progress bar with counts and an ETA
//! when stderr is a terminal, a plain line every few seconds otherwise (logs, CI); and a pacer
//! that holds the walk to at most N entities a second so a large run does not load
//! OpenMetadata (`--rate`).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::time::Instant;

/// How often a plain progress line is written.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

enum Display {
    Bar(ProgressBar),
    Plain { last: Instant },
}

/// Counts entities done out of a total (when known) and shows it on stderr.
pub(crate) struct Progress {
    display: Display,
    command: &'static str,
    total: Option<u64>,
    done: u64,
    /// Entities a previous run did (from the checkpoint): not part of this run's speed.
    carried: u64,
    started: Instant,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub(crate) fn new(command: &'static str, total: Option<u64>, carried: u64) -> Progress {
        let display = if std::io::stderr().is_terminal() {
            let bar = match total {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "{prefix} [{bar:30}] {pos}/{len} entities, {rate}, ETA {eta}"
            } else {
                "{prefix} {spinner} {pos} entities, {rate}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(
                    style
                        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(w, "{:.1}/s", s.per_sec());
                        })
                        .progress_chars("=> "),
                );
            }
            bar.set_prefix(command);
            bar.set_position(carried);
            bar.reset_eta();
            Display::Bar(bar)
        } else {
            Display::Plain {
                last: Instant::now(),
            }
        };
        Progress {
            display,
            command,
            total,
            done: carried,
            carried,
            started: Instant::now(),
        }
    }

    /// One more entity done.
    pub(crate) fn inc(&mut self) {
        self.done += 1;
        match &mut self.display {
            Display::Bar(b) => b.inc(1),
            Display::Plain { last } => {
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    eprintln!("{}", self.line());
                }
            }
        }
    }

    /// Prints a line on stdout without tearing the bar.
    pub(crate) fn println(&self, out: &mut dyn FnMut(String), line: String) {
        match &self.display {
            Display::Bar(b) => b.suspend(|| out(line)),
            Display::Plain { .. } => out(line),
        }
    }

    /// Clears the bar, or writes the closing plain line.
    pub(crate) fn finish(&self) {
        match &self.display {
            Display::Bar(b) => b.finish_and_clear(),
            Display::Plain { .. } => eprintln!("{}", self.line()),
        }
    }

    /// `progress: migrate 300/1000 entities (30%), 45.0/s, about 16 s left`.
    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let mine = self.done - self.carried;
        let rate = if elapsed > 0.0 {
            mine as f64 / elapsed
        } else {
            0.0
        };
        let mut s = format!("progress: {} {}", self.command, self.done);
        if let Some(t) = self.total {
            let pct = (self.done * 100).checked_div(t).map_or(100, |p| p.min(100));
            s.push_str(&format!("/{t} entities ({pct}%)"));
        } else {
            s.push_str(" entities");
        }
        s.push_str(&format!(", {rate:.1}/s"));
        match self.total {
            Some(t) if self.done < t && rate > 0.0 => {
                s.push_str(&format!(
                    ", about {:.0} s left",
                    (t - self.done) as f64 / rate
                ));
            }
            _ => s.push_str(&format!(", {elapsed:.1} s")),
        }
        s
    }
}

/// Holds a walk to at most `rate` entities a second; no credit builds up while idle.
pub(crate) struct Pacer {
    gap: Option<Duration>,
    next: Instant,
}

impl Pacer {
    /// `None` (or a rate that is not positive): no limit.
    pub(crate) fn new(rate: Option<f64>) -> Pacer {
        Pacer {
            gap: rate
                .filter(|r| *r > 0.0 && r.is_finite())
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Instant::now(),
        }
    }

    /// Waits until the next entity may start.
    pub(crate) async fn wait(&mut self) {
        let Some(gap) = self.gap else {
            return;
        };
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next = self.next.max(now) + gap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_entities_by_the_rate_and_keeps_no_credit() {
        let mut p = Pacer::new(Some(10.0));
        let t0 = Instant::now();
        for _ in 0..5 {
            p.wait().await;
        }
        // The first goes at once, four more at 100 ms apart.
        assert_eq!(t0.elapsed(), Duration::from_millis(400));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t1 = Instant::now();
        p.wait().await;
        p.wait().await;
        assert_eq!(t1.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_rate_the_pacer_never_waits() {
        let mut p = Pacer::new(None);
        let t0 = Instant::now();
        for _ in 0..100 {
            p.wait().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[test]
    fn a_plain_line_gives_counts_percent_and_speed() {
        let mut p = Progress {
            display: Display::Plain {
                last: Instant::now(),
            },
            command: "migrate",
            total: Some(200),
            done: 50,
            carried: 50,
            started: Instant::now(),
        };
        p.done = 100;
        let line = p.line();
        assert!(
            line.starts_with("progress: migrate 100/200 entities (50%), "),
            "{line}"
        );
        assert!(line.contains("/s"), "{line}");
    }
}
