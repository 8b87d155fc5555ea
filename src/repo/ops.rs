//! Repository commands: snapshot into, resolve `REPO::NAME`, export.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::catalog::{Catalog, Run, SnapshotRow};
use super::{Repo, pack, valid_snapshot_name};
use crate::archive::writer::{ArchiveWriter, Payload, Sink};
use crate::archive::*;
use crate::error::{Error, Result};
use crate::snapshot::{self, Options, Outcome, RepoTarget};

pub struct RepoSnapshot {
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub job: String,
    pub lock_wait: Duration,
    /// Into a remote repository: the far end compresses (`--compress-on agent`).
    pub compress_on_agent: bool,
}

pub struct Made {
    pub outcome: Outcome,
    pub row: SnapshotRow,
}

fn default_name(source: &Path) -> String {
    let base: String = std::path::absolute(source)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "root".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = base.trim_start_matches(['.', '-']);
    let base = if base.is_empty() { "root" } else { base };
    let base: String = base.chars().take(100).collect();
    let t = match std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        Some(e) => chrono::DateTime::from_timestamp(e, 0)
            .map(|d| d.with_timezone(&chrono::Local))
            .unwrap_or_else(chrono::Local::now),
        None => chrono::Local::now(),
    };
    format!("{base}-{}", t.format("%Y-%m-%dT%H:%M:%S"))
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Makes a snapshot of `o.source` in the repository at `o.archive`.
pub fn snapshot_into(mut o: Options, rs: RepoSnapshot) -> Result<Made> {
    if let Some(url) = crate::remote::parse(&o.archive) {
        return snapshot_remote(o, rs, &url);
    }
    let repo = Repo::open(&o.archive)?;
    let lock = repo.lock("hbb snapshot", rs.lock_wait)?;
    repo.clean_tmp();
    let mut cat = prepare_write(&repo, &lock)?;
    let name = pick_name(&rs, &o.source, |n| repo.snapshot_path(n).exists())?;
    if repo.snapshot_path(&name).exists() {
        return Err(Error::Other(format!(
            "{}: a snapshot named {name:?} exists already",
            repo.root.display()
        )));
    }
    let source_abs = std::path::absolute(&o.source).unwrap_or_else(|_| o.source.clone());
    let host = crate::sys::hostname();
    let source_s = source_abs.to_string_lossy().into_owned();
    let parent = parent_of(&cat.snapshots()?, &host, &source_s, |n| {
        repo.open_snapshot(n)
    });
    let started = now_ns();
    o.archive = repo.snapshot_path(&name);
    o.repo = Some(RepoTarget {
        root: repo.root.clone(),
        info: SnapshotInfo {
            repo_id: repo.id,
            name: name.clone(),
            tags: rs.tags.clone(),
            job: rs.job.clone(),
            ..Default::default()
        },
        parent,
        known: cat.known_blocks()?,
        remote: None,
    });
    match snapshot::snapshot(&o) {
        Ok(outcome) => {
            super::fault_point("snapshot-named");
            let a = Archive::open(&o.archive)?;
            let row = SnapshotRow::of(&name, &a);
            cat.add_snapshot(&row, &outcome.new_blocks)?;
            Ok(Made { outcome, row })
        }
        Err(e) => {
            let _ = cat.add_run(&failed_run(rs.job, host, source_s, started, &e));
            Err(e)
        }
    }
}

/// Opens the catalog of a repository whose writers' lock is held, and
/// adopts sealed packs no snapshot names (an interrupted snapshot's): their
/// blocks count as stored, so the next snapshot does not store them again.
pub fn prepare_write(repo: &Repo, lock: &super::WriteLock) -> Result<Catalog> {
    let mut cat = Catalog::open_locked(repo, lock)?;
    let known_packs = cat.packs_known()?;
    for id in repo.pack_ids()? {
        if !known_packs.contains(&id) {
            match pack::read_trailer(&repo.root.join(pack::rel_path(&id))) {
                Ok((pid, entries)) if pid == id => cat.adopt_pack(&id, &entries)?,
                Ok(_) => log::warn!("pack {} holds another id; ignored", pack::hex(&id)),
                Err(e) => log::warn!("{e}; ignored"),
            }
        }
    }
    Ok(cat)
}

/// The snapshot's name: the one asked for, or SOURCE-TIME (made unique);
/// checks it and the tags.
fn pick_name(rs: &RepoSnapshot, source: &Path, exists: impl Fn(&str) -> bool) -> Result<String> {
    let name = match &rs.name {
        Some(n) => n.clone(),
        None => {
            let mut n = default_name(source);
            let mut k = 1;
            while exists(&n) {
                k += 1;
                n = format!("{}.{k}", default_name(source));
            }
            n
        }
    };
    if !valid_snapshot_name(&name) {
        return Err(Error::Other(format!(
            "snapshot name {name:?}: use letters, digits and ._-:+@ (not first . or -), at most 200 bytes"
        )));
    }
    for t in &rs.tags {
        if t.is_empty() || t.contains([',', '\n']) {
            return Err(Error::Other(format!(
                "tag {t:?}: tags are non-empty and hold no comma or newline"
            )));
        }
    }
    Ok(name)
}

