//! The `hbb` binary: parse the command line, run it, map the outcome to an
//! exit code (see `cli::exit`).

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use log::{error, info, warn};

use hbb::cli::{Cli, Cmd, default_threads, exit};
use hbb::mount::helper;
use hbb::{inspect, restore, snapshot, verify};

fn main() -> ExitCode {
    let cli = hbb::cli::parse();
    hbb::logging::init(cli.verbose, cli.quiet);
    // A reader of `ls` or `cat` that stops early is not an error; a pipe
    // that closes under `snapshot -` is (the archive is incomplete).
    let quiet_pipe = !matches!(cli.cmd, Cmd::Snapshot(_));
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
            || matches!(c.downcast_ref::<hbb::Error>(), Some(hbb::Error::Io { err, .. }) if err.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let quiet = cli.quiet > 0;
    match cli.cmd {
        Cmd::Snapshot(a) => {
            let t0 = Instant::now();
            if a.stop_with_stdin {
                // The master's ssh session ended: stop as on SIGTERM (the
                // partial snapshot is removed; nothing is named).
                std::thread::spawn(|| {
                    let mut sink = [0u8; 256];
                    let mut stdin = std::io::stdin();
                    while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
                    // SAFETY: raise only sends a signal to this process.
                    unsafe {
                        libc::raise(libc::SIGTERM);
                    }
                });
            }
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
                repo: None,
            };
            let remote = hbb::remote::parse(&a.archive).is_some();
            let into_repo = hbb::repo::is_repo(&a.archive) || remote;
            if a.compress_on == hbb::cli::CompressOn::Agent && !remote {
                anyhow::bail!(
                    "--compress-on agent is for a repository on another host (ssh://…); here the snapshot's threads compress"
                );
            }
            if !into_repo && (a.name.is_some() || !a.tags.is_empty()) {
                anyhow::bail!(
                    "--name and --tag are for snapshots into a repository, and {} is not one (create it with `hbb repo init`)",
                    a.archive.display()
                );
            }
            let mut row = None;
            let out = if into_repo {
                let rs = hbb::repo::ops::RepoSnapshot {
                    name: a.name.clone(),
                    tags: a.tags.clone(),
                    job: a.job.clone().unwrap_or_default(),
                    lock_wait: a.lock_wait,
                    compress_on_agent: a.compress_on == hbb::cli::CompressOn::Agent,
                };
                let made = hbb::repo::ops::snapshot_into(opts, rs)
                    .with_context(|| format!("snapshot of {} failed", a.source.display()))?;
                info!(
                    "snapshot {} in {}: {} of data, {} files reused from {}, {} bytes new",
                    made.row.name,
                    a.archive.display(),
                    made.row.size,
                    made.row.reused_files,
                    if made.row.parent.is_empty() {
                        "no parent"
                    } else {
                        &made.row.parent
                    },
                    made.row.bytes_stored
                );
                row = Some(made.row);
                made.outcome
            } else {
                snapshot::snapshot(&opts)
                    .with_context(|| format!("snapshot of {} failed", a.source.display()))?
            };
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
                let mut j = j;
                if let Some(row) = &row {
                    // Into a repository: the snapshot as `hbb list --json` shows it.
                    j["snapshot"] = serde_json::to_value(row)?;
                }
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
                print_json(&j)?;
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
        Cmd::Verify(a) if hbb::repo::handle::is_repo_arg(&a.archive) => {
            // Every snapshot of the repository.
            let threads = a.threads.unwrap_or_else(default_threads).max(1);
            let repo = hbb::repo::handle::Handle::open(&a.archive)?;
            let names = repo.names()?;
            let mut all_ok = true;
            let mut reports = Vec::new();
            for name in names {
                let mut p = a.archive.clone().into_os_string();
                p.push(format!("::{name}"));
                let r = match verify::verify(std::path::Path::new(&p), None, threads) {
                    Ok(r) => r,
                    // Pruned since the list was taken: not an error.
                    Err(_) if !repo.names()?.contains(&name) => {
                        info!("{name}: pruned meanwhile; not verified");
                        continue;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::from(e)
                            .context(format!("verify of {}::{name} failed", a.archive.display())));
                    }
                };
                all_ok &= r.ok;
                if !a.json {
                    for b in &r.bad_blocks {
                        error!(
                            "{name}: bad block {} at offset {}: {}",
                            b.block, b.offset, b.error
                        );
                    }
                    info!(
                        "{name}: {} frames, {} bytes checked: {}",
                        r.frames_checked,
                        r.bytes_checked,
                        if r.ok { "OK" } else { "FAILED" }
                    );
                }
                reports.push(serde_json::json!({"snapshot": name, "report": r}));
            }
            if a.json {
                print_json(&serde_json::json!({"ok": all_ok, "snapshots": reports}))?;
            }
            Ok(if all_ok {
                exit::OK
            } else {
                exit::VERIFY_FAILED
            })
        }
        Cmd::Verify(a) => {
            let threads = a.threads.unwrap_or_else(default_threads).max(1);
            let r = verify::verify(&a.archive, a.source.as_deref(), threads)
                .with_context(|| format!("verify of {} failed", a.archive.display()))?;
            if a.json {
                print_json(&r)?;
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
        Cmd::Info(a) if hbb::repo::handle::is_repo_arg(&a.archive) => {
            let i = hbb::repo::handle::Handle::open(&a.archive)?.info()?;
            if a.json {
                print_json(&i)?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "repository:   {} (id {}, created {})",
                    i.path, i.id, i.created
                )?;
                writeln!(
                    out,
                    "snapshots:    {} of {} sources",
                    i.snapshots, i.sources
                )?;
                writeln!(
                    out,
                    "data:         {} in the snapshots",
                    human(i.data_bytes)
                )?;
                writeln!(
                    out,
                    "stored:       {} in {} packs (ratio {:.2}: compression and deduplication)",
                    human(i.stored_bytes),
                    i.packs,
                    i.ratio
                )?;
                writeln!(out, "newest:       {}", i.newest)?;
            }
            Ok(exit::OK)
        }
        Cmd::Info(a) => {
            let ar = hbb::repo::handle::open_archive(&a.archive)?;
            let i = inspect::info(&ar);
            if a.json {
                print_json(&i)?;
            } else {
                inspect::print_info(&i, &mut std::io::stdout().lock())?;
            }
            Ok(exit::OK)
        }
        Cmd::Ls(a) => {
            let ar = hbb::repo::handle::open_archive(&a.archive)?;
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
            let ar = hbb::repo::handle::open_archive(&a.archive)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            inspect::cat(&ar, a.path.as_os_str().as_bytes(), &mut out)?;
            Ok(exit::OK)
        }
        Cmd::Mount(a) => {
            let (repo, _) = hbb::repo::split_target(&a.archive);
            let target = if hbb::repo::is_repo(&a.archive) {
                repo_mount_target(&a.archive)?
            } else if let Some(url) = hbb::remote::parse(&a.archive) {
                remote_mount_target(&url)?
            } else if hbb::remote::parse(&repo).is_some() {
                // Opened by the mount's daemon (its connection's threads
                // would not survive going to the background).
                let arg = a.archive.clone();
                hbb::mount::Target::Lazy {
                    label: a.archive.clone(),
                    open: Box::new(move || hbb::repo::handle::open_archive(&arg)),
                }
            } else {
                hbb::mount::Target::Archive(hbb::repo::ops::resolve(&a.archive)?)
            };
            let mut opts = hbb::mount::Options {
                target,
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
            hbb::mount::mount(opts).with_context(|| {
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
        Cmd::Repo(r) => repo_cmd(r.cmd),
        Cmd::List(a) => {
            let rows = hbb::repo::handle::Handle::open(&a.repo)?.list()?;
            if a.json {
                print_json(&rows)?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<32} {:<19} {:<6} {:>10} {:>10} {:>7} {:<10} SOURCE",
                    "NAME", "TIME", "MODE", "SIZE", "NEW", "FILES", "STATUS"
                )?;
                for r in &rows {
                    writeln!(
                        out,
                        "{:<32} {:<19} {:<6} {:>10} {:>10} {:>7} {:<10} {}:{}{}",
                        r.name,
                        hbb::master::local(r.started_ns).format("%Y-%m-%d %H:%M:%S"),
                        r.mode,
                        human(r.size),
                        human(r.bytes_stored),
                        r.files,
                        r.status,
                        r.host,
                        r.source,
                        if r.tags.is_empty() {
                            String::new()
                        } else {
                            format!(" [{}]", r.tags.join(","))
                        }
                    )?;
                }
            }
            Ok(exit::OK)
        }
        Cmd::Prune(a) => {
            let o = hbb::repo::prune::Options {
                policy: a.keep.policy(),
                dry_run: a.dry_run,
                lock_wait: a.lock_wait,
                source: a.source.as_ref().map(|s| {
                    (
                        hbb::sys::hostname(),
                        std::path::absolute(s)
                            .unwrap_or_else(|_| s.clone())
                            .to_string_lossy()
                            .into_owned(),
                    )
                }),
            };
            let r = hbb::repo::handle::Handle::open(&a.repo)?.prune(&o)?;
            if a.json {
                print_json(&r)?;
            } else {
                for d in &r.snapshots {
                    info!(
                        "{} {:<32} {}  {}",
                        if d.keep {
                            "keep  "
                        } else if r.dry_run {
                            "would prune"
                        } else {
                            "pruned"
                        },
                        d.name,
                        d.time,
                        d.reason
                    );
                }
                if let Some(why) = &r.gc_skipped {
                    warn!("space not reclaimed: {why}");
                } else if !r.dry_run {
                    info!(
                        "{} snapshots removed; {} packs deleted, {} repacked ({} snapshots rewritten); {} freed",
                        r.removed.len(),
                        r.packs_deleted,
                        r.packs_repacked,
                        r.snapshots_rewritten,
                        human(r.bytes_freed.max(0) as u64)
                    );
                }
            }
            Ok(exit::OK)
        }
        Cmd::Job(j) => job_cmd(cli.home.as_deref(), j.cmd, quiet),
        Cmd::Host(h) => host_cmd(cli.home.as_deref(), h.cmd),
        Cmd::Daemon(a) => {
            let home = hbb::master::home(cli.home.as_deref());
            if !a.foreground {
                daemonize(&home)?;
            }
            hbb::master::daemon(
                &home,
                &hbb::master::DaemonOptions {
                    max_jobs: a.max_jobs.max(1),
                    group_max_jobs: a.group_max_jobs,
                    retries: a.retries,
                    retry_delay: a.retry_delay,
                    finish_on_stop: a.finish_on_stop,
                    verbose: cli.verbose,
                },
            )?;
            Ok(exit::OK)
        }
        Cmd::Status(a) => {
            let home = hbb::master::home(cli.home.as_deref());
            let st = hbb::master::status(&home, a.group.as_deref())?;
            if a.json {
                print_json(&st)?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<2}{:<16} {:<12} {:<11} {:<19} {:<19} {:>10} {:>12} {:>4}  SOURCE → REPO",
                    "", "JOB", "HOST", "LAST", "LAST RUN", "NEXT RUN", "SIZE", "GROWTH/DAY", "SNAP"
                )?;
                for s in &st {
                    writeln!(
                        out,
                        "{:<2}{:<16} {:<12} {:<11} {:<19} {:<19} {:>10} {:>12} {:>4}  {} → {}",
                        if s.attention { "!" } else { "" },
                        s.job,
                        if s.host.is_empty() {
                            "-".to_string()
                        } else if s.group.is_empty() {
                            s.host.clone()
                        } else {
                            format!("{}/{}", s.group, s.host)
                        },
                        if s.running { "running" } else { &s.last_status },
                        s.last_run,
                        s.next_run,
                        human(s.size),
                        s.growth_per_day
                            .map(|g| format!(
                                "{}{}",
                                if g < 0.0 { "-" } else { "+" },
                                human(g.abs() as u64)
                            ))
                            .unwrap_or_default(),
                        s.snapshots,
                        s.source,
                        s.repo
                    )?;
                    if s.attention && !s.last_message.is_empty() {
                        writeln!(out, "    {}", s.last_message)?;
                    }
                }
            }
            Ok(if st.iter().any(|s| s.attention) {
                exit::INCOMPLETE
            } else {
                exit::OK
            })
        }
        Cmd::History(a) => {
            let home = hbb::master::home(cli.home.as_deref());
            let m = hbb::master::Master::open(&home)?;
            let what = a.what.as_deref().map(|w| {
                if std::path::Path::new(w).exists() {
                    std::path::absolute(w)
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| w.to_string())
                } else {
                    w.to_string()
                }
            });
            let runs = m.runs(what.as_deref(), a.limit)?;
            if a.json {
                print_json(&runs)?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<19} {:<16} {:<9} {:<11} {:>8} {:>10} {:>10}  SNAPSHOT / MESSAGE",
                    "STARTED", "JOB", "TRIGGER", "STATUS", "SECONDS", "SIZE", "NEW"
                )?;
                for r in &runs {
                    writeln!(
                        out,
                        "{:<19} {:<16} {:<9} {:<11} {:>8.1} {:>10} {:>10}  {}{}",
                        r.started,
                        r.job,
                        r.trigger,
                        r.status,
                        r.seconds,
                        human(r.size),
                        human(r.bytes_stored),
                        r.snapshot,
                        if r.message.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", r.message)
                        }
                    )?;
                }
            }
            Ok(exit::OK)
        }
        Cmd::Serve(a) => {
            hbb::remote::server::serve(&hbb::remote::server::Options {
                restrict: a.restrict_to_repository,
            })?;
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
        Cmd::MountArchives(a) => {
            let opts = hbb::mount::Options {
                target: hbb::mount::archive_files(&a.archives)?,
                mountpoint: a.mountpoint.clone(),
                foreground: a.foreground,
                cache_bytes: a.cache,
                threads: a.threads.unwrap_or_else(default_threads).max(1),
                options: Vec::new(),
            };
            hbb::mount::mount(opts)
                .with_context(|| format!("cannot mount on {}", a.mountpoint.display()))?;
            Ok(exit::OK)
        }
    }
}

