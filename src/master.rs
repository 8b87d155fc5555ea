//! The master (the patent's FIG 3): reservations — jobs saying which
//! source goes to which repository, when and how often — and the history
//! of their runs, in an SQLite database at `HOME/hbb.db`; and the daemon
//! that starts each job when due.
//!
//! Jobs live in the master's database, not in a repository, because one
//! master schedules many sources into many repositories; the repository's
//! own catalog records what was made in it. The daemon runs each job as a
//! child process (`hbb job run NAME`), so a job's crash, memory or signal
//! never takes the scheduler down, and SIGTERM reaches each snapshot,
//! which then removes its partial files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::retention::Policy;
use crate::schedule::Schedule;

/// A reservation: back up `source` into `repo` on `schedule`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    pub source: PathBuf,
    pub repo: PathBuf,
    pub schedule: String,
    /// auto, file or volume.
    pub mode: String,
    /// Applied to this source's snapshots after each good run.
    pub keep: Policy,
    pub excludes: Vec<String>,
    pub block_size: Option<u64>,
    pub level: Option<i32>,
    pub one_file_system: bool,
    pub tags: Vec<String>,
    pub created_ns: i64,
    /// The manager host it runs on (`hbb host add`); "" for this host.
    #[serde(default)]
    pub host: String,
    /// Into a remote repository: "source" or "agent" (see `snapshot --compress-on`).
    #[serde(default)]
    pub compress_on: String,
}

/// One run of a job, as `hbb history` shows it.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct RunRow {
    pub id: i64,
    pub job: String,
    pub source: String,
    pub repo: String,
    /// manual, schedule, catch-up or retry.
    pub trigger: String,
    pub started: String,
    pub started_ns: i64,
    pub finished_ns: i64,
    /// running, ok, incomplete, failed or abandoned.
    pub status: String,
    pub snapshot: String,
    /// Data bytes the snapshot holds.
    pub size: u64,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub files: u64,
    pub errors: u64,
    pub message: String,
    pub mode: String,
    pub mode_reason: String,
    pub seconds: f64,
    /// The job's snapshots in its repository after the run, when the run
    /// counted them (runs on other hosts do).
    #[serde(skip)]
    pub snapshots: Option<u64>,
}

pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

pub fn local(ns: i64) -> DateTime<Local> {
    Local.timestamp_nanos(ns)
}

