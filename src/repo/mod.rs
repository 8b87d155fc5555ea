//! A repository: many snapshots sharing one store of blocks.
//!
//! ```text
//! REPO/hbb-repo            what this directory is (JSON: format, id, created)
//! REPO/snapshots/NAME.hbb  one archive per snapshot: index only, its blocks `External`
//! REPO/data/XX/ID.pack     the frames (see `pack`), each stored once for the repository
//! REPO/catalog.db          SQLite: snapshots, runs, known blocks — an index, rebuilt if lost
//! REPO/lock                writers (snapshot, prune) take it exclusively
//! REPO/readers.lock        readers hold it shared; gc deletes packs only under it exclusively
//! REPO/tmp/                packs and snapshots being written
//! ```
//!
//! The snapshot files are the truth: each says which pack holds each of its
//! blocks, so every snapshot restores, verifies and mounts on its own, and
//! the catalog can be rebuilt from them. A snapshot file gets its name only
//! after every pack it refers to is sealed and fsynced; prune rewrites a
//! snapshot file (atomically) before it deletes a pack the old file named.

pub mod catalog;
pub mod handle;
pub mod ops;
pub mod pack;
pub mod prune;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::archive::reader::{Archive, FrameStore};
use crate::error::{Error, IoContext, Result};

pub const MARKER: &str = "hbb-repo";
pub const SNAPSHOTS: &str = "snapshots";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Always "hbb repository".
    pub format: String,
    pub version: u32,
    /// Hex of 16 random bytes.
    pub id: String,
    pub created: String,
}

pub struct Repo {
    pub root: PathBuf,
    pub config: Config,
    pub id: [u8; 16],
}

/// Fault injection for the crash tests: `HBB_FAULT=NAME` kills the process
/// (SIGKILL, nothing cleaned up) when it reaches the point NAME.
/// `HBB_STALL=NAME:FILE` makes it create FILE there and wait until FILE is
/// removed (the concurrency tests run another command meanwhile), once.
pub fn fault_point(name: &str) {
    static STALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(v) = std::env::var_os("HBB_STALL")
        && let Some((n, file)) = v.to_string_lossy().split_once(':')
        && n == name
        && !STALLED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        let _ = std::fs::write(file, b"");
        while Path::new(file).exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    if std::env::var_os("HBB_FAULT").is_some_and(|v| v == name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Whether `path` is a repository's directory.
pub fn is_repo(path: &Path) -> bool {
    path.join(MARKER).is_file()
}

/// `REPO::SNAPSHOT` → (REPO, Some(SNAPSHOT)); anything else → (it, None).
pub fn split_target(s: &Path) -> (PathBuf, Option<String>) {
    use std::os::unix::ffi::OsStrExt;
    let b = s.as_os_str().as_bytes();
    if let Some(k) = b.windows(2).rposition(|w| w == b"::")
        // Not the "::" of an IPv6 address in ssh://[…]/repo.
        && !b[k..].contains(&b']')
    {
        let repo = crate::sys::os(&b[..k]);
        let snap = String::from_utf8_lossy(&b[k + 2..]).into_owned();
        return (PathBuf::from(repo), Some(snap));
    }
    (s.to_path_buf(), None)
}

/// A snapshot name: letters, digits and `._-:+@`, not starting with `.`
/// or `-`, at most 200 bytes; it names a file and appears in `REPO::NAME`.
pub fn valid_snapshot_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 200
        && !n.starts_with(['.', '-'])
        && !n.contains("::")
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:+@".contains(&b))
}

/// Attaches a repository's packs to an archive opened from
/// `REPO/snapshots/NAME.hbb` (called by `Archive::open`).
pub fn store_for(path: &Path, a: &Archive) -> Result<Option<Arc<dyn FrameStore>>> {
    // The snapshot's directory, resolved, must be a repository's snapshots/.
    let Some(dir) = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().and_then(|d| d.canonicalize().ok()))
    else {
        return Ok(None);
    };
    let Some(root) = dir
        .parent()
        .filter(|_| dir.file_name().is_some_and(|n| n == SNAPSHOTS))
    else {
        return Ok(None);
    };
    if is_repo(root) {
        let repo = Repo::open(root)?;
        if let Some(si) = &a.ext.snapshot
            && si.repo_id != repo.id
        {
            return Err(Error::corrupt(
                path,
                "snapshot belongs to another repository (repository ids differ)",
            ));
        }
        fault_point("snapshot-opening");
        let readers = repo.readers_lock()?;
        return Ok(Some(Arc::new(pack::PackStore::new(
            &repo.root,
            Some(readers),
        ))));
    }
    Ok(None)
}