/// Pretty JSON on stdout; a closed pipe is an error, not a panic.
fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    writeln!(std::io::stdout().lock(), "{text}")?;
    Ok(())
}

fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut k = 0;
    while v >= 1024.0 && k < U.len() - 1 {
        v /= 1024.0;
        k += 1;
    }
    if k == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[k])
    }
}

/// Every snapshot of a repository as a directory, opened when first looked into.
fn repo_mount_target(path: &std::path::Path) -> anyhow::Result<hbb::mount::Target> {
    let repo = hbb::repo::Repo::open(path)?;
    let cat = hbb::repo::catalog::Catalog::open(&repo)?;
    let times: std::collections::HashMap<String, i64> = cat
        .snapshots()?
        .into_iter()
        .map(|r| (r.name, r.started_ns))
        .collect();
    let mut entries = Vec::new();
    for name in repo.snapshot_names()? {
        let ns = times.get(&name).copied().unwrap_or(0).max(0) as u64;
        let root = repo.root.clone();
        let n = name.clone();
        entries.push(hbb::mount::Entry {
            name: name.into_bytes(),
            time: std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns),
            open: Box::new(move || hbb::repo::Repo::open(&root)?.open_snapshot(&n)),
        });
    }
    Ok(hbb::mount::Target::Many {
        label: repo.root.clone(),
        entries,
    })
}

