//! The progress bar `apply` shows on a terminal, and the writer that keeps log lines from
//! tearing it: while a bar is shown, each log line is written with the bar cleared, then the
//! bar is drawn again below it.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::ProgressBar;

use crate::store::Store;

/// The bar on the terminal now, if any.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn shown() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    SHOWN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Log lines go above `bar` until the guard is dropped.
fn show(bar: &ProgressBar) -> Shown {
    *shown() = Some(bar.clone());
    Shown
}

/// While it lives, a bar is shown (see [`show`]).
struct Shown;

impl Drop for Shown {
    fn drop(&mut self) {
        *shown() = None;
    }
}

/// The log's writer: standard error, above the progress bar while one is shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = AroundBar<std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        AroundBar {
            bar: shown().clone(),
            out: std::io::stderr(),
        }
    }
}

/// Writes to `out`, each write with `bar` (if any) cleared first and drawn again after.
pub struct AroundBar<W> {
    bar: Option<ProgressBar>,
    out: W,
}

impl<W: Write> Write for AroundBar<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.bar {
            Some(bar) => {
                let out = &mut self.out;
                bar.suspend(|| out.write_all(buf).and_then(|()| out.flush()))?;
                Ok(buf.len())
            }
            None => self.out.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A progress bar on the terminal while `apply` lists and works the queue: inventory pages
/// listed, then releases settled since it started, out of those settled plus those queued.
pub(super) fn spawn(store: Store, metrics: crate::metrics::Metrics) -> Progress {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} settled {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let shown = show(&bar);
    let task = tokio::spawn(async move {
        let settled = |c: &crate::store::StateCounts| c.succeeded + c.failed + c.cancelled;
        let Ok(start) = store.counts().await else {
            return;
        };
        loop {
            if let Ok(c) = store.counts().await {
                let done = (settled(&c) - settled(&start)).max(0) as u64;
                b.set_length(done + (c.pending + c.snapshotting + c.in_flight) as u64);
                b.set_position(done);
                let snapshotting = if c.snapshotting > 0 {
                    format!(", {} snapshotting", c.snapshotting)
                } else {
                    String::new()
                };
                b.set_message(format!(
                    "({} inventory pages listed; {} in flight{snapshotting}, {} queued)",
                    metrics.listing_pages(),
                    c.in_flight,
                    c.pending
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Progress {
        bar,
        task,
        _shown: shown,
    }
}

/// A bar on the terminal, kept up to date until [`Progress::finish`].
pub(super) struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
    _shown: Shown,
}

impl Progress {
    /// Stops updating the bar and clears it; log lines go straight to standard error again.
    pub(super) fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::{ProgressDrawTarget, TermLike};
    use std::sync::Arc;

    /// A terminal that records what the bar draws and what the log writes, in order.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl Screen {
        fn push(&self, s: String) -> std::io::Result<()> {
            self.0.lock().unwrap().push(s);
            Ok(())
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.push(format!("bar {s}"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.push(format!("bar {s}"))
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.push("clear".into())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Write for Screen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.push(format!("log {}", String::from_utf8_lossy(buf)))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_log_line_goes_above_the_bar_not_into_it() {
        let screen = Screen::default();
        let bar = ProgressBar::with_draw_target(
            Some(10),
            ProgressDrawTarget::term_like(Box::new(screen.clone())),
        );
        bar.set_style(indicatif::ProgressStyle::with_template("{pos}/{len} {msg}").unwrap());
        bar.set_message("3 inventory pages listed");
        bar.force_draw();
        let mut w = AroundBar {
            bar: Some(bar.clone()),
            out: screen.clone(),
        };
        w.write_all(b"INFO something happened\n").unwrap();
        let seen = screen.0.lock().unwrap().clone();
        let log = seen
            .iter()
            .position(|s| s.starts_with("log "))
            .expect("the line was written");
        let drawn_before = seen[..log]
            .iter()
            .rposition(|s| s.starts_with("bar ") && s.contains("inventory pages"))
            .unwrap_or_else(|| panic!("the bar was drawn first: {seen:?}"));
        assert!(
            seen[drawn_before..log].iter().any(|s| s == "clear"),
            "the bar is cleared before the line: {seen:?}"
        );
        assert!(
            seen[log..]
                .iter()
                .any(|s| s.starts_with("bar ") && s.contains("inventory pages")),
            "and drawn again after it: {seen:?}"
        );
    }

    #[test]
    fn without_a_bar_lines_are_written_as_they_come() {
        let screen = Screen::default();
        let mut w = AroundBar {
            bar: None,
            out: screen.clone(),
        };
        w.write_all(b"INFO plain\n").unwrap();
        assert_eq!(
            *screen.0.lock().unwrap(),
            vec!["log INFO plain\n".to_string()]
        );
    }
}