/// `hbb info REPO`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RepoInfo {
    pub path: String,
    pub id: String,
    pub created: String,
    pub snapshots: u64,
    pub sources: u64,
    pub data_bytes: u64,
    pub stored_bytes: u64,
    pub packs: u64,
    pub ratio: f64,
    pub newest: String,
}

pub fn info(path: &Path) -> Result<RepoInfo> {
    let repo = Repo::open(path)?;
    let rows = catalog::Catalog::open(&repo)?.snapshots()?;
    let packs = repo.pack_ids()?;
    let mut stored = 0u64;
    for id in &packs {
        let p = repo.root.join(pack::rel_path(id));
        stored += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    }
    let data: u64 = rows.iter().map(|r| r.size).sum();
    let sources: std::collections::BTreeSet<_> =
        rows.iter().map(|r| (&r.host, &r.source)).collect();
    Ok(RepoInfo {
        path: repo.root.display().to_string(),
        id: repo.config.id.clone(),
        created: repo.config.created.clone(),
        snapshots: rows.len() as u64,
        sources: sources.len() as u64,
        data_bytes: data,
        stored_bytes: stored,
        packs: packs.len() as u64,
        ratio: data as f64 / stored.max(1) as f64,
        newest: rows.last().map(|r| r.name.clone()).unwrap_or_default(),
    })
}

