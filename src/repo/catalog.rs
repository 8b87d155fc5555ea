//! The repository's catalog: an SQLite database (`REPO/catalog.db`) of its
//! snapshots, the runs that made them (or failed to), and the blocks it
//! holds. It is an index: everything in it but the failed runs can be
//! rebuilt from the snapshot files (`hbb repo rebuild-catalog`, or on open
//! when the file is missing or was left mid-prune).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::Repo;
use super::pack::PackId;
use crate::archive::reader::Archive;
use crate::archive::writer::FrameLoc;
use crate::archive::{BlockLoc, Body, Mode};
use crate::error::{Error, Result};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
    name TEXT PRIMARY KEY,
    archive_id TEXT NOT NULL,
    host TEXT NOT NULL,
    source TEXT NOT NULL,
    mode TEXT NOT NULL,
    mode_reason TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    finished_ns INTEGER NOT NULL,
    tags TEXT NOT NULL,
    job TEXT NOT NULL,
    parent TEXT NOT NULL,
    files INTEGER NOT NULL,
    dirs INTEGER NOT NULL,
    size INTEGER NOT NULL,
    bytes_read INTEGER NOT NULL,
    bytes_stored INTEGER NOT NULL,
    referenced INTEGER NOT NULL,
    reused_files INTEGER NOT NULL,
    warnings INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_source ON snapshots (host, source, started_ns);
-- Each source's state at a glance: for `sqlite3 catalog.db 'SELECT * FROM sources'`.
CREATE VIEW IF NOT EXISTS sources AS
    SELECT host, source,
           COUNT(*) AS snapshots,
           MAX(started_ns) AS last_snapshot_ns,
           (SELECT s2.size FROM snapshots s2 WHERE s2.host = s.host AND s2.source = s.source
             ORDER BY s2.started_ns DESC LIMIT 1) AS last_size,
           SUM(bytes_stored) AS bytes_stored,
           (SELECT r.status FROM runs r WHERE r.host = s.host AND r.source = s.source
             ORDER BY r.started_ns DESC, r.id DESC LIMIT 1) AS last_run_status
    FROM snapshots s GROUP BY host, source;
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    host TEXT NOT NULL,
    source TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    finished_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    bytes_read INTEGER NOT NULL,
    bytes_stored INTEGER NOT NULL,
    files INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    message TEXT NOT NULL,
    mode TEXT NOT NULL,
    mode_reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    hash BLOB PRIMARY KEY,
    len INTEGER NOT NULL,
    pack BLOB NOT NULL,
    offset INTEGER NOT NULL,
    clen INTEGER NOT NULL
) WITHOUT ROWID;
";

/// One snapshot as `hbb list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRow {
    pub name: String,
    pub archive_id: String,
    pub host: String,
    pub source: String,
    pub mode: String,
    pub mode_reason: String,
    pub started_ns: i64,
    pub finished_ns: i64,
    pub tags: Vec<String>,
    pub job: String,
    pub parent: String,
    pub files: u64,
    pub dirs: u64,
    /// Bytes of file (or volume) data it holds.
    pub size: u64,
    /// Bytes read from the source (unchanged files are not read).
    pub bytes_read: u64,
    /// Compressed bytes this snapshot added to the repository.
    pub bytes_stored: u64,
    /// Compressed bytes of all the blocks it refers to.
    pub referenced: u64,
    pub reused_files: u64,
    pub warnings: u64,
    /// "complete", or "incomplete" when some source files could not be read.
    pub status: String,
}

/// One attempt to make a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Run {
    pub job: String,
    pub host: String,
    pub source: String,
    /// The snapshot made, or empty.
    pub snapshot: String,
    pub started_ns: i64,
    pub finished_ns: i64,
    /// "ok", "incomplete", "failed" or "abandoned".
    pub status: String,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub files: u64,
    pub errors: u64,
    pub message: String,
    pub mode: String,
    pub mode_reason: String,
}

pub struct Catalog {
    db: Connection,
    pub path: PathBuf,
}

fn db_err(path: &std::path::Path, e: rusqlite::Error) -> Error {
    Error::Other(format!("{}: catalog: {e}", path.display()))
}

