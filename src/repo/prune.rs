//! `hbb prune`: drop the snapshots the retention rules do not keep, then
//! reclaim the space of the blocks no kept snapshot needs.
//!
//! Order of work, so that a kill at any moment loses nothing kept:
//!
//! 1. the catalog is marked dirty (a dirty catalog is rebuilt at next open);
//! 2. dropped snapshot files are deleted — kept ones are untouched;
//! 3. gc, only when no reader has a snapshot open (readers.lock): packs no
//!    kept snapshot uses are deleted; packs mostly dead are repacked — their
//!    live frames copied (and checked) into new packs, sealed and fsynced,
//!    then every kept snapshot that used them rewritten (atomically) to the
//!    new places, and only then the old packs deleted;
//! 4. the catalog is rebuilt from the snapshot files and marked clean.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::pack::{self, PackId, PackWriter};
use super::{Repo, SNAPSHOTS, fsync_dir};
use crate::archive::writer::{ArchiveWriter, FrameLoc, Sink};
use crate::archive::*;
use crate::error::{Error, IoContext, Result};
use crate::retention::{self, Policy};

/// A pack whose live frames are less than this share of it is repacked.
const REPACK_BELOW: f64 = 0.5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    pub policy: Policy,
    pub dry_run: bool,
    pub lock_wait: Duration,
    /// Only the snapshots of this source: (host, absolute path).
    pub source: Option<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Decision {
    pub name: String,
    pub host: String,
    pub source: String,
    pub time: String,
    pub keep: bool,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Report {
    pub dry_run: bool,
    pub snapshots: Vec<Decision>,
    pub removed: Vec<String>,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub snapshots_rewritten: u64,
    pub bytes_freed: i64,
    /// Why space was not reclaimed this time, if it was not.
    pub gc_skipped: Option<String>,
}

use super::fault_point;

pub fn prune(root: &Path, o: &Options) -> Result<Report> {
    if o.policy.is_empty() {
        return Err(Error::Other(
            "prune needs at least one --keep-* rule (it would delete every snapshot)".into(),
        ));
    }
    let repo = Repo::open(root)?;
    let lock = repo.lock("hbb prune", o.lock_wait)?;
    repo.clean_tmp();
    let mut cat = Catalog::open_locked(&repo, &lock)?;
    let rows: Vec<_> = cat
        .snapshots()?
        .into_iter()
        .filter(|r| {
            o.source
                .as_ref()
                .is_none_or(|(h, s)| *s == r.source && r.host == *h)
        })
        .collect();
    let now = chrono::Utc::now().timestamp();
    // The rules apply to each source (host and path) on its own.
    let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        groups
            .entry((r.host.clone(), r.source.clone()))
            .or_default()
            .push(i);
    }
    let mut rep = Report {
        dry_run: o.dry_run,
        ..Default::default()
    };
    let mut decisions: Vec<Option<retention::Decision>> = vec![None; rows.len()];
    for idx in groups.values_mut() {
        // Newest first: the retention rules take the lower index as the
        // newer of two snapshots made in the same second.
        idx.sort_by_key(|&i| std::cmp::Reverse((rows[i].started_ns, rows[i].name.clone())));
        let times: Vec<i64> = idx
            .iter()
            .map(|&i| rows[i].started_ns.div_euclid(1_000_000_000))
            .collect();
        for (k, d) in retention::decide(&o.policy, &times, now)
            .into_iter()
            .enumerate()
        {
            decisions[idx[k]] = Some(d);
        }
    }
    for (r, d) in rows.iter().zip(decisions) {
        let d = d.unwrap_or(retention::Decision {
            keep: true,
            reason: "unknown".into(),
        });
        rep.snapshots.push(Decision {
            name: r.name.clone(),
            host: r.host.clone(),
            source: r.source.clone(),
            time: crate::inspect::rfc3339(r.started_ns),
            keep: d.keep,
            reason: d.reason,
        });
    }
    if o.dry_run {
        return Ok(rep);
    }
    cat.set_dirty(true)?;
    fault_point("prune-marked");
    let snaps = repo.root.join(SNAPSHOTS);
    for d in rep.snapshots.iter().filter(|d| !d.keep) {
        let p = repo.snapshot_path(&d.name);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&p, e)),
        }
        rep.removed.push(d.name.clone());
        fault_point("prune-removing");
    }
    fsync_dir(&snaps)?;
    fault_point("prune-removed");
    match repo.try_readers_exclusive()? {
        Some(excl) => {
            gc(&repo, &mut rep)?;
            drop(excl);
        }
        None => {
            rep.gc_skipped = Some(
                "a snapshot of the repository is open (mounted, being restored or verified); \
                 space is reclaimed by the next prune"
                    .into(),
            );
        }
    }
    fault_point("prune-gc-done");
    cat.rebuild(&repo)?;
    Ok(rep)
}

/// Opens a snapshot's index without attaching the packs (gc holds the
/// readers' lock exclusively, which attaching would wait for).
fn open_index(path: &Path) -> Result<Archive> {
    let f = std::fs::File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    Archive::from_source(Box::new(f), len, path)
}

/// One live frame of a pack: where, and what it must decode to.
#[derive(Clone, Copy)]
struct Live {
    offset: u64,
    clen: u32,
    len: u32,
    hash: [u8; 32],
}