fn when(ns: i64) -> String {
    if ns == 0 {
        return String::new();
    }
    local(ns).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The master's directory: `--home`, `$HBB_HOME`, /var/lib/hbb for root,
/// else `$XDG_STATE_HOME/hbb` or `~/.local/state/hbb`.
pub fn home(given: Option<&Path>) -> PathBuf {
    if let Some(h) = given {
        return h.to_path_buf();
    }
    if let Some(h) = std::env::var_os("HBB_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if crate::sys::is_root() {
        return PathBuf::from("/var/lib/hbb");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(x).join("hbb");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/state/hbb")
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    source TEXT NOT NULL,
    repo TEXT NOT NULL,
    trigger TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    finished_ns INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    snapshot TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    bytes_read INTEGER NOT NULL DEFAULT 0,
    bytes_stored INTEGER NOT NULL DEFAULT 0,
    files INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    mode TEXT NOT NULL DEFAULT '',
    mode_reason TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_job ON runs (job, started_ns);
CREATE TABLE IF NOT EXISTS hosts (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
";

pub struct Master {
    pub(crate) db: Connection,
    pub home: PathBuf,
}

fn dberr(e: rusqlite::Error) -> Error {
    Error::Other(format!("master database: {e}"))
}

impl Master {
    pub fn open(home: &Path) -> Result<Master> {
        std::fs::create_dir_all(home).at(home)?;
        let path = home.join("hbb.db");
        let db = Connection::open(&path).map_err(dberr)?;
        db.busy_timeout(Duration::from_secs(30)).map_err(dberr)?;
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(dberr)?;
        db.execute_batch(SCHEMA).map_err(dberr)?;
        // Added with hosts: how many snapshots a job had after a run.
        let has: bool = db
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('runs') WHERE name = 'snapshots'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(dberr)?
            > 0;
        if !has {
            db.execute_batch("ALTER TABLE runs ADD COLUMN snapshots INTEGER NOT NULL DEFAULT -1")
                .map_err(dberr)?;
        }
        Ok(Master {
            db,
            home: home.to_path_buf(),
        })
    }

    pub fn add_job(&self, job: &Job, replace: bool) -> Result<()> {
        if !crate::repo::valid_snapshot_name(&job.name) {
            return Err(Error::Other(format!(
                "job name {:?}: use letters, digits and ._-:+@",
                job.name
            )));
        }
        Schedule::parse(&job.schedule).map_err(Error::Other)?;
        if !["", "source", "agent"].contains(&job.compress_on.as_str()) {
            return Err(Error::Other(format!(
                "--compress-on {:?}: source or agent",
                job.compress_on
            )));
        }
        let remote_repo = crate::remote::parse(&job.repo).is_some();
        if job.compress_on == "agent" && !remote_repo {
            return Err(Error::Other(
                "--compress-on agent is for a repository on another host (ssh://…)".into(),
            ));
        }
        if !job.host.is_empty() {
            // Paths are the manager's: they are checked there, at each run.
            self.host(&job.host)?;
            if !job.source.is_absolute() || !(remote_repo || job.repo.is_absolute()) {
                return Err(Error::Other(
                    "a job on another host needs an absolute --source and an absolute --repo (or ssh://…), as paths on that host".into(),
                ));
            }
        } else if !remote_repo && !crate::repo::is_repo(&job.repo) {
            return Err(Error::Other(format!(
                "{}: not an hbb repository (create it with `hbb repo init {}`)",
                job.repo.display(),
                job.repo.display()
            )));
        }
        self.put_spec("jobs", "job", &job.name, job, replace)
    }

    /// Stores `spec` under `name` in a table of (name, spec); an existing
    /// one is an error unless `replace`.
    pub(crate) fn put_spec<T: Serialize>(
        &self,
        table: &str,
        what: &str,
        name: &str,
        spec: &T,
        replace: bool,
    ) -> Result<()> {
        let spec = serde_json::to_string(spec).unwrap();
        let verb = if replace {
            "INSERT OR REPLACE"
        } else {
            "INSERT"
        };
        let sql = format!("{verb} INTO {table} (name, spec) VALUES (?1, ?2)");
        match self.db.execute(&sql, params![name, spec]) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(Error::Other(format!(
                    "a {what} named {name:?} exists already (--replace changes it)"
                )))
            }
            Err(e) => Err(dberr(e)),
        }
    }

    /// Removes `name` from a table of (name, spec).
    pub(crate) fn rm_spec(&self, table: &str, what: &str, name: &str) -> Result<()> {
        let n = self
            .db
            .execute(&format!("DELETE FROM {table} WHERE name = ?1"), [name])
            .map_err(dberr)?;
        if n == 0 {
            return Err(Error::Other(format!("no {what} named {name:?}")));
        }
        Ok(())
    }

    pub fn jobs(&self) -> Result<Vec<Job>> {
        self.specs("jobs", "job")
    }

    /// Every row of a table of (name, spec): the specs, decoded, by name.
    pub(crate) fn specs<T: for<'de> Deserialize<'de>>(
        &self,
        table: &str,
        what: &str,
    ) -> Result<Vec<T>> {
        let mut st = self
            .db
            .prepare(&format!("SELECT spec FROM {table} ORDER BY name"))
            .map_err(dberr)?;
        let specs = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(dberr)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(dberr)?;
        specs
            .iter()
            .map(|s| {
                serde_json::from_str(s).map_err(|e| {
                    Error::Other(format!("master database: a {what} does not decode: {e}"))
                })
            })
            .collect()
    }

    pub fn job(&self, name: &str) -> Result<Job> {
        self.jobs()?
            .into_iter()
            .find(|j| j.name == name)
            .ok_or_else(|| Error::Other(format!("no job named {name:?} (see `hbb job list`)")))
    }

    pub fn rm_job(&self, name: &str) -> Result<()> {
        self.rm_spec("jobs", "job", name)
    }

    pub fn start_run(&self, job: &Job, trigger: &str, pid: u32) -> Result<i64> {
        self.db
            .execute(
                "INSERT INTO runs (job, source, repo, trigger, started_ns, status, pid) VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6)",
                params![
                    job.name,
                    job.source.to_string_lossy(),
                    job.repo.to_string_lossy(),
                    trigger,
                    now_ns(),
                    pid
                ],
            )
            .map_err(dberr)?;
        Ok(self.db.last_insert_rowid())
    }

    pub fn finish_run(&self, id: i64, r: &RunRow) -> Result<()> {
        self.db
            .execute(
                "UPDATE runs SET finished_ns = ?2, status = ?3, snapshot = ?4, size = ?5, bytes_read = ?6, bytes_stored = ?7, files = ?8, errors = ?9, message = ?10, mode = ?11, mode_reason = ?12, snapshots = ?13 WHERE id = ?1",
                params![
                    id,
                    now_ns(),
                    r.status,
                    r.snapshot,
                    r.size as i64,
                    r.bytes_read as i64,
                    r.bytes_stored as i64,
                    r.files as i64,
                    r.errors as i64,
                    r.message,
                    r.mode,
                    r.mode_reason,
                    r.snapshots.map_or(-1, |n| n as i64)
                ],
            )
            .map_err(dberr)?;
        Ok(())
    }

    /// Marks a run that is still `running` as ended with `status`.
    pub fn end_unfinished(&self, id: i64, status: &str, message: &str) -> Result<bool> {
        let n = self
            .db
            .execute(
                "UPDATE runs SET finished_ns = ?2, status = ?3, message = ?4 WHERE id = ?1 AND status = 'running'",
                params![id, now_ns(), status, message],
            )
            .map_err(dberr)?;
        Ok(n > 0)
    }

    pub fn run_status(&self, id: i64) -> Result<Option<String>> {
        self.db
            .query_row("SELECT status FROM runs WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(dberr)
    }

    /// The job's snapshot count its latest run that counted them found.
    pub fn counted_snapshots(&self, job: &str) -> Result<Option<u64>> {
        self.db
            .query_row(
                "SELECT snapshots FROM runs WHERE job = ?1 AND snapshots >= 0 ORDER BY started_ns DESC LIMIT 1",
                [job],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|n| n.map(|n| n as u64))
            .map_err(dberr)
    }

    /// Runs, newest first: of a job or a source path, or all.
    pub fn runs(&self, what: Option<&str>, limit: usize) -> Result<Vec<RunRow>> {
        let mut st = self
            .db
            .prepare("SELECT id, job, source, repo, trigger, started_ns, finished_ns, status, snapshot, size, bytes_read, bytes_stored, files, errors, message, mode, mode_reason FROM runs WHERE ?1 IS NULL OR job = ?1 OR source = ?1 ORDER BY started_ns DESC, id DESC LIMIT ?2")
            .map_err(dberr)?;
        let rows = st
            .query_map(params![what, limit as i64], |r| {
                let started_ns: i64 = r.get(5)?;
                let finished_ns: i64 = r.get(6)?;
                Ok(RunRow {
                    id: r.get(0)?,
                    job: r.get(1)?,
                    source: r.get(2)?,
                    repo: r.get(3)?,
                    trigger: r.get(4)?,
                    started: when(started_ns),
                    started_ns,
                    finished_ns,
                    status: r.get(7)?,
                    snapshot: r.get(8)?,
                    size: r.get::<_, i64>(9)? as u64,
                    bytes_read: r.get::<_, i64>(10)? as u64,
                    bytes_stored: r.get::<_, i64>(11)? as u64,
                    files: r.get::<_, i64>(12)? as u64,
                    errors: r.get::<_, i64>(13)? as u64,
                    message: r.get(14)?,
                    mode: r.get(15)?,
                    mode_reason: r.get(16)?,
                    seconds: if finished_ns > 0 {
                        (finished_ns - started_ns) as f64 / 1e9
                    } else {
                        0.0
                    },
                    snapshots: None,
                })
            })
            .map_err(dberr)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(dberr)
    }

    /// When the job last started a run (any trigger), if ever.
    pub fn last_start(&self, job: &str) -> Result<Option<i64>> {
        self.db
            .query_row(
                "SELECT MAX(started_ns) FROM runs WHERE job = ?1",
                [job],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map_err(dberr)
    }
}

/// Holds `HOME/locks/JOB.lock`: one run of a job at a time, whoever starts it.
fn job_lock(home: &Path, name: &str) -> Result<std::fs::File> {
    try_job_lock(home, name)?.ok_or_else(|| {
        Error::Other(format!(
            "job {name:?} is running already; one run of a job at a time"
        ))
    })
}

/// Whether a run of the job holds its lock now (whoever started it).
fn job_busy(home: &Path, name: &str) -> bool {
    matches!(try_job_lock(home, name), Ok(None))
}

fn try_job_lock(home: &Path, name: &str) -> Result<Option<std::fs::File>> {
    let dir = home.join("locks");
    std::fs::create_dir_all(&dir).at(&dir)?;
    crate::sys::try_flock(&dir.join(format!("{name}.lock")), true)
}

/// `hbb job run NAME`: one snapshot of the job's source into its
/// repository, then its retention. Returns the exit code (0 ok, 3
/// incomplete, 1 failed) and the run's record.
pub fn run_job(
    home: &Path,
    name: &str,
    run_id: Option<i64>,
    trigger: &str,
    quiet: bool,
) -> Result<(u8, RunRow)> {
    let m = Master::open(home)?;
    let job = m.job(name)?;
    let _lock = job_lock(home, name)?;
    let id = match run_id {
        Some(id) => id,
        None => m.start_run(&job, trigger, std::process::id())?,
    };
    let (code, mut row) = if job.host.is_empty() {
        run_here(&job, quiet)
    } else {
        let mut row = RunRow::default();
        let code = match m.host(&job.host) {
            Ok(h) => crate::fleet::run_remote(&job, &h, &mut row),
            Err(e) => {
                row.status = "failed".into();
                row.message = e.to_string();
                1
            }
        };
        (code, row)
    };
    m.finish_run(id, &row)?;
    row.id = id;
    row.job = job.name;
    Ok((code, row))
}

/// A run of a job of this host: the snapshot, then its retention.
fn run_here(job: &Job, quiet: bool) -> (u8, RunRow) {
    let name = &job.name;
    let mode = match job.mode.as_str() {
        "file" => crate::snapshot::ModeChoice::File,
        "volume" => crate::snapshot::ModeChoice::Volume,
        _ => crate::snapshot::ModeChoice::Auto,
    };
    let opts = crate::snapshot::Options {
        source: job.source.clone(),
        archive: job.repo.clone(),
        mode,
        threads: crate::cli::default_threads(),
        block_size: job
            .block_size
            .unwrap_or_else(|| crate::cli::parse_size(crate::cli::DEFAULT_BLOCK_SIZE).unwrap()),
        level: job.level.unwrap_or(3),
        volume_threshold: crate::cli::DEFAULT_THRESHOLD,
        excludes: job.excludes.clone(),
        one_file_system: job.one_file_system,
        allow_mounted_rw: false,
        quiet,
        repo: None,
    };
    let rs = crate::repo::ops::RepoSnapshot {
        name: None,
        tags: job.tags.clone(),
        job: job.name.clone(),
        lock_wait: Duration::from_secs(6 * 3600),
        compress_on_agent: job.compress_on == "agent",
    };
    let mut row = RunRow::default();
    let code = match crate::repo::ops::snapshot_into(opts, rs) {
        Ok(made) => {
            let s = &made.row;
            row.snapshot = s.name.clone();
            row.size = s.size;
            row.bytes_read = s.bytes_read;
            row.bytes_stored = s.bytes_stored;
            row.files = s.files;
            row.errors = s.warnings;
            row.mode = s.mode.clone();
            row.mode_reason = s.mode_reason.clone();
            row.status = if s.warnings == 0 { "ok" } else { "incomplete" }.into();
            for w in &made.outcome.meta.warnings {
                log::warn!("warning: {w}");
            }
            if s.warnings > 0 {
                row.message = format!("{} entries could not be read", s.warnings);
            }
            if !job.keep.is_empty() {
                let po = crate::repo::prune::Options {
                    policy: job.keep.clone(),
                    dry_run: false,
                    lock_wait: Duration::from_secs(6 * 3600),
                    source: Some((s.host.clone(), s.source.clone())),
                };
                match crate::repo::handle::Handle::open(&job.repo).and_then(|h| h.prune(&po)) {
                    Ok(r) => {
                        if !r.removed.is_empty() {
                            log::info!(
                                "job {name}: retention ({}) removed {}",
                                job.keep.describe(),
                                r.removed.join(", ")
                            );
                        }
                    }
                    Err(e) => {
                        row.status = "incomplete".into();
                        row.message = format!("snapshot made, but retention failed: {e}");
                    }
                }
            }
            // The count `status` shows for a repository on another host.
            if crate::remote::parse(&job.repo).is_some()
                && let Ok(rows) =
                    crate::repo::handle::Handle::open(&job.repo).and_then(|h| h.list())
            {
                row.snapshots = Some(rows.iter().filter(|r| r.job == job.name).count() as u64);
            }
            if row.status == "ok" { 0 } else { 3 }
        }
        Err(e) => {
            row.status = "failed".into();
            row.message = e.to_string();
            1
        }
    };
    (code, row)
}

/// Marks as abandoned the runs still `running` whose process is gone: no
/// process holds the job's lock, and the run was started by hand (its pid
/// recorded) or no daemon is up to record how its child ended.
fn end_dead_runs(m: &Master, home: &Path) -> Result<()> {
    let mut st =
        m.db.prepare("SELECT id, job, pid FROM runs WHERE status = 'running'")
            .map_err(dberr)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(dberr)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(dberr)?;
    let daemon_up = rows.iter().any(|r| r.2 == 0) && daemon_lock(home).is_err();
    for (id, job, pid) in rows {
        if (pid != 0 || !daemon_up) && !job_busy(home, &job) {
            m.end_unfinished(id, "abandoned", "its process ended without recording how")?;
        }
    }
    Ok(())
}

/// A job's state at a glance.
#[derive(Debug, Serialize)]
pub struct JobStatus {
    pub job: String,
    /// The manager host it runs on ("" for this host) and that host's group.
    pub host: String,
    pub group: String,
    pub source: String,
    pub repo: String,
    pub schedule: String,
    pub last_run: String,
    pub last_status: String,
    pub last_message: String,
    /// The last run that ended ok (or incomplete).
    pub last_success: String,
    /// Seconds since the last good run (None: never).
    pub since_success_secs: Option<i64>,
    pub next_run: String,
    pub running: bool,
    pub snapshots: u64,
    /// Data bytes of the newest snapshot.
    pub size: u64,
    /// Compressed bytes the last run added.
    pub last_stored: u64,
    /// Change of size per day over the last week of runs (bytes/day).
    pub growth_per_day: Option<f64>,
    /// True when attention is needed: the last run failed, or no good run
    /// since two schedule periods.
    pub attention: bool,
}

/// Every job's status, or only those of hosts in `group`.
pub fn status(home: &Path, group: Option<&str>) -> Result<Vec<JobStatus>> {
    let m = Master::open(home)?;
    end_dead_runs(&m, home)?;
    let now = now_ns();
    let mut out = Vec::new();
    let hosts = m.hosts()?;
    if let Some(g) = group
        && !hosts.iter().any(|h| h.group == g)
    {
        return Err(Error::Other(format!(
            "no host is in group {g:?} (see `hbb host list`)"
        )));
    }
    for j in m.jobs()? {
        let jgroup = m.group_of(&j, &hosts);
        if group.is_some_and(|g| g != jgroup) {
            continue;
        }
        let runs = m.runs(Some(&j.name), 10_000)?;
        let runs: Vec<&RunRow> = runs.iter().filter(|r| r.job == j.name).collect();
        let last = runs.first();
        let good: Vec<&&RunRow> = runs
            .iter()
            .filter(|r| r.status == "ok" || r.status == "incomplete")
            .collect();
        let sched = Schedule::parse(&j.schedule).ok();
        let anchor = last.map_or(j.created_ns, |r| r.started_ns);
        let next = sched
            .as_ref()
            .and_then(|s| s.next_after(local(anchor)))
            .map(|t| {
                if t.timestamp_nanos_opt().unwrap_or(0) <= now {
                    "due now".to_string()
                } else {
                    t.format("%Y-%m-%d %H:%M:%S").to_string()
                }
            })
            .unwrap_or_default();
        let week = 7 * 86400 * 1_000_000_000i64;
        let growth = match (
            good.first(),
            good.iter().rev().find(|r| r.started_ns >= now - week),
        ) {
            (Some(a), Some(b)) if a.started_ns > b.started_ns => Some(
                (a.size as f64 - b.size as f64) / ((a.started_ns - b.started_ns) as f64 / 86400e9),
            ),
            _ => None,
        };
        // Overdue: no good run within two periods of the schedule.
        let period = sched.as_ref().and_then(|s| {
            let a = s.next_after(local(now))?;
            let b = s.next_after(a)?;
            (b - a).num_nanoseconds()
        });
        let since = good.first().map(|r| now - r.started_ns);
        let overdue = match (since, period) {
            (Some(s), Some(p)) => s > 2 * p,
            (None, Some(p)) => now - j.created_ns > 2 * p,
            _ => false,
        };
        // A repository here is looked into; one elsewhere is not reached
        // for a status: its count is the one the last run found.
        let snapshots = if j.host.is_empty() && crate::remote::parse(&j.repo).is_none() {
            crate::repo::Repo::open(&j.repo)
                .and_then(|r| crate::repo::catalog::Catalog::open(&r))
                .and_then(|c| c.snapshots())
                .map(|v| v.iter().filter(|s| s.job == j.name).count() as u64)
                .unwrap_or(0)
        } else {
            m.counted_snapshots(&j.name)?.unwrap_or(0)
        };
        out.push(JobStatus {
            job: j.name.clone(),
            host: j.host.clone(),
            group: jgroup,
            source: j.source.to_string_lossy().into_owned(),
            repo: j.repo.to_string_lossy().into_owned(),
            schedule: j.schedule.clone(),
            last_run: last.map(|r| r.started.clone()).unwrap_or_default(),
            last_status: last
                .map(|r| r.status.clone())
                .unwrap_or_else(|| "never".into()),
            last_message: last.map(|r| r.message.clone()).unwrap_or_default(),
            last_success: good.first().map(|r| r.started.clone()).unwrap_or_default(),
            since_success_secs: since.map(|s| s / 1_000_000_000),
            next_run: next,
            running: last.is_some_and(|r| r.status == "running"),
            snapshots,
            size: good.first().map_or(0, |r| r.size),
            last_stored: good.first().map_or(0, |r| r.bytes_stored),
            growth_per_day: growth,
            attention: last.is_some_and(|r| r.status == "failed" || r.status == "abandoned")
                || overdue,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The daemon.

static STOP: AtomicBool = AtomicBool::new(false);
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}

pub struct DaemonOptions {
    pub max_jobs: usize,
    /// At most this many jobs of one group of hosts at once (0: no limit).
    pub group_max_jobs: usize,
    pub retries: u32,
    pub retry_delay: Duration,
    pub finish_on_stop: bool,
    pub verbose: u8,
}

struct Running {
    child: Child,
    run_id: i64,
    started: std::time::Instant,
}

#[derive(Default)]
struct JobState {
    /// When it is next due (ns).
    next: i64,
    trigger: &'static str,
    /// Failed attempts in a row.
    failures: u32,
    /// The schedule `next` was computed from.
    schedule: String,
}

/// Runs jobs when due until SIGTERM/SIGINT. See the module's doc.
pub fn daemon(home: &Path, o: &DaemonOptions) -> Result<()> {
    let m = Master::open(home)?;
    let _single = daemon_lock(home)?;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to atomics.
        unsafe {
            libc::signal(sig, on_stop as *const () as libc::sighandler_t);
        }
    }
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("own executable: {e}")))?;
    let mut state: HashMap<String, JobState> = HashMap::new();
    let mut running: HashMap<String, Running> = HashMap::new();
    // Runs a crashed daemon left marked `running` are over, unless their
    // process still holds the job's lock (a run started by hand).
    for r in m.runs(None, 1000)? {
        if r.status == "running" && !job_busy(home, &r.job) {
            m.end_unfinished(r.id, "abandoned", "the daemon stopped during the run")?;
        }
    }
    log::info!(
        "daemon started (home {}, at most {} jobs at once)",
        home.display(),
        o.max_jobs
    );
    loop {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let now = now_ns();
        let jobs = m.jobs()?;
        // A job removed, or changed (`job add --replace`) to another
        // schedule, is forgotten; a changed one is then planned anew.
        state.retain(|k, js| {
            jobs.iter()
                .any(|j| &j.name == k && j.schedule == js.schedule)
        });
        for j in &jobs {
            let Ok(s) = Schedule::parse(&j.schedule) else {
                continue;
            };
            if state.contains_key(&j.name) {
                continue;
            }
            // New to this daemon: catch up once if a slot passed since the
            // last run (or since the job was added), not once per slot.
            let anchor = m.last_start(&j.name)?.unwrap_or(j.created_ns);
            let first = s.next_after(local(anchor));
            let (next, trigger) = match first {
                Some(t) if t.timestamp_nanos_opt().unwrap_or(i64::MAX) <= now => (now, "catch-up"),
                Some(t) => (t.timestamp_nanos_opt().unwrap_or(i64::MAX), "schedule"),
                None => (i64::MAX, "schedule"),
            };
            if trigger == "catch-up" {
                log::info!(
                    "job {}: a run was missed while the daemon was down; running it once now",
                    j.name
                );
            }
            state.insert(
                j.name.clone(),
                JobState {
                    next,
                    trigger,
                    failures: 0,
                    schedule: j.schedule.clone(),
                },
            );
        }
        // Reap.
        let names: Vec<String> = running.keys().cloned().collect();
        for name in names {
            let r = running.get_mut(&name).unwrap();
            if let Ok(Some(st)) = r.child.try_wait() {
                let r = running.remove(&name).unwrap();
                let status = m.run_status(r.run_id)?.unwrap_or_default();
                let secs = r.started.elapsed().as_secs_f64();
                let failed = if status == "running" {
                    // The child died before it could record its end.
                    let msg = format!("the run ended abnormally ({st})");
                    m.end_unfinished(r.run_id, "failed", &msg)?;
                    log::error!("job {name}: {msg}");
                    true
                } else {
                    log::info!("job {name}: {status} in {secs:.1}s");
                    status == "failed"
                };
                if let Some(js) = state.get_mut(&name) {
                    if failed && js.failures < o.retries {
                        js.failures += 1;
                        let delay = o.retry_delay * 2u32.saturating_pow(js.failures - 1);
                        let at = now + delay.as_nanos() as i64;
                        if at < js.next {
                            js.next = at;
                            js.trigger = "retry";
                        }
                        log::warn!(
                            "job {name}: retry {} of {} in {}",
                            js.failures,
                            o.retries,
                            humantime::format_duration(delay)
                        );
                    } else {
                        js.failures = 0;
                    }
                }
            }
        }
        // Start what is due, oldest due first, within --max-jobs.
        let mut due: Vec<(&Job, i64)> = jobs
            .iter()
            .filter_map(|j| state.get(&j.name).map(|s| (j, s.next)))
            .filter(|(j, next)| *next <= now && !running.contains_key(&j.name))
            .collect();
        due.sort_by_key(|(_, n)| *n);
        let hosts = m.hosts()?;
        for (j, _) in due {
            let js = state.get_mut(&j.name).unwrap();
            let sched = Schedule::parse(&j.schedule).map_err(Error::Other)?;
            let trigger = js.trigger;
            if running.len() >= o.max_jobs {
                continue;
            }
            // A group's limit: the job waits (stays due) while its group is full.
            let group = m.group_of(j, &hosts);
            if o.group_max_jobs > 0 && !group.is_empty() {
                let busy = running
                    .keys()
                    .filter(|n| {
                        jobs.iter()
                            .find(|x| &&x.name == n)
                            .is_some_and(|x| m.group_of(x, &hosts) == group)
                    })
                    .count();
                if busy >= o.group_max_jobs {
                    continue;
                }
            }
            js.next = sched
                .next_after(local(now))
                .and_then(|t| t.timestamp_nanos_opt())
                .unwrap_or(i64::MAX);
            js.trigger = "schedule";
            if job_busy(home, &j.name) {
                log::warn!(
                    "job {}: running already (started by hand); that slot is skipped",
                    j.name
                );
                continue;
            }
            if trigger != "retry" {
                js.failures = 0;
            }
            let run_id = m.start_run(j, trigger, 0)?;
            let mut cmd = Command::new(&exe);
            cmd.arg("--home").arg(home).arg("-q");
            for _ in 0..o.verbose {
                cmd.arg("-v");
            }
            cmd.args([
                "job",
                "run",
                &j.name,
                "--run-id",
                &run_id.to_string(),
                "--trigger",
                trigger,
            ]);
            cmd.stdin(std::process::Stdio::null());
            // Its own process group: a Ctrl-C meant for the daemon does not
            // reach the job; the daemon decides (abandon or --finish-on-stop).
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            match cmd.spawn() {
                Ok(child) => {
                    log::info!("job {}: started ({trigger}), pid {}", j.name, child.id());
                    running.insert(
                        j.name.clone(),
                        Running {
                            child,
                            run_id,
                            started: std::time::Instant::now(),
                        },
                    );
                }
                Err(e) => {
                    m.end_unfinished(run_id, "failed", &format!("cannot start: {e}"))?;
                }
            }
        }
        // Where running jobs skip a slot: their next stays in the future.
        for (name, js) in state.iter_mut() {
            if running.contains_key(name)
                && js.next <= now
                && let Some(j) = jobs.iter().find(|j| &j.name == name)
                && let Ok(s) = Schedule::parse(&j.schedule)
            {
                {
                    log::warn!("job {name}: still running at its next slot; that slot is skipped");
                    js.next = s
                        .next_after(local(now))
                        .and_then(|t| t.timestamp_nanos_opt())
                        .unwrap_or(i64::MAX);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sig = STOP_SIGNAL.load(Ordering::SeqCst);
    if running.is_empty() {
        log::info!("daemon stopping (signal {sig}); no job was running");
    }
    for (name, mut r) in running {
        if o.finish_on_stop {
            log::info!("daemon stopping: letting job {name} finish");
            let _ = r.child.wait();
            let st = m.run_status(r.run_id)?.unwrap_or_default();
            log::info!("job {name}: finished ({st})");
        } else {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(r.child.id() as i32).unwrap(),
                rustix::process::Signal::TERM,
            );
            let _ = r.child.wait();
            if m.end_unfinished(
                r.run_id,
                "abandoned",
                "stopped by the daemon's shutdown; no snapshot kept",
            )? {
                log::warn!(
                    "daemon stopping: job {name} abandoned (its partial snapshot was removed; nothing counted as good)"
                );
            } else {
                let st = m.run_status(r.run_id)?.unwrap_or_default();
                log::info!("daemon stopping: job {name} had just finished ({st})");
            }
        }
    }
    Ok(())
}

/// One daemon per home.
fn daemon_lock(home: &Path) -> Result<std::fs::File> {
    crate::sys::try_flock(&home.join("daemon.lock"), true)?.ok_or_else(|| {
        Error::Other(format!(
            "a daemon is running already for {}",
            home.display()
        ))
    })
}
