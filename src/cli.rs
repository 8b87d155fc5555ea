//! The command line: clap definitions, size parsing, exit codes.

use std::path::PathBuf;

use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::snapshot::ModeChoice;

/// Exit codes (README "Exit codes" and docs mirror this table).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A fatal error: nothing (or nothing usable) was done.
    pub const ERROR: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// Finished, but incomplete: some entries could not be read (snapshot)
    /// or written (restore); each was reported.
    pub const INCOMPLETE: u8 = 3;
    /// verify found damaged blocks or differences from the source.
    pub const VERIFY_FAILED: u8 = 4;

    /// The one table of exit codes: `hbb --help`, the man pages and
    /// README's "Exit codes" show it (a test checks the README's copy).
    pub const TABLE: &[(u8, &str)] = &[
        (OK, "success"),
        (
            ERROR,
            "error: nothing usable was done (missing source, not an archive, damaged index, \
             disk full, …); the message names the file, block and offset",
        ),
        (USAGE, "bad command line"),
        (
            INCOMPLETE,
            "finished but incomplete: some entries could not be read (snapshot) or written \
             (restore); each is listed on stderr",
        ),
        (
            VERIFY_FAILED,
            "`verify` found damaged blocks or differences from the source",
        ),
    ];
}

pub const DEFAULT_BLOCK_SIZE: &str = "1MiB";
pub const DEFAULT_THRESHOLD: u64 = 100_000;

#[derive(Parser, Debug)]
#[command(
    name = "hbb",
    version,
    about = "High-speed bulk backup: block-parallel zstd archives of directory trees and volumes",
    long_about = "hbb backs up a directory tree (file mode) or a whole volume (volume mode) into one \
                  indexed, zstd-compressed archive, compressing blocks on every core, and reads it \
                  back: restore, verify, info, ls, cat."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    /// More log output on stderr: -v debug, -vv trace (HBB_LOG=FILTER
    /// picks modules and levels, as RUST_LOG does).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less output: no progress and no summary, only warnings and errors;
    /// -qq: errors only.
    #[arg(short = 'q', long = "quiet", action = ArgAction::Count, global = true)]
    pub quiet: u8,
    /// Where the jobs and their history live (the master's database)
    /// [default: $HBB_HOME, or /var/lib/hbb as root, ~/.local/state/hbb otherwise].
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Back up SOURCE (a directory, block device or image file) into ARCHIVE ('-' for stdout).
    Snapshot(SnapshotArgs),
    /// Restore ARCHIVE (or only PATHs in it) into DEST.
    Restore(RestoreArgs),
    /// Check every block of ARCHIVE; with --source, compare with the source too.
    Verify(VerifyArgs),
    /// Show what an archive holds and how it was made.
    Info(InfoArgs),
    /// List the entries of a directory in the archive.
    Ls(LsArgs),
    /// Write a file of the archive to stdout.
    Cat(CatArgs),
    /// Mount ARCHIVE read-only on MOUNTPOINT (FUSE), decompressing blocks on demand.
    Mount(MountArgs),
    /// Unmount an archive mounted with `hbb mount`.
    Umount(UmountArgs),
    /// Create a repository, rebuild its catalog, export a snapshot as one archive file.
    Repo(RepoArgs),
    /// List the snapshots of a repository.
    List(ListArgs),
    /// Delete the snapshots retention rules do not keep, and reclaim their space.
    Prune(PruneArgs),
    /// Scheduled backup jobs: add, list, rm, run.
    Job(JobArgs),
    /// Manager hosts the master runs jobs on, over ssh: add, list, rm.
    Host(HostArgs),
    /// The scheduler: runs each job when due (see `hbb job`).
    Daemon(DaemonArgs),
    /// Each job's last run, result, next run, size and growth.
    Status(StatusArgs),
    /// Every run, newest first (of one job or source path, if given).
    History(HistoryArgs),
    /// Serve a repository to `hbb` on another host, over ssh's stdin and stdout (run by ssh, like `borg serve`).
    Serve(ServeArgs),
    /// Print the completion script for SHELL on stdout.
    Completions(CompletionsArgs),
    /// `hbb man DIR`: writes the man pages (hbb.1 and hbb-COMMAND.1) into
    /// DIR. Not a clap subcommand, so that neither the pages nor the
    /// completions offer it: [`parse`] recognises it.
    #[command(skip)]
    Man(ManArgs),
    /// `hbb mount-archives MOUNTPOINT ARCHIVE...`: for tests only, until
    /// `hbb mount REPO MOUNTPOINT` replaces it; mounts the ARCHIVE files
    /// together, each as a directory named by its file's stem (a
    /// multi-archive mount, opened lazily). Hidden as `man` is (recognised
    /// by [`parse`]): clap's `hide` still lets bash complete it.
    #[command(skip)]
    MountArchives(MountArchivesArgs),
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    pub source: PathBuf,
    pub archive: PathBuf,
    /// auto: the patent's rule (devices and images by volume; directories by
    /// file unless they hold more entries than --volume-threshold and are the
    /// root of a filesystem mounted read-only from a block device).
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ModeChoice,
    /// Compression threads [default: the number of cores].
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Size of a block, the unit of compression and of random access (4K, 24MiB, 1G...).
    #[arg(long, default_value = DEFAULT_BLOCK_SIZE, value_parser = parse_size)]
    pub block_size: u64,
    /// zstd compression level (1-22; negative levels are faster).
    #[arg(long, default_value_t = 3, allow_hyphen_values = true)]
    pub level: i32,
    /// Entry count above which auto mode considers imaging the volume.
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    pub volume_threshold: u64,
    /// Leave out entries matching GLOB (a name anywhere, or a path from the
    /// source root when it holds a '/'). Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Do not descend into directories on other filesystems.
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// Allow imaging a block device that is mounted read-write.
    #[arg(long)]
    pub allow_mounted_rw: bool,
    /// Print a JSON summary on stdout (on stderr when the archive goes to stdout).
    #[arg(long)]
    pub json: bool,
    /// Into a repository: the snapshot's name [default: SOURCE's name and the time].
    #[arg(long)]
    pub name: Option<String>,
    /// Into a repository: a tag for the snapshot. Repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Into a repository: wait up to this long for another writer to finish (30s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    pub lock_wait: std::time::Duration,
    /// The job this snapshot runs for (set by `hbb job run`).
    #[arg(long, hide = true)]
    pub job: Option<String>,
    /// Stop (as on SIGTERM) when standard input closes: set by a master
    /// running this snapshot through ssh, so that its end ends the run.
    #[arg(long, hide = true)]
    pub stop_with_stdin: bool,
    /// Into a remote repository: which end compresses. source: this host's
    /// threads, and only compressed blocks the repository lacks cross the
    /// network; agent: blocks go raw and the repository's host compresses.
    #[arg(long, value_enum, default_value = "source")]
    pub compress_on: CompressOn,
}