impl SnapshotRow {
    pub fn of(name: &str, a: &Archive) -> SnapshotRow {
        let m = a.meta();
        let si = a.ext.snapshot.clone().unwrap_or_default();
        let mut size = 0u64;
        for ino in &a.index.inodes {
            if let Body::File { size: s, .. } = ino.body {
                size = size.saturating_add(s);
            }
        }
        let mut seen = HashSet::new();
        let mut referenced = 0u64;
        for b in &a.index.blocks {
            if let BlockLoc::External { clen, .. } | BlockLoc::Frame { clen, .. } = b.loc
                && seen.insert(b.hash)
            {
                referenced += clen as u64;
            }
        }
        SnapshotRow {
            name: name.to_string(),
            archive_id: super::pack::hex(&a.header.archive_id),
            host: m.host.clone(),
            source: String::from_utf8_lossy(&m.source).into_owned(),
            mode: mode_name(m.mode).into(),
            mode_reason: m.mode_reason.clone(),
            started_ns: m.started_ns,
            finished_ns: m.finished_ns,
            tags: si.tags,
            job: si.job,
            parent: si.parent,
            files: m.stats.files,
            dirs: m.stats.dirs,
            size,
            bytes_read: m.stats.bytes_read,
            bytes_stored: m.stats.bytes_stored,
            referenced,
            reused_files: si.reused_files,
            warnings: m.warnings.len() as u64,
            status: if m.warnings.is_empty() {
                "complete".into()
            } else {
                "incomplete".into()
            },
        }
    }
}

pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::File => "file",
        Mode::Volume => "volume",
    }
}

impl Catalog {
    /// Opens the catalog of `repo` to read it. A catalog that needs
    /// rebuilding is rebuilt only if no writer holds the repository: a prune
    /// under way must not see its `dirty` mark cleared from under it.
    pub fn open(repo: &Repo) -> Result<Catalog> {
        Catalog::open_as(repo, false)
    }

    /// Opens (creating or rebuilding as needed) the catalog of `repo`, for
    /// the holder of the writers' lock.
    pub fn open_locked(repo: &Repo, _lock: &super::WriteLock) -> Result<Catalog> {
        Catalog::open_as(repo, true)
    }

    fn open_as(repo: &Repo, locked: bool) -> Result<Catalog> {
        let path = repo.root.join("catalog.db");
        let existed = path.exists();
        let db = match Catalog::connect(&path) {
            Ok(db) => db,
            Err(e) if is_damaged(&e) => {
                // The catalog is only an index: set the damaged file aside
                // (under the writers' lock) and build a new one from the
                // snapshot files.
                let lock = if locked {
                    None
                } else {
                    Some(repo.lock("hbb (catalog rebuild)", std::time::Duration::from_secs(30))?)
                };
                let aside = repo.root.join(format!(
                    "catalog.db.damaged-{}",
                    chrono::Local::now().format("%Y%m%dT%H%M%S")
                ));
                log::warn!(
                    "{}: {e}; moved to {} and rebuilt from the snapshots",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(&path, &aside).map_err(|e| Error::io(&path, e))?;
                for ext in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(repo.root.join(format!("catalog.db{ext}")));
                }
                let db = Catalog::connect(&path).map_err(|e| db_err(&path, e))?;
                let mut c = Catalog { db, path };
                c.rebuild(repo)?;
                drop(lock);
                return Ok(c);
            }
            Err(e) => return Err(db_err(&path, e)),
        };
        let mut c = Catalog { db, path };
        let version: Option<i64> = c.get_meta("schema")?.and_then(|v| v.parse().ok());
        let dirty = c.get_meta("dirty")?.is_some();
        // A snapshot named but not recorded (its writer was killed between
        // the two), or recorded but gone: the files are the truth.
        let stale = existed && !dirty && version == Some(SCHEMA_VERSION) && {
            let mut have: Vec<String> = c.snapshots()?.into_iter().map(|r| r.name).collect();
            have.sort();
            have != repo.snapshot_names()?
        };
        if !existed || dirty || stale || version != Some(SCHEMA_VERSION) {
            if existed && !dirty && !stale {
                log::info!(
                    "{}: catalog schema changed; rebuilding it",
                    c.path.display()
                );
            }
            if locked {
                c.rebuild(repo)?;
            } else if let Ok(_lock) = repo.lock("hbb (catalog rebuild)", std::time::Duration::ZERO)
            {
                c.rebuild(repo)?;
            } else {
                log::info!(
                    "{}: catalog out of date while a writer works; it rebuilds it",
                    c.path.display()
                );
            }
        }
        Ok(c)
    }

    fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.db
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| db_err(&self.path, e))
    }

    fn connect(path: &std::path::Path) -> rusqlite::Result<Connection> {
        let db = Connection::open(path)?;
        db.busy_timeout(std::time::Duration::from_secs(30))?;
        // FULL: a commit (the `dirty` mark above all, which prune sets
        // before it deletes packs) is on disk before the call returns, also
        // across a power cut. The catalog is small and written rarely.
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        db.execute_batch(SCHEMA)?;
        Ok(db)
    }

    /// Marks the catalog as possibly out of step with the files (prune);
    /// a catalog left marked is rebuilt at the next open.
    pub fn set_dirty(&self, dirty: bool) -> Result<()> {
        let r = if dirty {
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('dirty', '1')",
                [],
            )
        } else {
            self.db.execute("DELETE FROM meta WHERE key = 'dirty'", [])
        };
        r.map(|_| ()).map_err(|e| db_err(&self.path, e))
    }

    /// Reads every snapshot file again and replaces the snapshots, the
    /// blocks and the runs of surviving snapshots (failed runs are kept).
    pub fn rebuild(&mut self, repo: &Repo) -> Result<()> {
        let mut rows = Vec::new();
        let mut blocks: HashMap<[u8; 32], (u32, PackId, u64, u32)> = HashMap::new();
        for name in repo.snapshot_names()? {
            let a = match repo.open_snapshot(&name) {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("catalog rebuild: skipping snapshot {name}: {e}");
                    continue;
                }
            };
            for b in &a.index.blocks {
                if let BlockLoc::External {
                    source,
                    offset,
                    clen,
                } = b.loc
                {
                    let pack = a.index.sources[source as usize].archive_id;
                    blocks.entry(b.hash).or_insert((b.len, pack, offset, clen));
                }
            }
            rows.push(SnapshotRow::of(&name, &a));
        }
        let path = self.path.clone();
        let t = self.db.transaction().map_err(|e| db_err(&path, e))?;
        t.execute_batch(
            "DELETE FROM snapshots; DELETE FROM blocks; DELETE FROM runs WHERE snapshot != '';",
        )
        .map_err(|e| db_err(&path, e))?;
        for r in &rows {
            insert_snapshot(&t, r).map_err(|e| db_err(&path, e))?;
            insert_run(&t, &run_of(r)).map_err(|e| db_err(&path, e))?;
        }
        {
            let mut st = t
                .prepare("INSERT INTO blocks (hash, len, pack, offset, clen) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(|e| db_err(&path, e))?;
            for (h, (len, pack, offset, clen)) in &blocks {
                st.execute(params![&h[..], len, &pack[..], *offset as i64, clen])
                    .map_err(|e| db_err(&path, e))?;
            }
        }
        t.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?1)",
            [SCHEMA_VERSION.to_string()],
        )
        .map_err(|e| db_err(&path, e))?;
        t.execute("DELETE FROM meta WHERE key = 'dirty'", [])
            .map_err(|e| db_err(&path, e))?;
        t.commit().map_err(|e| db_err(&path, e))
    }

    /// Records a new snapshot, its run and its new blocks, in one transaction.
    pub fn add_snapshot(
        &mut self,
        row: &SnapshotRow,
        new_blocks: &[([u8; 32], u32, FrameLoc)],
    ) -> Result<()> {
        let path = self.path.clone();
        let t = self.db.transaction().map_err(|e| db_err(&path, e))?;
        insert_snapshot(&t, row).map_err(|e| db_err(&path, e))?;
        insert_run(&t, &run_of(row)).map_err(|e| db_err(&path, e))?;
        {
            let mut st = t
                .prepare("INSERT OR IGNORE INTO blocks (hash, len, pack, offset, clen) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(|e| db_err(&path, e))?;
            for (h, len, at) in new_blocks {
                if let FrameLoc::Pack { pack, offset, clen } = at {
                    st.execute(params![&h[..], len, &pack[..], *offset as i64, clen])
                        .map_err(|e| db_err(&path, e))?;
                }
            }
        }
        t.commit().map_err(|e| db_err(&path, e))
    }

    /// Records a run that made no snapshot (failed or abandoned).
    pub fn add_run(&self, run: &Run) -> Result<()> {
        insert_run(&self.db, run).map_err(|e| db_err(&self.path, e))
    }

    pub fn remove_snapshot(&self, name: &str) -> Result<()> {
        self.db
            .execute("DELETE FROM snapshots WHERE name = ?1", [name])
            .map(|_| ())
            .map_err(|e| db_err(&self.path, e))
    }

    pub fn snapshots(&self) -> Result<Vec<SnapshotRow>> {
        let mut st = self
            .db
            .prepare("SELECT name, archive_id, host, source, mode, mode_reason, started_ns, finished_ns, tags, job, parent, files, dirs, size, bytes_read, bytes_stored, referenced, reused_files, warnings, status FROM snapshots ORDER BY started_ns, name")
            .map_err(|e| db_err(&self.path, e))?;
        let rows = st
            .query_map([], |r| {
                let tags: String = r.get(8)?;
                Ok(SnapshotRow {
                    name: r.get(0)?,
                    archive_id: r.get(1)?,
                    host: r.get(2)?,
                    source: r.get(3)?,
                    mode: r.get(4)?,
                    mode_reason: r.get(5)?,
                    started_ns: r.get(6)?,
                    finished_ns: r.get(7)?,
                    tags: serde_json::from_str(&tags).unwrap_or_default(),
                    job: r.get(9)?,
                    parent: r.get(10)?,
                    files: r.get::<_, i64>(11)? as u64,
                    dirs: r.get::<_, i64>(12)? as u64,
                    size: r.get::<_, i64>(13)? as u64,
                    bytes_read: r.get::<_, i64>(14)? as u64,
                    bytes_stored: r.get::<_, i64>(15)? as u64,
                    referenced: r.get::<_, i64>(16)? as u64,
                    reused_files: r.get::<_, i64>(17)? as u64,
                    warnings: r.get::<_, i64>(18)? as u64,
                    status: r.get(19)?,
                })
            })
            .map_err(|e| db_err(&self.path, e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| db_err(&self.path, e))
    }

    /// Runs, newest first, optionally of one source path or job.
    pub fn runs(&self, filter: Option<&str>) -> Result<Vec<Run>> {
        let mut st = self
            .db
            .prepare("SELECT job, host, source, snapshot, started_ns, finished_ns, status, bytes_read, bytes_stored, files, errors, message, mode, mode_reason FROM runs WHERE ?1 IS NULL OR source = ?1 OR job = ?1 ORDER BY started_ns DESC, id DESC")
            .map_err(|e| db_err(&self.path, e))?;
        let rows = st
            .query_map([filter], |r| {
                Ok(Run {
                    job: r.get(0)?,
                    host: r.get(1)?,
                    source: r.get(2)?,
                    snapshot: r.get(3)?,
                    started_ns: r.get(4)?,
                    finished_ns: r.get(5)?,
                    status: r.get(6)?,
                    bytes_read: r.get::<_, i64>(7)? as u64,
                    bytes_stored: r.get::<_, i64>(8)? as u64,
                    files: r.get::<_, i64>(9)? as u64,
                    errors: r.get::<_, i64>(10)? as u64,
                    message: r.get(11)?,
                    mode: r.get(12)?,
                    mode_reason: r.get(13)?,
                })
            })
            .map_err(|e| db_err(&self.path, e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| db_err(&self.path, e))
    }

    /// Every block the repository holds, by hash.
    pub fn known_blocks(&self) -> Result<HashMap<[u8; 32], FrameLoc>> {
        let mut st = self
            .db
            .prepare("SELECT hash, pack, offset, clen FROM blocks")
            .map_err(|e| db_err(&self.path, e))?;
        let mut map = HashMap::new();
        let mut rows = st.query([]).map_err(|e| db_err(&self.path, e))?;
        while let Some(r) = rows.next().map_err(|e| db_err(&self.path, e))? {
            let h: Vec<u8> = r.get(0).map_err(|e| db_err(&self.path, e))?;
            let p: Vec<u8> = r.get(1).map_err(|e| db_err(&self.path, e))?;
            let offset: i64 = r.get(2).map_err(|e| db_err(&self.path, e))?;
            let clen: i64 = r.get(3).map_err(|e| db_err(&self.path, e))?;
            let (Ok(h), Ok(pack)) = (<[u8; 32]>::try_from(h), <[u8; 16]>::try_from(p)) else {
                continue;
            };
            map.insert(
                h,
                FrameLoc::Pack {
                    pack,
                    offset: offset as u64,
                    clen: clen as u32,
                },
            );
        }
        Ok(map)
    }

    /// Adds the blocks of a sealed pack no snapshot refers to yet (left by
    /// an interrupted snapshot), so the next snapshot need not store them again.
    pub fn adopt_pack(&mut self, pack: &PackId, entries: &[super::pack::PackEntry]) -> Result<()> {
        let path = self.path.clone();
        let t = self.db.transaction().map_err(|e| db_err(&path, e))?;
        {
            let mut st = t
                .prepare("INSERT OR IGNORE INTO blocks (hash, len, pack, offset, clen) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(|e| db_err(&path, e))?;
            for e in entries {
                st.execute(params![
                    &e.hash[..],
                    e.len,
                    &pack[..],
                    e.offset as i64,
                    e.clen
                ])
                .map_err(|e| db_err(&path, e))?;
            }
        }
        t.commit().map_err(|e| db_err(&path, e))
    }

    /// Packs the blocks table names.
    pub fn packs_known(&self) -> Result<HashSet<PackId>> {
        let mut st = self
            .db
            .prepare("SELECT DISTINCT pack FROM blocks")
            .map_err(|e| db_err(&self.path, e))?;
        let v = st
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| db_err(&self.path, e))?
            .filter_map(|r| r.ok().and_then(|p| <[u8; 16]>::try_from(p).ok()))
            .collect();
        Ok(v)
    }
}

/// SQLite's "not a database" and "malformed": a damaged file, not a busy one.
fn is_damaged(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt))
}