/// Every snapshot of a remote repository as a directory. The list is
/// fetched here; the mount's daemon connects again (after the fork) when a
/// snapshot is first looked into, one connection for all of them.
fn remote_mount_target(url: &hbb::remote::Url) -> anyhow::Result<hbb::mount::Target> {
    use std::sync::{Arc, Mutex};
    type Shared = Arc<Mutex<Option<Arc<hbb::remote::client::Client>>>>;
    let rows = {
        let c = hbb::remote::client::Client::connect(url, false)?;
        c.list()?
        // The connection (and its threads) ends here, before the fork.
    };
    let conn: Shared = Arc::new(Mutex::new(None));
    let mut entries = Vec::new();
    for r in rows {
        let conn = conn.clone();
        let url = url.clone();
        let n = r.name.clone();
        entries.push(hbb::mount::Entry {
            name: r.name.into_bytes(),
            time: std::time::UNIX_EPOCH
                + std::time::Duration::from_nanos(r.started_ns.max(0) as u64),
            open: Box::new(move || {
                let c = {
                    let mut g = conn.lock().unwrap();
                    if g.is_none() {
                        *g = Some(hbb::remote::client::Client::connect(&url, false)?);
                    }
                    g.as_ref().unwrap().clone()
                };
                c.open_snapshot(&n)
            }),
        });
    }
    Ok(hbb::mount::Target::Many {
        label: url.to_string().into(),
        entries,
    })
}