#[derive(
    clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CompressOn {
    Source,
    Agent,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Only this repository may be opened (repeatable); for the command= of
    /// a key in authorized_keys. Paths are compared after resolving
    /// symbolic links and `..`.
    #[arg(long, value_name = "PATH")]
    pub restrict_to_repository: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RepoArgs {
    #[command(subcommand)]
    pub cmd: RepoCmd,
}

#[derive(Subcommand, Debug)]
pub enum RepoCmd {
    /// Create an empty repository at REPO (a new or empty directory).
    Init { repo: PathBuf },
    /// Rebuild the catalog (catalog.db) from the snapshot files.
    RebuildCatalog { repo: PathBuf },
    /// Write snapshot REPO::NAME as one self-contained archive FILE.
    Export { snapshot: PathBuf, file: PathBuf },
}

#[derive(Args, Debug)]
pub struct ListArgs {
    pub repo: PathBuf,
    /// Print the list as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Retention rules, as borg and restic define them.
#[derive(Args, Debug, Clone, Default)]
pub struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// ... of each of the last N days.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// ... of each of the last N ISO weeks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// ... of each of the last N months.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// ... of each of the last N years.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep every snapshot newer than this (2d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_within: Option<std::time::Duration>,
}

impl KeepArgs {
    pub fn policy(&self) -> crate::retention::Policy {
        crate::retention::Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within_secs: self.keep_within.map(|d| d.as_secs()),
        }
    }
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    pub repo: PathBuf,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Only the snapshots of this source path (as the snapshots record it, absolute).
    #[arg(long, value_name = "PATH")]
    pub source: Option<PathBuf>,
    /// Show what would be deleted; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Wait up to this long for another writer to finish.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    pub lock_wait: std::time::Duration,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(subcommand)]
    pub cmd: JobCmd,
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Add (or with --replace, change) a job.
    Add(JobAddArgs),
    /// List the jobs.
    List {
        /// As JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove a job (its snapshots and history stay).
    Rm { name: String },
    /// Run a job now (or every job of a group of hosts, one after another),
    /// in the foreground; exits non-zero if one failed or was incomplete.
    Run {
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        name: Option<String>,
        /// Every job of the hosts in this group.
        #[arg(long)]
        group: Option<String>,
        /// The run record the daemon made for this run.
        #[arg(long, hide = true)]
        run_id: Option<i64>,
        /// Why it runs (manual, schedule, catch-up, retry).
        #[arg(long, hide = true, default_value = "manual")]
        trigger: String,
    },
}

#[derive(Args, Debug)]
pub struct JobAddArgs {
    pub name: String,
    /// What to back up.
    #[arg(long)]
    pub source: PathBuf,
    /// The repository to back up into (see `hbb repo init`).
    #[arg(long)]
    pub repo: PathBuf,
    /// When: a cron expression (5 fields, or 6 with seconds first),
    /// hourly, daily [HH:MM], weekly [DAY] [HH:MM], monthly, yearly, or every 10m / 2h / 30s.
    #[arg(long)]
    pub schedule: String,
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ModeChoice,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Leave out entries matching GLOB. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    #[arg(long, value_parser = parse_size)]
    pub block_size: Option<u64>,
    #[arg(long, allow_hyphen_values = true)]
    pub level: Option<i32>,
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// Tag for its snapshots. Repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Replace a job of the same name.
    #[arg(long)]
    pub replace: bool,
    /// Run it on this manager host (see `hbb host add`): --source and
    /// --repo are then paths on that host (or --repo ssh://… of an agent).
    #[arg(long)]
    pub host: Option<String>,
    /// Into a remote repository: which end compresses (see `snapshot --compress-on`).
    #[arg(long, value_enum, default_value = "source")]
    pub compress_on: CompressOn,
}

#[derive(Args, Debug)]
pub struct HostArgs {
    #[command(subcommand)]
    pub cmd: HostCmd,
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Add (or with --replace, change) a manager host, reached with ssh (HBB_RSH).
    Add {
        name: String,
        /// ssh://[user@]host[:port] or [user@]host.
        url: String,
        /// Its group, for `status --group`, `job run --group` and the daemon's --group-max-jobs.
        #[arg(long, default_value = "")]
        group: String,
        /// The hbb program on that host.
        #[arg(long, value_name = "PATH", default_value = "hbb")]
        hbb: String,
        #[arg(long)]
        replace: bool,
    },
    /// List the hosts (with --check, whether each answers over ssh).
    List {
        #[arg(long)]
        json: bool,
        /// Run `hbb --version` on each host.
        #[arg(long)]
        check: bool,
    },
    /// Remove a host (it must have no jobs).
    Rm { name: String },
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Stay in the foreground, logging to stderr (for systemd); otherwise
    /// go to the background and log to HOME/daemon.log.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// At most this many jobs run at once.
    #[arg(long, default_value_t = 2)]
    pub max_jobs: usize,
    /// At most this many jobs of one group of hosts run at once (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub group_max_jobs: usize,
    /// A failed run is tried again this many times.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Wait before the first retry; doubled for each next one.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1m")]
    pub retry_delay: std::time::Duration,
    /// On SIGTERM, let running snapshots finish instead of abandoning them.
    #[arg(long)]
    pub finish_on_stop: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// As JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Only the jobs of the hosts in this group.
    #[arg(long)]
    pub group: Option<String>,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// A job name or a source path.
    pub what: Option<String>,
    /// Show at most N runs.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub limit: usize,
    /// As JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    pub archive: PathBuf,
    /// A directory (created if missing). For a volume archive: a file or
    /// block device to write the volume to.
    pub dest: PathBuf,
    /// Restore only these paths of the archive (with their parents).
    pub paths: Vec<PathBuf>,
    /// Decompression threads [default: the number of cores].
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Restore owners by number, not by the names stored in the archive.
    #[arg(long)]
    pub numeric_owner: bool,
    /// Replace entries that already exist in DEST.
    #[arg(long)]
    pub overwrite: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    pub archive: PathBuf,
    /// Also compare content and metadata with this source tree, device or image.
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Checking threads [default: the number of cores].
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    pub archive: PathBuf,
    /// Print it as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    pub archive: PathBuf,
    /// A directory or entry in the archive [default: its root].
    pub path: Option<PathBuf>,
    /// Long listing: mode, links, owner, group, size, mtime.
    #[arg(short = 'l')]
    pub long: bool,
    /// List subdirectories recursively.
    #[arg(short = 'R')]
    pub recursive: bool,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    pub archive: PathBuf,
    pub path: PathBuf,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    pub archive: PathBuf,
    /// An existing directory with nothing mounted on it.
    pub mountpoint: PathBuf,
    /// Stay in the foreground and log to stderr (default: return once
    /// mounted and serve in the background, logging to syslog).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Memory for decompressed blocks, least recently used dropped first.
    #[arg(long, value_name = "SIZE", default_value = crate::mount::DEFAULT_CACHE, value_parser = parse_size)]
    pub cache: u64,
    /// Decompression threads [default: the number of cores].
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Mount option (allow_other, allow_root, auto_unmount, noexec, fsname=NAME...);
    /// repeatable or comma-separated. The mount is always read-only.
    #[arg(short = 'o', value_name = "OPTION")]
    pub options: Vec<String>,
    /// Called by mount(8) through mount.fuse3 as `hbb ARCHIVE MOUNTPOINT -o
    /// OPTIONS` (see `mount::helper`); set by [`parse`], not an option.
    #[arg(skip)]
    pub mount_helper: bool,
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    pub mountpoint: PathBuf,
    /// Detach now even if busy; it goes away when its last user closes it.
    #[arg(long, short = 'z')]
    pub lazy: bool,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Directory to write the pages to (created if missing).
    pub dir: PathBuf,
}

/// For tests only, to be replaced by `hbb mount REPO MOUNTPOINT`: mounts the
/// ARCHIVE files on MOUNTPOINT together, each as a directory named by its
/// file's stem.
#[derive(Parser, Debug)]
#[command(name = "mount-archives", bin_name = "hbb mount-archives")]
pub struct MountArchivesArgs {
    pub mountpoint: PathBuf,
    #[arg(required = true)]
    pub archives: Vec<PathBuf>,
    #[arg(long, short = 'f')]
    pub foreground: bool,
    #[arg(long, value_name = "SIZE", default_value = crate::mount::DEFAULT_CACHE, value_parser = parse_size)]
    pub cache: u64,
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

/// The command line's definition, as `--help`, the man pages and the
/// completions show it.
pub fn command() -> clap::Command {
    Cli::command().after_long_help(exit_codes_help())
}

/// Parses the process's arguments, in the mount(8) form too (`hbb ARCHIVE
/// MOUNTPOINT -o OPTIONS`, see `mount::helper`), and `hbb man DIR`; exits
/// on a bad command line, with code 2.
pub fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "man") {
        let man = ManArgs::augment_args(
            clap::Command::new("man")
                .bin_name("hbb man")
                .about("Write the man pages"),
        );
        let m = man.get_matches_from(&args[1..]);
        return Cli {
            cmd: Cmd::Man(ManArgs::from_arg_matches(&m).unwrap_or_else(|e| e.exit())),
            verbose: 0,
            quiet: 0,
            home: None,
        };
    }
    if args.get(1).is_some_and(|a| a == "mount-archives") {
        let a = MountArchivesArgs::parse_from(&args[1..]);
        return Cli {
            cmd: Cmd::MountArchives(a),
            verbose: 0,
            quiet: 0,
            home: None,
        };
    }
    let (args, mount_helper) = crate::mount::helper::rewrite_args(args);
    let m = command().get_matches_from(args);
    let mut cli = Cli::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
    if let Cmd::Mount(a) = &mut cli.cmd {
        a.mount_helper = mount_helper;
    }
    cli
}

fn exit_codes_help() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, what) in exit::TABLE {
        s.push_str(&format!("  {code}  {}\n", what.replace('`', "")));
    }
    s
}

/// Parses 4096, 4K, 4KiB, 24M, 24MiB, 1G, 1GiB (binary multiples; "KB",
/// "MB", "GB" are decimal).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 4M, 24MiB, 1G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (try K, M, G, KiB, MiB, GiB)"
            ));
        }
    };
    let v = n * mult as f64;
    if !(v.is_finite() && v >= 0.0 && v < u64::MAX as f64) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v as u64)
}

/// Parses 30s, 5m, 2h, 1d, 1h30m (humantime).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e} (try 30s, 5m, 2h, 1d)"))
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("24MiB"), Ok(24 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("256k"), Ok(256 << 10));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("x").is_err());
        assert!(parse_size("4Q").is_err());
    }
}