/// A snapshot into a repository on another host (`hbb serve` at the far
/// end): the same as into a local one, with the far end storing what this
/// end sends, and the snapshot's file written here and sent last.
fn snapshot_remote(mut o: Options, rs: RepoSnapshot, url: &crate::remote::Url) -> Result<Made> {
    use crate::remote::client::Client;
    let client = Client::connect(url, false)?;
    let host = crate::sys::hostname();
    client.lock(&format!("hbb snapshot from {host}"), rs.lock_wait)?;
    let rows = client.list()?;
    let name = pick_name(&rs, &o.source, |n| rows.iter().any(|r| r.name == n))?;
    if rows.iter().any(|r| r.name == name) {
        return Err(Error::Other(format!(
            "{url}: a snapshot named {name:?} exists already"
        )));
    }
    let source_abs = std::path::absolute(&o.source).unwrap_or_else(|_| o.source.clone());
    let source_s = source_abs.to_string_lossy().into_owned();
    let parent = parent_of(&rows, &host, &source_s, |n| client.open_snapshot(n));
    let started = now_ns();
    // The snapshot's file is made here, then sent.
    let dir = crate::sys::private_temp_dir("hbb-remote")?;
    o.archive = dir.path().join(format!("{name}.hbb"));
    o.repo = Some(RepoTarget {
        root: PathBuf::new(),
        info: SnapshotInfo {
            repo_id: client.repo_id,
            name: name.clone(),
            tags: rs.tags.clone(),
            job: rs.job.clone(),
            ..Default::default()
        },
        parent,
        known: client.known()?,
        remote: Some((client.clone(), rs.compress_on_agent)),
    });
    let made = snapshot::snapshot(&o).and_then(|outcome| {
        let bytes = std::fs::read(&o.archive).map_err(|e| Error::io(&o.archive, e))?;
        let row = client.commit(&name, &bytes)?;
        Ok(Made { outcome, row })
    });
    if let Err(e) = &made {
        let _ = client.add_run(&failed_run(rs.job, host, source_s, started, e));
    }
    made
}

/// The parent of a snapshot of `source` on `host`: the latest of theirs.
fn parent_of(
    rows: &[SnapshotRow],
    host: &str,
    source: &str,
    open: impl Fn(&str) -> Result<Archive>,
) -> Option<Archive> {
    rows.iter()
        .filter(|r| r.host == host && r.source == source)
        .max_by_key(|r| (r.started_ns, r.name.clone()))
        .and_then(|r| match open(&r.name) {
            Ok(a) => Some(a),
            Err(e) => {
                log::warn!("cannot use snapshot {} as the parent: {e}", r.name);
                None
            }
        })
}

/// The catalog's record of a snapshot that failed.
fn failed_run(job: String, host: String, source: String, started_ns: i64, e: &Error) -> Run {
    Run {
        job,
        host,
        source,
        started_ns,
        finished_ns: now_ns(),
        status: "failed".into(),
        message: e.to_string(),
        ..Default::default()
    }
}

/// What an archive argument names: a file, or `REPO::SNAPSHOT`.
pub fn resolve(arg: &Path) -> Result<PathBuf> {
    let (repo, snap) = super::split_target(arg);
    match snap {
        Some(s) if super::is_repo(&repo) => {
            let r = Repo::open(&repo)?;
            if !valid_snapshot_name(&s) || !r.snapshot_path(&s).exists() {
                return Err(Error::Other(format!(
                    "{}: no snapshot named {s:?} (see `hbb list {}`)",
                    repo.display(),
                    repo.display()
                )));
            }
            Ok(r.snapshot_path(&s))
        }
        Some(_) if !arg.exists() => Err(Error::Other(format!(
            "{}: not an hbb repository (no {} file)",
            repo.display(),
            super::MARKER
        ))),
        _ => {
            if super::is_repo(arg) {
                return Err(Error::Other(format!(
                    "{} is a repository: name a snapshot in it as {}::NAME (see `hbb list {}`)",
                    arg.display(),
                    arg.display(),
                    arg.display()
                )));
            }
            Ok(arg.to_path_buf())
        }
    }
}

/// Writes snapshot `src` as one self-contained archive file at `dest`:
/// the same blocks, the same index, its frames copied out of the packs.
pub fn export(src: &Path, dest: &Path) -> Result<u64> {
    let mut a = super::handle::open_archive(src)?;
    // Every frame copied is checked both ways first: the copy gets a new
    // frame check, made from the bytes copied.
    a.check_content = true;
    let sink = Sink::create(dest)?;
    let mut w = ArchiveWriter::new(sink, a.block_size(), crate::sys::random_id())?;
    let mut dec = new_decompressor();
    let mut raw = Vec::new();
    for (i, b) in a.index.blocks.iter().enumerate() {
        let payload = match b.loc {
            BlockLoc::Zero => Payload::Zero,
            _ if w.has(&b.hash) => Payload::Known,
            _ => {
                // The bytes checked are the bytes copied: read once.
                let frame = a.read_frame(i as u64)?;
                a.decode_frame(i as u64, &frame, &mut dec, &mut raw)?;
                Payload::Frame(frame)
            }
        };
        w.push(i as u64, b.len, b.hash, payload)?;
    }
    let stored = w.stored_bytes;
    let mut index = a.index.clone();
    index.blocks = w.take_blocks();
    index.sources = Vec::new();
    w.finish(&index, &Extension::default(), 3)?;
    Ok(stored)
}