fn gc(repo: &Repo, rep: &mut Report) -> Result<()> {
    // Live frames, by pack, from every kept snapshot.
    let names = repo.snapshot_names()?;
    let mut live: HashMap<PackId, BTreeMap<u64, Live>> = HashMap::new();
    for n in &names {
        let a = open_index(&repo.snapshot_path(n))?;
        for b in &a.index.blocks {
            if let BlockLoc::External {
                source,
                offset,
                clen,
            } = b.loc
            {
                let pack = a.index.sources[source as usize].archive_id;
                live.entry(pack).or_default().insert(
                    offset,
                    Live {
                        offset,
                        clen,
                        len: b.len,
                        hash: b.hash,
                    },
                );
            }
        }
    }
    let mut dead: Vec<PackId> = Vec::new();
    let mut sparse: Vec<PackId> = Vec::new();
    for id in repo.pack_ids()? {
        let p = repo.root.join(pack::rel_path(&id));
        let size = std::fs::metadata(&p).at(&p)?.len();
        match live.get(&id) {
            None => dead.push(id),
            Some(frames) => {
                let used: u64 = frames.values().map(|l| l.clen as u64).sum();
                if (used as f64) < REPACK_BELOW * size as f64 {
                    sparse.push(id);
                }
            }
        }
    }
    // Repack: copy the live frames of sparse packs into new packs.
    let mut moved: HashMap<(PackId, u64), (PackId, u64)> = HashMap::new();
    if !sparse.is_empty() {
        let mut w = PackWriter::new(&repo.root);
        let mut dec = new_decompressor();
        for id in &sparse {
            let path = repo.root.join(pack::rel_path(id));
            let f = std::fs::File::open(&path).at(&path)?;
            for l in live[id].values() {
                let mut frame = vec![0u8; l.clen as usize];
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut frame, l.offset).at(&path)?;
                let raw = dec.decompress(&frame, l.len as usize).map_err(|e| {
                    Error::corrupt(
                        &path,
                        format!("frame at offset {} does not decompress: {e}", l.offset),
                    )
                })?;
                if *blake3::hash(&raw).as_bytes() != l.hash {
                    return Err(Error::corrupt(
                        &path,
                        format!("frame at offset {}: content hash mismatch", l.offset),
                    ));
                }
                let (np, no) = w.add(l.hash, l.len, &frame)?;
                moved.insert((*id, l.offset), (np, no));
            }
        }
        w.finish()?;
        fault_point("prune-repacked");
        // Point every kept snapshot that used a repacked pack at the copies.
        let sparse_set: HashSet<PackId> = sparse.iter().copied().collect();
        for n in &names {
            let path = repo.snapshot_path(n);
            let a = open_index(&path)?;
            let uses = a
                .index
                .sources
                .iter()
                .any(|s| sparse_set.contains(&s.archive_id));
            if uses {
                rewrite(&a, &path, &repo.root, &moved)?;
                rep.snapshots_rewritten += 1;
                fault_point("prune-rewriting");
            }
        }
        fault_point("prune-rewritten");
    }
    let mut freed: i64 = 0;
    for id in dead.iter().chain(sparse.iter()) {
        let p = repo.root.join(pack::rel_path(id));
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(&p).at(&p)?;
        freed += size as i64;
        fault_point("prune-deleting");
    }
    rep.packs_deleted = dead.len() as u64;
    rep.packs_repacked = sparse.len() as u64;
    // The copies count against what was freed.
    let mut added: HashSet<PackId> = HashSet::new();
    for (np, _) in moved.values() {
        added.insert(*np);
    }
    for id in &added {
        let p = repo.root.join(pack::rel_path(id));
        freed -= std::fs::metadata(&p).map(|m| m.len() as i64).unwrap_or(0);
    }
    rep.bytes_freed = freed;
    let data = repo.root.join("data");
    if let Ok(rd) = std::fs::read_dir(&data) {
        for d in rd.flatten() {
            let _ = fsync_dir(&d.path());
            let _ = std::fs::remove_dir(d.path()); // only if empty
        }
    }
    Ok(())
}

/// Writes snapshot `a` again at `path` with its blocks' frames at their new places.
fn rewrite(
    a: &Archive,
    path: &Path,
    root: &Path,
    moved: &HashMap<(PackId, u64), (PackId, u64)>,
) -> Result<()> {
    let sink = Sink::create(path)?;
    let mut w = ArchiveWriter::new(sink, a.block_size(), a.header.archive_id)?
        .into_packs(Box::new(PackWriter::new(root)), HashMap::new());
    for (i, b) in a.index.blocks.iter().enumerate() {
        let at = match b.loc {
            BlockLoc::Zero => None,
            BlockLoc::External {
                source,
                offset,
                clen,
            } => {
                let pack = a.index.sources[source as usize].archive_id;
                let (pack, offset) = moved
                    .get(&(pack, offset))
                    .copied()
                    .unwrap_or((pack, offset));
                Some(FrameLoc::Pack { pack, offset, clen })
            }
            BlockLoc::Frame { .. } => {
                return Err(Error::corrupt(
                    path,
                    "a repository snapshot holds frames of its own",
                ));
            }
        };
        // A frame moved to another pack is the same bytes: same check.
        w.push_stored(b.len, b.hash, at, a.frame_check_of(i as u64));
    }
    let mut index = a.index.clone();
    index.blocks = w.take_blocks();
    index.sources = w.take_sources();
    w.finish(&index, &a.ext, 3)
}