impl Repo {
    pub fn init(root: &Path) -> Result<Repo> {
        if root.exists() {
            let empty = std::fs::read_dir(root).at(root)?.next().is_none();
            if !empty {
                return Err(Error::Other(format!(
                    "{}: exists and is not empty; a repository needs a new or empty directory",
                    root.display()
                )));
            }
        }
        for d in ["", SNAPSHOTS, "data", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).at(&p)?;
        }
        let id = crate::sys::random_id();
        let config = Config {
            format: "hbb repository".into(),
            version: 1,
            id: pack::hex(&id),
            created: chrono::Local::now().to_rfc3339(),
        };
        let text = serde_json::to_string_pretty(&config).unwrap() + "\n";
        let tmp = root.join("tmp").join("hbb-repo.new");
        std::fs::write(&tmp, text).at(&tmp)?;
        File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)?;
        std::fs::rename(&tmp, root.join(MARKER)).at(root)?;
        fsync_dir(root)?;
        let repo = Repo::open(root)?;
        catalog::Catalog::open(&repo)?;
        Ok(repo)
    }

    pub fn open(root: &Path) -> Result<Repo> {
        let m = root.join(MARKER);
        let text = match std::fs::read_to_string(&m) {
            Ok(t) => t,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(Error::Other(format!(
                    "{}: not an hbb repository (no {MARKER} file; create one with `hbb repo init`)",
                    root.display()
                )));
            }
            Err(e) => return Err(Error::io(&m, e)),
        };
        let config: Config = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(&m, format!("repository config: {e}")))?;
        if config.format != "hbb repository" {
            return Err(Error::corrupt(&m, "not an hbb repository config"));
        }
        if config.version != 1 {
            return Err(Error::corrupt(
                &m,
                format!(
                    "repository version {} is not supported by this hbb (it knows 1)",
                    config.version
                ),
            ));
        }
        let id = pack::parse_hex16(&config.id)
            .ok_or_else(|| Error::corrupt(&m, "repository config: bad id"))?;
        for d in ["tmp", "data", SNAPSHOTS] {
            let p = root.join(d);
            if !p.is_dir() {
                return Err(Error::corrupt(
                    root,
                    format!("repository is missing its {d}/ directory"),
                ));
            }
        }
        Ok(Repo {
            root: std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()),
            config,
            id,
        })
    }

    pub fn snapshot_path(&self, name: &str) -> PathBuf {
        self.root.join(SNAPSHOTS).join(format!("{name}.hbb"))
    }

    /// Names of the snapshots, from the directory (not the catalog), sorted.
    pub fn snapshot_names(&self) -> Result<Vec<String>> {
        let dir = self.root.join(SNAPSHOTS);
        let mut v = Vec::new();
        for e in std::fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let n = e.file_name();
            let Some(n) = n.to_str() else { continue };
            if let Some(stem) = n.strip_suffix(".hbb")
                && valid_snapshot_name(stem)
            {
                v.push(stem.to_string());
            }
        }
        v.sort();
        Ok(v)
    }

    pub fn open_snapshot(&self, name: &str) -> Result<Archive> {
        if !valid_snapshot_name(name) {
            return Err(Error::Other(format!("{name:?}: not a valid snapshot name")));
        }
        let p = self.snapshot_path(name);
        if !p.exists() {
            return Err(Error::Other(format!(
                "{}: no snapshot named {name:?} (see `hbb list {}`)",
                self.root.display(),
                self.root.display()
            )));
        }
        Archive::open(&p)
    }

    /// The shared lock readers hold (see `store_for`).
    pub fn readers_lock(&self) -> Result<File> {
        let p = self.root.join("readers.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .at(&p)?;
        rustix::fs::flock(f.as_fd(), rustix::fs::FlockOperation::LockShared).at(&p)?;
        Ok(f)
    }

    /// Tries to take the readers' lock exclusively (no reader has a snapshot open).
    pub fn try_readers_exclusive(&self) -> Result<Option<File>> {
        crate::sys::try_flock(&self.root.join("readers.lock"), true)
    }

    /// Takes the writers' lock, waiting up to `wait` for it. A lock is an
    /// flock: the kernel releases it when its holder dies.
    pub fn lock(&self, what: &str, wait: std::time::Duration) -> Result<WriteLock> {
        let p = self.root.join("lock");
        let deadline = std::time::Instant::now() + wait;
        let mut f = loop {
            if let Some(f) = crate::sys::try_flock(&p, true)? {
                break f;
            }
            if std::time::Instant::now() >= deadline {
                let holder = std::fs::read_to_string(&p).unwrap_or_default();
                let holder = holder.trim();
                return Err(Error::Other(format!(
                    "{}: the repository is locked by another writer ({}); try again when it is done{}",
                    self.root.display(),
                    if holder.is_empty() { "unknown" } else { holder },
                    if wait.is_zero() {
                        ", or pass --lock-wait SECONDS"
                    } else {
                        ""
                    }
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        let _ = f.set_len(0);
        let _ = writeln!(
            f,
            "pid {} ({what}) since {}",
            std::process::id(),
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S")
        );
        Ok(WriteLock { _f: f })
    }

    /// Removes files left in tmp/ by writers that died (under the writers' lock).
    pub fn clean_tmp(&self) {
        let dir = self.root.join("tmp");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let snaps = self.root.join(SNAPSHOTS);
        if let Ok(rd) = std::fs::read_dir(&snaps) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Packs present under data/.
    pub fn pack_ids(&self) -> Result<Vec<pack::PackId>> {
        let data = self.root.join("data");
        let mut v = Vec::new();
        for d in std::fs::read_dir(&data).at(&data)? {
            let d = d.at(&data)?;
            if !d.file_type().at(d.path())?.is_dir() {
                continue;
            }
            for e in std::fs::read_dir(d.path()).at(d.path())? {
                let e = e.at(d.path())?;
                let name = format!(
                    "data/{}/{}",
                    d.file_name().to_string_lossy(),
                    e.file_name().to_string_lossy()
                );
                if let Some(id) = pack::id_of_name(name.as_bytes()) {
                    v.push(id);
                }
            }
        }
        v.sort();
        Ok(v)
    }
}

pub struct WriteLock {
    _f: File,
}