fn run_of(r: &SnapshotRow) -> Run {
    Run {
        job: r.job.clone(),
        host: r.host.clone(),
        source: r.source.clone(),
        snapshot: r.name.clone(),
        started_ns: r.started_ns,
        finished_ns: r.finished_ns,
        status: if r.status == "complete" {
            "ok".into()
        } else {
            "incomplete".into()
        },
        bytes_read: r.bytes_read,
        bytes_stored: r.bytes_stored,
        files: r.files,
        errors: r.warnings,
        message: String::new(),
        mode: r.mode.clone(),
        mode_reason: r.mode_reason.clone(),
    }
}

fn insert_snapshot(db: &Connection, r: &SnapshotRow) -> rusqlite::Result<()> {
    db.execute(
        "INSERT OR REPLACE INTO snapshots (name, archive_id, host, source, mode, mode_reason, started_ns, finished_ns, tags, job, parent, files, dirs, size, bytes_read, bytes_stored, referenced, reused_files, warnings, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
        params![
            r.name,
            r.archive_id,
            r.host,
            r.source,
            r.mode,
            r.mode_reason,
            r.started_ns,
            r.finished_ns,
            serde_json::to_string(&r.tags).unwrap_or_default(),
            r.job,
            r.parent,
            r.files as i64,
            r.dirs as i64,
            r.size as i64,
            r.bytes_read as i64,
            r.bytes_stored as i64,
            r.referenced as i64,
            r.reused_files as i64,
            r.warnings as i64,
            r.status
        ],
    )
    .map(|_| ())
}

fn insert_run(db: &Connection, r: &Run) -> rusqlite::Result<()> {
    db.execute(
        "INSERT INTO runs (job, host, source, snapshot, started_ns, finished_ns, status, bytes_read, bytes_stored, files, errors, message, mode, mode_reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            r.job,
            r.host,
            r.source,
            r.snapshot,
            r.started_ns,
            r.finished_ns,
            r.status,
            r.bytes_read as i64,
            r.bytes_stored as i64,
            r.files as i64,
            r.errors as i64,
            r.message,
            r.mode,
            r.mode_reason
        ],
    )
    .map(|_| ())
}