fn repo_cmd(cmd: hbb::cli::RepoCmd) -> anyhow::Result<u8> {
    use hbb::cli::RepoCmd;
    match cmd {
        RepoCmd::Init { repo } => {
            let (at, id) = hbb::repo::handle::Handle::init(&repo)?;
            info!("created repository {at} (id {id})");
        }
        RepoCmd::RebuildCatalog { repo } => {
            if hbb::remote::parse(&repo).is_some() {
                anyhow::bail!(
                    "{}: rebuild a catalog on the repository's own host (`hbb repo rebuild-catalog PATH` there)",
                    repo.display()
                );
            }
            let r = hbb::repo::Repo::open(&repo)?;
            let _lock = r.lock(
                "hbb repo rebuild-catalog",
                std::time::Duration::from_secs(60),
            )?;
            let mut c = hbb::repo::catalog::Catalog::open(&r)?;
            c.rebuild(&r)?;
            info!(
                "{}: catalog rebuilt from {} snapshots",
                repo.display(),
                c.snapshots()?.len()
            );
        }
        RepoCmd::Export { snapshot, file } => {
            let n = hbb::repo::ops::export(&snapshot, &file)
                .with_context(|| format!("export of {} failed", snapshot.display()))?;
            info!("{} written ({n} bytes of frames)", file.display());
        }
    }
    Ok(exit::OK)
}

