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
    let repo = Repo::open(&o.archive)?;
    let lock = repo.lock("hbb snapshot", rs.lock_wait)?;
    repo.clean_tmp();
    let mut cat = Catalog::open_locked(&repo, &lock)?;
    // Sealed packs no snapshot names (an interrupted snapshot's): their
    // blocks count as stored, so this run does not send them again.
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
    let name = match rs.name {
        Some(n) => n,
        None => {
            let mut n = default_name(&o.source);
            let mut k = 1;
            while repo.snapshot_path(&n).exists() {
                k += 1;
                n = format!("{}.{k}", default_name(&o.source));
            }
            n
        }
    };
    if !valid_snapshot_name(&name) {
        return Err(Error::Other(format!(
            "snapshot name {name:?}: use letters, digits and ._-:+@ (not first . or -), at most 200 bytes"
        )));
    }
    if repo.snapshot_path(&name).exists() {
        return Err(Error::Other(format!(
            "{}: a snapshot named {name:?} exists already",
            repo.root.display()
        )));
    }
    for t in &rs.tags {
        if t.is_empty() || t.contains([',', '\n']) {
            return Err(Error::Other(format!(
                "tag {t:?}: tags are non-empty and hold no comma or newline"
            )));
        }
    }
    let source_abs = std::path::absolute(&o.source).unwrap_or_else(|_| o.source.clone());
    let host = crate::sys::hostname();
    let source_s = source_abs.to_string_lossy().into_owned();
    // The parent: the latest snapshot of the same source on this host.
    let parent = cat
        .snapshots()?
        .into_iter()
        .filter(|r| r.host == host && r.source == source_s)
        .max_by_key(|r| (r.started_ns, r.name.clone()))
        .and_then(|r| match repo.open_snapshot(&r.name) {
            Ok(a) => Some(a),
            Err(e) => {
                log::warn!("cannot use snapshot {} as the parent: {e}", r.name);
                None
            }
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
            let _ = cat.add_run(&Run {
                job: rs.job,
                host,
                source: source_s,
                started_ns: started,
                finished_ns: now_ns(),
                status: "failed".into(),
                message: e.to_string(),
                ..Default::default()
            });
            Err(e)
        }
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
    let a = Archive::open(src)?;
    let sink = Sink::create(dest)?;
    let mut w = ArchiveWriter::new(sink, a.block_size(), crate::sys::random_id())?;
    let mut dec = new_decompressor();
    let mut raw = Vec::new();
    for (i, b) in a.index.blocks.iter().enumerate() {
        let payload = match b.loc {
            BlockLoc::Zero => Payload::Zero,
            _ if w.has(&b.hash) => Payload::Known,
            _ => {
                // Decoding checks the frame against its hash before it is copied.
                a.read_block_into(i as u64, &mut dec, &mut raw)?;
                Payload::Frame(a.read_frame(i as u64)?)
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
