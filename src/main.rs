//! The `hbb` binary: parse the command line, run it, map the outcome to an
//! exit code (see `cli::exit`).

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use log::{error, info, warn};

use hbb::archive::Archive;
use hbb::cli::{Cli, Cmd, default_threads, exit};
use hbb::mount::helper;
use hbb::{inspect, restore, snapshot, verify};

fn main() -> ExitCode {
    let cli = hbb::cli::parse();
    hbb::logging::init(cli.verbose, cli.quiet);
    // A reader of `ls` or `cat` that stops early is not an error; a pipe
    // that closes under `snapshot -` is (the archive is incomplete).
    let quiet_pipe = matches!(cli.cmd, Cmd::Ls(_) | Cmd::Cat(_));
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if quiet_pipe && is_broken_pipe(&e) {
                return ExitCode::from(exit::OK);
            }
            error!("error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(c.downcast_ref::<hbb::Error>(), Some(hbb::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let quiet = cli.quiet > 0;
    match cli.cmd {
        Cmd::Snapshot(a) => {
            let t0 = Instant::now();
            let opts = snapshot::Options {
                source: a.source.clone(),
                archive: a.archive.clone(),
                mode: a.mode,
                threads: a.threads.unwrap_or_else(default_threads).max(1),
                block_size: a.block_size,
                level: a.level,
                volume_threshold: a.volume_threshold,
                excludes: a.exclude.clone(),
                one_file_system: a.one_file_system,
                allow_mounted_rw: a.allow_mounted_rw,
                quiet,
            };
            let out = snapshot::snapshot(&opts)
                .with_context(|| format!("snapshot of {} failed", a.source.display()))?;
            let secs = t0.elapsed().as_secs_f64();
            let m = &out.meta;
            let s = &m.stats;
            for w in &m.warnings {
                warn!("warning: {w}");
            }
            if a.json {
                let j = serde_json::json!({
                    "archive": a.archive.display().to_string(),
                    "source": String::from_utf8_lossy(&m.source),
                    "mode": match m.mode { hbb::archive::Mode::File => "file", hbb::archive::Mode::Volume => "volume" },
                    "mode_reason": m.mode_reason,
                    "complete": m.warnings.is_empty(),
                    "warnings": m.warnings,
                    "stats": s,
                    "seconds": secs,
                });
                let text = serde_json::to_string_pretty(&j)?;
                if a.archive.as_os_str() == "-" {
                    eprintln!("{text}");
                } else {
                    println!("{text}");
                }
            } else {
                info!(
                    "{} files, {} dirs, {} bytes read, {} stored (ratio {:.2}), {} of {} blocks zero, {} duplicate; {:.1}s, {:.0} MB/s",
                    s.files,
                    s.dirs,
                    s.bytes_read,
                    out.archive_bytes,
                    s.bytes_read as f64 / out.archive_bytes.max(1) as f64,
                    s.zero_blocks,
                    s.blocks,
                    s.dup_blocks,
                    secs,
                    s.bytes_read as f64 / 1e6 / secs.max(1e-9)
                );
            }
            if !m.warnings.is_empty() {
                error!(
                    "snapshot incomplete: {} problem(s), listed above",
                    m.warnings.len()
                );
                return Ok(exit::INCOMPLETE);
            }
            Ok(exit::OK)
        }
        Cmd::Restore(a) => {
            let opts = restore::Options {
                archive: a.archive.clone(),
                dest: a.dest.clone(),
                paths: a
                    .paths
                    .iter()
                    .map(|p| p.as_os_str().as_bytes().to_vec())
                    .collect(),
                threads: a.threads.unwrap_or_else(default_threads).max(1),
                numeric_owner: a.numeric_owner,
                overwrite: a.overwrite,
                quiet,
            };
            let r = restore::restore(&opts)
                .with_context(|| format!("restore of {} failed", a.archive.display()))?;
            for p in &r.problems {
                warn!("{p}");
            }
            if a.json {
                let j = serde_json::json!({
                    "archive": a.archive.display().to_string(),
                    "dest": a.dest.display().to_string(),
                    "entries": r.entries,
                    "bytes": r.bytes,
                    "complete": r.problems.is_empty(),
                    "problems": r.problems,
                });
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                info!(
                    "restored {} entries, {} bytes into {}",
                    r.entries,
                    r.bytes,
                    a.dest.display()
                );
            }
            if !r.problems.is_empty() {
                error!(
                    "restore incomplete: {} problem(s), listed above",
                    r.problems.len()
                );
                return Ok(exit::INCOMPLETE);
            }
            Ok(exit::OK)
        }
        Cmd::Verify(a) => {
            let threads = a.threads.unwrap_or_else(default_threads).max(1);
            let r = verify::verify(&a.archive, a.source.as_deref(), threads)
                .with_context(|| format!("verify of {} failed", a.archive.display()))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for b in &r.bad_blocks {
                    error!("bad block {} at offset {}: {}", b.block, b.offset, b.error);
                    for f in &b.files {
                        error!("  affects {f}");
                    }
                }
                for d in &r.differences {
                    error!("differs: {d}");
                }
                info!(
                    "{}: {} frames, {} bytes checked{}: {}",
                    a.archive.display(),
                    r.frames_checked,
                    r.bytes_checked,
                    if a.source.is_some() {
                        format!(", {} entries compared with the source", r.entries_compared)
                    } else {
                        String::new()
                    },
                    if r.ok { "OK" } else { "FAILED" }
                );
            }
            Ok(if r.ok { exit::OK } else { exit::VERIFY_FAILED })
        }
        Cmd::Info(a) => {
            let ar = Archive::open(&a.archive)?;
            let i = inspect::info(&ar);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                inspect::print_info(&i, &mut std::io::stdout().lock())?;
            }
            Ok(exit::OK)
        }
        Cmd::Ls(a) => {
            let ar = Archive::open(&a.archive)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let path = a.path.unwrap_or_default();
            inspect::ls(
                &ar,
                path.as_os_str().as_bytes(),
                a.long,
                a.recursive,
                &mut out,
            )?;
            out.flush()?;
            Ok(exit::OK)
        }
        Cmd::Cat(a) => {
            let ar = Archive::open(&a.archive)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            inspect::cat(&ar, a.path.as_os_str().as_bytes(), &mut out)?;
            Ok(exit::OK)
        }
        Cmd::Mount(a) => {
            let mut opts = hbb::mount::Options {
                archive: a.archive.clone(),
                mountpoint: a.mountpoint.clone(),
                foreground: a.foreground,
                cache_bytes: a.cache,
                threads: a.threads.unwrap_or_else(default_threads).max(1),
                options: a.options.clone(),
            };
            if a.mount_helper {
                // Called by mount(8): its options, as it means them.
                let m = helper::options_from_mount8(&a.options)?;
                opts.options = m.options;
                opts.cache_bytes = m.cache.unwrap_or(opts.cache_bytes);
                opts.threads = m.threads.unwrap_or(opts.threads);
            }
            hbb::mount::mount(&opts).with_context(|| {
                format!(
                    "cannot mount {} on {}",
                    a.archive.display(),
                    a.mountpoint.display()
                )
            })?;
            Ok(exit::OK)
        }
        Cmd::Umount(a) => {
            hbb::mount::umount(&a.mountpoint, a.lazy)?;
            Ok(exit::OK)
        }
        Cmd::Completions(a) => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(a.shell, &mut hbb::cli::command(), "hbb", &mut out);
            out.flush()?;
            Ok(exit::OK)
        }
        Cmd::Man(a) => {
            hbb::manpages::write_all(&a.dir)
                .with_context(|| format!("cannot write the man pages into {}", a.dir.display()))?;
            Ok(exit::OK)
        }
    }
}