fn job_cmd(
    home: Option<&std::path::Path>,
    cmd: hbb::cli::JobCmd,
    quiet: bool,
) -> anyhow::Result<u8> {
    use hbb::cli::JobCmd;
    let home = hbb::master::home(home);
    match cmd {
        JobCmd::Add(a) => {
            let m = hbb::master::Master::open(&home)?;
            // A job of this host: paths from here. Of another host: as given,
            // paths there (checked to be absolute), or an ssh:// repository.
            let local = a.host.is_none();
            let abs = |p: &std::path::Path| {
                if !local || hbb::remote::parse(p).is_some() {
                    p.to_path_buf()
                } else {
                    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
                }
            };
            let job = hbb::master::Job {
                name: a.name.clone(),
                source: abs(&a.source),
                repo: abs(&a.repo),
                schedule: a.schedule.clone(),
                mode: format!("{:?}", a.mode).to_lowercase(),
                keep: a.keep.policy(),
                excludes: a.exclude.clone(),
                block_size: a.block_size,
                level: a.level,
                one_file_system: a.one_file_system,
                tags: a.tags.clone(),
                created_ns: hbb::master::now_ns(),
                host: a.host.clone().unwrap_or_default(),
                compress_on: match a.compress_on {
                    hbb::cli::CompressOn::Source => "source".into(),
                    hbb::cli::CompressOn::Agent => "agent".into(),
                },
            };
            m.add_job(&job, a.replace)?;
            let next = hbb::schedule::Schedule::parse(&job.schedule)
                .ok()
                .and_then(|s| s.next_after(chrono::Local::now()))
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "never".into());
            info!(
                "job {} added: {} → {}, {}; next run {next}",
                job.name,
                job.source.display(),
                job.repo.display(),
                job.schedule
            );
            Ok(exit::OK)
        }
        JobCmd::List { json } => {
            let m = hbb::master::Master::open(&home)?;
            let jobs = m.jobs()?;
            if json {
                print_json(&jobs)?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<16} {:<20} {:<24} SOURCE → REPO",
                    "JOB", "SCHEDULE", "KEEP"
                )?;
                for j in &jobs {
                    writeln!(
                        out,
                        "{:<16} {:<20} {:<24} {} → {}",
                        j.name,
                        j.schedule,
                        if j.keep.is_empty() {
                            "everything".to_string()
                        } else {
                            j.keep.describe()
                        },
                        j.source.display(),
                        j.repo.display()
                    )?;
                }
            }
            Ok(exit::OK)
        }
        JobCmd::Rm { name } => {
            hbb::master::Master::open(&home)?.rm_job(&name)?;
            info!("job {name} removed (its snapshots and history stay)");
            Ok(exit::OK)
        }
        JobCmd::Run {
            name,
            group,
            run_id,
            trigger,
        } => {
            let names = match (name, group) {
                (Some(n), _) => vec![n],
                (None, Some(g)) => {
                    let m = hbb::master::Master::open(&home)?;
                    let hosts = m.hosts()?;
                    if !hosts.iter().any(|h| h.group == g) {
                        anyhow::bail!("no host is in group {g:?} (see `hbb host list`)");
                    }
                    m.jobs()?
                        .into_iter()
                        .filter(|j| m.group_of(j, &hosts) == g)
                        .map(|j| j.name)
                        .collect()
                }
                (None, None) => anyhow::bail!("name a job, or --group"),
            };
            let mut worst = exit::OK;
            for name in names {
                let (code, row) = match hbb::master::run_job(&home, &name, run_id, &trigger, quiet)
                {
                    Ok(r) => r,
                    Err(e) => {
                        error!("job {name}: {e}");
                        worst = exit::ERROR;
                        continue;
                    }
                };
                match row.status.as_str() {
                    "ok" => info!("job {name}: ok, snapshot {}", row.snapshot),
                    "incomplete" => warn!(
                        "job {name}: incomplete, snapshot {}: {}",
                        row.snapshot, row.message
                    ),
                    _ => error!("job {name}: {}: {}", row.status, row.message),
                }
                // A failure outranks an incomplete run (1 over 3).
                if worst != exit::ERROR && code != exit::OK {
                    worst = code;
                }
            }
            Ok(worst)
        }
    }
}

