//! Progress on stderr for long work: bytes, rate, ratio, ETA. Drawn only
//! when stderr is a terminal and the user did not ask for quiet.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    read: AtomicU64,
    stored: AtomicU64,
    files: AtomicU64,
}

impl Progress {
    pub fn new(total: u64, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(5));
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ETA {eta}",
                )
                .unwrap(),
            );
            b
        });
        Progress {
            bar,
            read: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            files: AtomicU64::new(0),
        }
    }

    pub fn hidden() -> Progress {
        Progress::new(0, true)
    }

    pub fn read(&self, n: u64) {
        self.read.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// `n` more bytes to read (the total grows while a walk finds files).
    pub fn grow(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc_length(n);
        }
    }

    /// One more file done (file mode).
    pub fn file(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes stored so far, for the ratio.
    pub fn stored(&self, total: u64) {
        self.stored.store(total, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            let r = self.read.load(Ordering::Relaxed);
            let f = self.files.load(Ordering::Relaxed);
            let files = if f > 0 {
                format!("{f} files, ")
            } else {
                String::new()
            };
            if total > 0 {
                b.set_message(format!("{files}ratio {:.2}", r as f64 / total as f64));
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
