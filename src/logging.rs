//! Log lines on stderr through the `log` crate (env_logger).
//!
//! Every line reads `hbb: ...`, the form scripts and tests grep. `-v`/`-q`
//! move the level (default info: summaries; `-q` warnings and errors;
//! `-qq` errors; `-v` debug; `-vv` trace); `HBB_LOG` takes an env_logger
//! filter (`debug`, `hbb::mount=trace,fuser=debug`) and overrides both.
//! Other crates log only their errors unless `-v` is given.
//!
//! When stderr is the systemd journal (`JOURNAL_STREAM` names stderr's
//! device and inode, as systemd sets it for a service's output), each line
//! is prefixed with its syslog priority, `<3>` for errors to `<7>` for
//! debug, which journald reads as the entry's priority
//! (sd-daemon(3)): `journalctl -p warning -u hbb-snapshot@home` shows the
//! warnings and errors of a snapshot.

use std::io::Write;

use log::{Level, LevelFilter};

/// The environment variable holding an env_logger filter.
pub const ENV: &str = "HBB_LOG";

/// The level for `verbose` minus `quiet` steps from the default (info).
pub fn level(verbose: u8, quiet: u8) -> LevelFilter {
    match i16::from(verbose) - i16::from(quiet) {
        ..=-2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Installs the logger; call once, early (before any thread starts).
pub fn init(verbose: u8, quiet: u8) {
    let level = level(verbose, quiet);
    let others = match verbose {
        0 => LevelFilter::Error,
        1 => LevelFilter::Warn,
        _ => LevelFilter::Debug,
    };
    let journal = stderr_is_journal();
    let mut b = env_logger::Builder::new();
    b.filter_level(others.min(level))
        .filter_module("hbb", level)
        .target(env_logger::Target::Stderr)
        .format(move |buf, rec| {
            if journal {
                write!(buf, "<{}>", priority(rec.level()))?;
            }
            writeln!(buf, "hbb: {}", rec.args())
        });
    if let Ok(filter) = std::env::var(ENV) {
        b.parse_filters(&filter);
    }
    // Fails only if a logger is already set (a second call): keep that one.
    let _ = b.try_init();
}

/// syslog(3) priority of a level, as journald reads it from a `<N>` prefix.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` is
/// `DEVICE:INODE` of the stream systemd connected, and still names stderr
/// (a child whose stderr was redirected inherits the variable, not the
/// stream).
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // The widths of st_dev and st_ino differ between targets.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstat(std::io::stderr())
        .is_ok_and(|st| st.st_dev as u64 == dev && st.st_ino as u64 == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level(0, 0), LevelFilter::Info);
        assert_eq!(level(0, 1), LevelFilter::Warn);
        assert_eq!(level(0, 2), LevelFilter::Error);
        assert_eq!(level(0, 9), LevelFilter::Error);
        assert_eq!(level(1, 0), LevelFilter::Debug);
        assert_eq!(level(2, 0), LevelFilter::Trace);
        assert_eq!(level(2, 1), LevelFilter::Debug);
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Debug), 7);
    }
}