fn host_cmd(home: Option<&std::path::Path>, cmd: hbb::cli::HostCmd) -> anyhow::Result<u8> {
    use hbb::cli::HostCmd;
    let home = hbb::master::home(home);
    let m = hbb::master::Master::open(&home)?;
    match cmd {
        HostCmd::Add {
            name,
            url,
            group,
            hbb,
            replace,
        } => {
            let u = hbb::fleet::host_url(&url)?;
            let url = u.to_string().trim_end_matches('/').to_string();
            m.add_host(
                &hbb::fleet::Host {
                    name: name.clone(),
                    url: url.clone(),
                    group,
                    hbb,
                    created_ns: hbb::master::now_ns(),
                },
                replace,
            )?;
            info!("host {name} added: {url}");
        }
        HostCmd::List { json, check } => {
            let hosts = m.hosts()?;
            let jobs = m.jobs()?;
            let mut rows = Vec::new();
            for h in &hosts {
                let answer = if check {
                    Some(match hbb::fleet::ssh_command(h, &["--version".into()]) {
                        Ok(mut c) => match c.stdin(std::process::Stdio::null()).output() {
                            Ok(o) if o.status.success() => {
                                String::from_utf8_lossy(&o.stdout).trim().to_string()
                            }
                            Ok(o) => format!(
                                "error: {}",
                                String::from_utf8_lossy(&o.stderr)
                                    .trim()
                                    .replace('\n', " / ")
                            ),
                            Err(e) => format!("error: {e}"),
                        },
                        Err(e) => format!("error: {e}"),
                    })
                } else {
                    None
                };
                let n = jobs.iter().filter(|j| j.host == h.name).count();
                rows.push((h, n, answer));
            }
            if json {
                let v: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(h, n, answer)| {
                        let mut j = serde_json::to_value(h).unwrap();
                        j["jobs"] = (*n).into();
                        if let Some(a) = answer {
                            j["check"] = a.clone().into();
                        }
                        j
                    })
                    .collect();
                print_json(&v)?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{:<16} {:<12} {:>4}  URL", "HOST", "GROUP", "JOBS")?;
                for (h, n, answer) in &rows {
                    writeln!(
                        out,
                        "{:<16} {:<12} {:>4}  {}{}",
                        h.name,
                        if h.group.is_empty() { "-" } else { &h.group },
                        n,
                        h.url,
                        answer
                            .as_ref()
                            .map(|a| format!("  [{a}]"))
                            .unwrap_or_default()
                    )?;
                }
            }
        }
        HostCmd::Rm { name } => {
            m.rm_host(&name)?;
            info!("host {name} removed");
        }
    }
    Ok(exit::OK)
}

/// Goes to the background: forks, starts a new session, logs to HOME/daemon.log.
fn daemonize(home: &std::path::Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(home)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("daemon.log"))
        .with_context(|| format!("cannot open {}/daemon.log", home.display()))?;
    // SAFETY: no other thread runs yet; the child only continues as this program.
    match unsafe { libc::fork() } {
        -1 => anyhow::bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {}
        pid => {
            info!(
                "daemon started in the background (pid {pid}); log: {}/daemon.log",
                home.display()
            );
            std::process::exit(0);
        }
    }
    // SAFETY: plain system calls on descriptors we own.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        libc::dup2(null, 0);
        libc::dup2(log.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(())
}
