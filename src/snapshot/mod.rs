//! `hbb snapshot`: decide the mode, read the source through the parallel
//! compressor, write the index.
//!
//! ```text
//! decide mode ─► file:   walk (metadata) ─► read files ─► pipeline ─► writer ─► index + footer
//!             └► volume: read device/image sequentially ─► pipeline ─► writer ─► index + footer
//! ```

pub mod inodes;
pub mod pipeline;
pub mod volume;
pub mod walk;

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::archive::writer::{ArchiveWriter, FrameLoc, Sink};
use crate::archive::*;
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::sys;
use inodes::{Run, Runs};
use walk::{FileJob, Tree};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeChoice {
    Auto,
    File,
    Volume,
}

pub struct Options {
    pub source: PathBuf,
    pub archive: PathBuf,
    pub mode: ModeChoice,
    pub threads: usize,
    pub block_size: u64,
    pub level: i32,
    pub volume_threshold: u64,
    pub excludes: Vec<String>,
    pub one_file_system: bool,
    pub allow_mounted_rw: bool,
    pub quiet: bool,
    /// Into a repository (`archive` is then the snapshot's file in it).
    pub repo: Option<RepoTarget>,
}

/// A snapshot into a repository: frames go to its packs, blocks it holds
/// already are referred to, and unchanged files of `parent` are not read.
pub struct RepoTarget {
    pub root: PathBuf,
    /// repo_id, name, tags and job; `parent` and `reused_files` are filled in.
    pub info: SnapshotInfo,
    /// The latest complete snapshot of the same source, if any.
    pub parent: Option<Archive>,
    pub known: HashMap<[u8; 32], FrameLoc>,
    /// A repository on another host: frames go to it through `hbb serve`
    /// (`root` is then empty); `raw` sends blocks uncompressed for its
    /// threads to compress (`--compress-on agent`).
    pub remote: Option<(std::sync::Arc<crate::remote::client::Client>, bool)>,
}

pub struct Outcome {
    pub meta: Meta,
    pub archive_bytes: u64,
    pub ext: Extension,
    /// Blocks that are new in the repository (hash, length, where).
    pub new_blocks: Vec<([u8; 32], u32, FrameLoc)>,
}

/// What the source is and how it will be read.
enum Plan {
    Files { root: PathBuf },
    Volume { device: PathBuf },
}

fn decide(o: &Options) -> Result<(Plan, String)> {
    let src = &o.source;
    let md = std::fs::metadata(src).at(src)?;
    let ft = md.file_type();
    let guard_rw = |dev: &Path| -> Result<()> {
        let md = std::fs::metadata(dev).at(dev)?;
        if md.file_type().is_block_device()
            && !o.allow_mounted_rw
            && let Some(mp) = volume::mounted_rw(md.rdev())
        {
            return Err(Error::Other(format!(
                "{} is mounted read-write at {}: an image of it would not be consistent. \
                     Remount it read-only, snapshot an LVM snapshot, or pass --allow-mounted-rw",
                dev.display(),
                mp.display()
            )));
        }
        Ok(())
    };
    match o.mode {
        ModeChoice::File => {
            if !ft.is_dir() {
                return Err(Error::Other(format!(
                    "{}: file mode needs a directory (use --mode volume for a device or image)",
                    src.display()
                )));
            }
            Ok((Plan::Files { root: src.clone() }, "--mode file".into()))
        }
        ModeChoice::Volume => {
            if ft.is_block_device() || ft.is_file() {
                guard_rw(src)?;
                return Ok((
                    Plan::Volume {
                        device: src.clone(),
                    },
                    "--mode volume".into(),
                ));
            }
            match volume::device_of_mountpoint(src) {
                Some((dev, _ro)) => {
                    guard_rw(&dev)?;
                    let why = format!(
                        "--mode volume: imaging {}, the device mounted at {}",
                        dev.display(),
                        src.display()
                    );
                    Ok((Plan::Volume { device: dev }, why))
                }
                None => Err(Error::Other(format!(
                    "{}: --mode volume needs a block device, an image file, or the root of a filesystem on a block device",
                    src.display()
                ))),
            }
        }
        ModeChoice::Auto => {
            if ft.is_block_device() {
                guard_rw(src)?;
                return Ok((
                    Plan::Volume {
                        device: src.clone(),
                    },
                    "auto: the source is a block device".into(),
                ));
            }
            if ft.is_file() {
                return Ok((
                    Plan::Volume {
                        device: src.clone(),
                    },
                    "auto: the source is an image file".into(),
                ));
            }
            if !ft.is_dir() {
                return Err(Error::Other(format!(
                    "{}: not a directory, block device or image file",
                    src.display()
                )));
            }
            let t = o.volume_threshold;
            // Only the root of a filesystem on a block device can be
            // imaged: anything else is file mode whatever its size, and
            // its entries are not counted (a walk of its own, up to the
            // threshold).
            let Some(mounted) = volume::device_of_mountpoint(src) else {
                return Ok((
                    Plan::Files { root: src.clone() },
                    "auto: the source is not the root of a filesystem on a block device: file mode"
                        .into(),
                ));
            };
            let n = walk::count_entries(src, t);
            if n <= t {
                return Ok((
                    Plan::Files { root: src.clone() },
                    format!("auto: {n} entries, not more than the threshold {t}: file mode"),
                ));
            }
            let why = match mounted {
                (dev, false) if !o.allow_mounted_rw => format!(
                    "auto: more than {t} entries, but {} is mounted read-write: file mode (remount read-only, or pass --mode volume --allow-mounted-rw, to image it)",
                    dev.display()
                ),
                (dev, ro) => {
                    let how = if ro {
                        "mounted read-only"
                    } else {
                        "mounted read-write (--allow-mounted-rw)"
                    };
                    let why = format!(
                        "auto: more than {t} entries and the source is the root of {} {how}: volume mode, imaging {}",
                        dev.display(),
                        dev.display()
                    );
                    return Ok((Plan::Volume { device: dev }, why));
                }
            };
            Ok((Plan::Files { root: src.clone() }, why))
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// SOURCE_DATE_EPOCH (seconds), the reproducible-builds convention.
fn pinned_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

pub fn snapshot(o: &Options) -> Result<Outcome> {
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&o.block_size) {
        return Err(Error::Other(format!(
            "block size {} out of range ({MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE})",
            o.block_size
        )));
    }
    let (plan, why) = decide(o)?;
    if !o.quiet {
        eprintln!("hbb: {why}");
    }
    let source_abs = std::path::absolute(&o.source).unwrap_or_else(|_| o.source.clone());
    let epoch = pinned_epoch();
    let started = match epoch {
        Some(e) => e
            .checked_mul(1_000_000_000)
            .ok_or_else(|| Error::Other(format!("SOURCE_DATE_EPOCH={e} is out of range")))?,
        None => now_ns(),
    };
    let archive_id = match epoch {
        Some(e) => {
            let mut h = blake3::Hasher::new();
            h.update(b"hbb archive id");
            h.update(&e.to_le_bytes());
            h.update(source_abs.as_os_str().as_bytes());
            h.update(&o.block_size.to_le_bytes());
            h.update(&o.level.to_le_bytes());
            h.finalize().as_bytes()[..16].try_into().unwrap()
        }
        None => sys::random_id(),
    };

    let mut exclude_list = o.excludes.clone();
    if let Plan::Files { root } = &plan {
        for own in own_output(o, root) {
            if !o.quiet {
                eprintln!("hbb: leaving out {own}: where this snapshot is written");
            }
            exclude_list.push(own);
        }
    }
    let excludes = walk::Excludes::new(&exclude_list)?;
    let cfg = pipeline::Config {
        threads: o.threads,
        level: o.level,
        raw: o
            .repo
            .as_ref()
            .is_some_and(|r| r.remote.as_ref().is_some_and(|(_, raw)| *raw)),
    };

    // A directory (decide made sure) is walked while it is read, below; a
    // volume is known now.
    let (mut tree, total) = match &plan {
        Plan::Files { .. } => (Tree::empty(), 0),
        Plan::Volume { device } => (volume_tree(device)?, volume::volume_size(device)?),
    };

    let sink = Sink::create(&o.archive)?;
    let mut writer = ArchiveWriter::new(sink, o.block_size, archive_id)?;
    let mut ext = Extension::default();
    let mut parent = None;
    if let Some(rt) = &o.repo {
        let known = rt.known.clone();
        let frames: Box<dyn crate::archive::writer::FrameSink> = match &rt.remote {
            Some((client, raw)) => Box::new(crate::remote::client::RemoteSink::new(
                client.clone(),
                *raw,
                o.level,
            )),
            None => Box::new(crate::repo::pack::PackWriter::new(&rt.root)),
        };
        writer = writer.into_packs(frames, known);
        ext.snapshot = Some(rt.info.clone());
        parent = rt.parent.as_ref().filter(|p| {
            p.block_size() == o.block_size
                && matches!(plan, Plan::Files { .. })
                && !p
                    .index
                    .blocks
                    .iter()
                    .any(|b| matches!(b.loc, BlockLoc::Frame { .. }))
        });
    }
    let mut source_ids: Vec<(u64, u64)> = Vec::new();
    let mut reused: Vec<(u32, u32)> = Vec::new();
    let progress = Progress::new(total, o.quiet);

    let mut stats: Stats;
    match &plan {
        Plan::Files { root } => {
            // The walk runs on its own thread and hands each regular file
            // to the read pass as it finds it, so compression starts with
            // the first file instead of after the last directory.
            // Bounded: the walk is faster than the read, and waits rather
            // than queue every file of the tree (memory).
            let (files_tx, files_rx) = crossbeam_channel::bounded(WALK_AHEAD);
            let (walked, read) = std::thread::scope(|s| {
                let walker = std::thread::Builder::new()
                    .name("hbb-walk".into())
                    .spawn_scoped(s, || {
                        walk::walk(root, &excludes, o.one_file_system, files_tx)
                    })
                    .expect("spawn walk thread");
                let read = pipeline::run(&cfg, &mut writer, &progress, |sink| {
                    read_files(
                        files_rx,
                        parent.map(|p| (p, root.as_path())),
                        o.repo.is_some(),
                        sink,
                        &progress,
                    )
                });
                (walker.join().expect("walk thread panicked"), read)
            });
            tree = walked?;
            let r = read?;
            stats = std::mem::take(&mut tree.stats);
            reused = r.reused;
            if o.repo.is_some() {
                // Every regular file's (device, inode), by inode: what
                // the next snapshot's "unchanged?" test compares.
                source_ids = vec![(0, 0); tree.inodes.len()];
                for &(ino, dev, i) in &r.ids {
                    source_ids[ino as usize] = (dev, i);
                }
            }
            let mut other: Vec<(u32, u64, Box<[Extent]>)> = r
                .scattered
                .into_iter()
                .map(|(ino, size, extents)| (ino, size, extents.into()))
                .collect();
            if let Some(p) = parent {
                other.extend(reuse_files(p, &reused, &mut writer));
                other.sort_unstable_by_key(|o| o.0);
            }
            tree.inodes.set_files(r.stored, other);
            stats.bytes_read = r.bytes_read;
            stats.dup_files = r.dup_files;
            tree.warnings.extend(r.warnings);
            // Only regular files fail to be read.
            stats.files -= r.failed.len() as u64;
            if !source_ids.is_empty() && !r.failed.is_empty() {
                let failed: std::collections::HashSet<u32> = r.failed.iter().copied().collect();
                let mut k = 0u32;
                source_ids.retain(|_| {
                    k += 1;
                    !failed.contains(&(k - 1))
                });
            }
            walk::drop_inodes(&mut tree, &r.failed);
        }
        Plan::Volume { device } => {
            stats = std::mem::take(&mut tree.stats);
            let (extents, size) = pipeline::run(&cfg, &mut writer, &progress, |sink| {
                volume::read_volume(device, sink, &progress)
            })?;
            tree.inodes
                .set_files(Runs::default(), vec![(1, size, extents.into())]);
            stats.bytes_read = size;
        }
    }
    progress.finish();

    writer.settle()?;
    let blocks = writer.take_blocks();
    stats.blocks = blocks.len() as u64;
    stats.bytes_stored = writer.stored_bytes;
    stats.zero_blocks = writer.zero_blocks;
    stats.dup_blocks = writer.dup_blocks;
    let users = tree
        .uids
        .keys()
        .filter_map(|&id| sys::user_name(id).map(|name| IdName { id, name }))
        .collect();
    let groups = tree
        .gids
        .keys()
        .filter_map(|&id| sys::group_name(id).map(|name| IdName { id, name }))
        .collect();
    let meta = Meta {
        tool: format!("hbb {}", env!("CARGO_PKG_VERSION")),
        host: sys::hostname(),
        source: source_abs.as_os_str().as_bytes().to_vec(),
        mode: match plan {
            Plan::Files { .. } => Mode::File,
            Plan::Volume { .. } => Mode::Volume,
        },
        mode_reason: why,
        started_ns: started,
        finished_ns: if epoch.is_some() { started } else { now_ns() },
        block_size: o.block_size,
        level: o.level,
        threads: o.threads as u32,
        volume_threshold: o.volume_threshold,
        excludes: exclude_list,
        one_file_system: o.one_file_system,
        stats,
        warnings: tree.warnings,
        users,
        groups,
    };
    let sources = writer.take_sources();
    let new_blocks = writer.take_new_frames();
    if let Some(si) = &mut ext.snapshot {
        si.parent = parent
            .and_then(|p| p.ext.snapshot.as_ref().map(|s| s.name.clone()))
            .unwrap_or_default();
        si.reused_files = reused.len() as u64;
        si.source_ids = source_ids;
    }
    let index = IndexOut {
        meta: &meta,
        blocks: &blocks,
        inodes: &tree.inodes,
        dirents: &tree.dirents,
        sources: &sources,
    };
    writer.finish(&index, &ext, o.level.max(3))?;
    let stored = meta.stats.bytes_stored;
    Ok(Outcome {
        meta,
        archive_bytes: stored,
        ext,
        new_blocks,
    })
}

/// An exclude pattern for where the snapshot itself is written, when that
/// lies inside the tree being read: the repository's directory, or the
/// archive file and its partial file. Without it, a backup of `/` into
/// `/var/backups` would hold the earlier backups, and read its own output.
fn own_output(o: &Options, root: &Path) -> Vec<String> {
    own_output_inner(o, root).unwrap_or_default()
}

fn own_output_inner(o: &Options, root: &Path) -> Option<Vec<String>> {
    let root = root.canonicalize().ok()?;
    let (dir, names): (PathBuf, Vec<String>) = match &o.repo {
        Some(rt) if rt.remote.is_some() => return None,
        Some(rt) => {
            let r = rt.root.canonicalize().ok()?;
            let name = r.file_name()?.to_str()?.to_string();
            (r.parent()?.to_path_buf(), vec![globset::escape(&name)])
        }
        None if o.archive != Path::new("-") => {
            let dir = match o.archive.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let name = o.archive.file_name()?.to_str()?;
            let e = globset::escape(name);
            (
                dir.canonicalize().ok()?,
                vec![e.clone(), format!(".{e}.hbb-partial-*")],
            )
        }
        None => return None,
    };
    let rel = dir.strip_prefix(&root).ok()?.to_str()?;
    let prefix = if rel.is_empty() {
        String::new()
    } else {
        format!("{}/", globset::escape(rel))
    };
    // A leading '/' makes each a path from the source root (see Excludes).
    Some(names.iter().map(|n| format!("/{prefix}{n}")).collect())
}

/// The parent's inode for `f` if the file is unchanged since: the same
/// size, mtime, ctime and inode number (the test borg and restic make).
fn unchanged_in(p: &Archive, root: &Path, f: &FileJob) -> Option<u32> {
    let rel = f.path.strip_prefix(root).ok()?;
    let pi = p.resolve(rel.as_os_str().as_bytes())?;
    let ino = p.inode(pi);
    let Body::File { size, .. } = &ino.body else {
        return None;
    };
    let ids = &p.ext.snapshot.as_ref()?.source_ids;
    let same = *size == f.size
        && ino.mtime == f.mtime
        && ino.ctime == f.ctime
        && ids
            .get(pi as usize)
            .is_some_and(|&(_, i)| i == f.ino && i != 0);
    same.then_some(pi)
}

/// Gives each reused file the parent's data: the parent's blocks it
/// touches are appended to this snapshot's block list (once each) and its
/// extents are moved onto them, split at block boundaries. Returns each
/// file's (inode, size, extents).
fn reuse_files(
    p: &Archive,
    reused: &[(u32, u32)],
    w: &mut ArchiveWriter,
) -> Vec<(u32, u64, Box<[Extent]>)> {
    let bs = p.block_size();
    let mut map: HashMap<u64, u64> = HashMap::new();
    let mut files = Vec::with_capacity(reused.len());
    for &(ino, pi) in reused {
        let Body::File { size, extents } = &p.inode(pi).body else {
            continue;
        };
        let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
        for e in extents {
            let mut done = 0u64;
            while done < e.len {
                let s = e.stream + done;
                let j = s / bs;
                let n = (e.len - done).min((j + 1) * bs - s);
                let k = *map.entry(j).or_insert_with(|| {
                    let b = &p.index.blocks[j as usize];
                    let at = match b.loc {
                        BlockLoc::Zero => None,
                        BlockLoc::Frame { offset, clen } => Some(FrameLoc::Here { offset, clen }),
                        BlockLoc::External {
                            source,
                            offset,
                            clen,
                        } => Some(FrameLoc::Pack {
                            pack: p.index.sources[source as usize].archive_id,
                            offset,
                            clen,
                        }),
                    };
                    w.push_stored(b.len, b.hash, at, p.frame_check_of(j))
                });
                extend_or_push(&mut out, e.offset + done, k * bs + (s - j * bs), n);
                done += n;
            }
        }
        files.push((ino, *size, out.into()));
    }
    files
}

/// The tree of a volume archive: a root holding one file named after the source.
fn volume_tree(device: &Path) -> Result<Tree> {
    let md = std::fs::metadata(device).at(device)?;
    let t = |s, n| walk::time(s, n);
    let root = Inode {
        perm: 0o755,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: t(md.mtime(), md.mtime_nsec()),
        atime: t(md.atime(), md.atime_nsec()),
        ctime: t(md.ctime(), md.ctime_nsec()),
        xattrs: Box::default(),
        body: Body::Dir { first: 0, count: 1 },
    };
    let file = Inode {
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        body: Body::File {
            size: 0,
            extents: Box::default(),
        },
        ..root.clone()
    };
    let mut uids = std::collections::BTreeMap::new();
    uids.insert(md.uid(), ());
    let mut gids = std::collections::BTreeMap::new();
    gids.insert(md.gid(), ());
    let mut inodes = inodes::Inodes::default();
    inodes.push(&root);
    inodes.push(&file);
    Ok(Tree {
        inodes,
        dirents: {
            let mut d = walk::Dirents::default();
            d.push(&walk::name_of(device), 1);
            d
        },
        stats: Stats {
            files: 1,
            dirs: 1,
            ..Default::default()
        },
        uids,
        gids,
        ..Tree::empty()
    })
}

struct ReadResult {
    /// Each file read whose bytes are one run of the stream.
    stored: Runs,
    /// The other files read (empty ones, and sparse ones: no extent,
    /// several, or one that does not start at offset 0 or stops short of
    /// the size): (inode, size, extents).
    scattered: Vec<(u32, u64, Vec<Extent>)>,
    /// Files of the parent snapshot taken unread: (inode, parent's inode).
    reused: Vec<(u32, u32)>,
    /// Every regular file's (inode, device, inode number), reused or read,
    /// when asked for (a repository snapshot keeps them).
    ids: Vec<(u32, u64, u64)>,
    failed: Vec<u32>,
    warnings: Vec<String>,
    bytes_read: u64,
    dup_files: u64,
}

/// File mode, second pass: read every regular file into the stream.
/// Files of a block or more start and end on block boundaries, so identical
/// large files give identical blocks (stored once); smaller files are packed
/// together and deduplicated whole while their bytes are still pending.
fn read_files(
    files: crossbeam_channel::Receiver<FileJob>,
    parent: Option<(&Archive, &Path)>,
    want_ids: bool,
    sink: &mut pipeline::BlockSink,
    progress: &Progress,
) -> Result<ReadResult> {
    let mut r = ReadResult {
        stored: Runs::default(),
        scattered: Vec::new(),
        reused: Vec::new(),
        ids: Vec::new(),
        failed: Vec::new(),
        warnings: Vec::new(),
        bytes_read: 0,
        dup_files: 0,
    };
    let bs = sink.block_size();
    let mut seen = SeenFiles::default();
    // An opener thread runs ahead of the reader: it opens the next files
    // and asks the kernel to start reading them (posix_fadvise WILLNEED),
    // so that a cold disk sees many requests at once instead of one file
    // at a time, and the reader's thread is spared the open calls.
    // It also takes the files unchanged since the parent snapshot out
    // (unopened), and grows the progress bar's total as the walk goes.
    let (tx, rx) = crossbeam_channel::bounded::<Opened>(PREFETCH_FILES);
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("hbb-open".into())
            .spawn_scoped(s, move || {
                // Files come grouped by directory: each directory is looked
                // up once and its files opened relative to it.
                let mut dir: Option<(PathBuf, std::io::Result<std::os::fd::OwnedFd>)> = None;
                let mut cname = Vec::new();
                for job in files {
                    if let Some((p, root)) = parent
                        && let Some(pi) = unchanged_in(p, root, &job)
                    {
                        if tx.send(Opened::Reused(job, pi)).is_err() {
                            return;
                        }
                        continue;
                    }
                    progress.grow(job.size);
                    let parent = job.path.parent().unwrap_or(Path::new("/"));
                    if dir
                        .as_ref()
                        .is_none_or(|(p, _)| p.as_os_str() != parent.as_os_str())
                    {
                        dir = Some((parent.to_path_buf(), sys::open_dir_path(parent)));
                    }
                    let name = job.path.file_name().and_then(|n| {
                        cname.clear();
                        cname.extend_from_slice(n.as_bytes());
                        cname.push(0);
                        std::ffi::CStr::from_bytes_with_nul(&cname).ok()
                    });
                    let f = match (&dir, name) {
                        (Some((_, Ok(dfd))), Some(name)) => sys::open_noatime_at(dfd.as_fd(), name),
                        // The directory is gone or unreadable: the full path
                        // gives the error to report.
                        _ => sys::open_noatime(&job.path),
                    };
                    if let Ok(f) = &f
                        && job.size > 0
                    {
                        let len = job.size.min(PREFETCH_BYTES);
                        let _ = rustix::fs::fadvise(
                            f,
                            0,
                            std::num::NonZeroU64::new(len),
                            rustix::fs::Advice::WillNeed,
                        );
                    }
                    if tx.send(Opened::Read(job, f)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn opener thread");
        for opened in &rx {
            let (Opened::Read(job, _) | Opened::Reused(job, _)) = &opened;
            if want_ids {
                r.ids.push((job.inode, job.dev, job.ino));
            }
            let (job, opened) = match opened {
                Opened::Reused(job, pi) => {
                    r.reused.push((job.inode, pi));
                    continue;
                }
                Opened::Read(job, f) => (job, f),
            };
            progress.file();
            let job = &job;
            match opened.and_then(|f| read_one(job, f, sink, bs, &mut seen, progress)) {
                Ok((extents, size, read, dup, changed)) => {
                    r.bytes_read += read;
                    if dup {
                        r.dup_files += 1;
                    }
                    if let Some(why) = changed {
                        r.warnings.push(format!("{}: {why}", job.path.display()));
                    }
                    match extents[..] {
                        [e] if e.offset == 0 && e.len == size => r.stored.push(Run {
                            ino: job.inode,
                            size,
                            stream: e.stream,
                        }),
                        _ => r.scattered.push((job.inode, size, extents)),
                    }
                }
                Err(e) => {
                    r.warnings
                        .push(format!("{}: not stored: {e}", job.path.display()));
                    r.failed.push(job.inode);
                }
            }
        }
        drop(rx);
    });
    Ok(r)
}

/// The small files read so far, by the BLAKE3 of their bytes: where in the
/// stream each one starts (one extent from offset 0; the hash implies the
/// size). The keys are kept densely, in order, and the table holds only
/// their positions: about 50 bytes a file, where a
/// `HashMap<[u8; 32], u64>` took up to 82 (its table doubles once 7/8
/// full, so a million files had two million slots of 41 bytes).
#[derive(Default)]
struct SeenFiles {
    files: Vec<([u8; 32], u64)>,
    table: hashbrown::HashTable<u32>,
}

impl SeenFiles {
    /// Where a file with these bytes already is; if none is, `stream`
    /// becomes where it is.
    fn get_or_insert(&mut self, key: [u8; 32], stream: u64) -> Option<u64> {
        // A BLAKE3 output is uniform: its first bytes are a hash already.
        let hash = |k: &[u8; 32]| u64::from_le_bytes(k[..8].try_into().expect("8 bytes"));
        let files = &self.files;
        if let Some(&i) = self.table.find(hash(&key), |&i| files[i as usize].0 == key) {
            return Some(self.files[i as usize].1);
        }
        let i = u32::try_from(self.files.len()).ok()?;
        self.files.push((key, stream));
        let files = &self.files;
        self.table
            .insert_unique(hash(&key), i, |&j| hash(&files[j as usize].0));
        None
    }
}

/// A file as the opener thread hands it to the reader.
enum Opened {
    /// To read, opened (or why not).
    Read(FileJob, std::io::Result<std::fs::File>),
    /// Unchanged since the parent snapshot: its inode there.
    Reused(FileJob, u32),
}

/// How many files the walk may find ahead of the read pass.
const WALK_AHEAD: usize = 4096;

/// How many files the opener thread may run ahead of the reader.
const PREFETCH_FILES: usize = 128;
/// How much of each file it asks the kernel to read ahead.
const PREFETCH_BYTES: u64 = 4 << 20;

type ReadOne = (Vec<Extent>, u64, u64, bool, Option<String>);

fn read_one(
    job: &FileJob,
    f: std::fs::File,
    sink: &mut pipeline::BlockSink,
    bs: u64,
    seen: &mut SeenFiles,
    progress: &Progress,
) -> std::io::Result<ReadOne> {
    let md = f.metadata()?;
    if md.dev() != job.dev || md.ino() != job.ino {
        return Err(std::io::Error::other(
            "replaced between the walk and the read",
        ));
    }
    let size = job.size;
    let regions = if job.sparse {
        sys::data_regions(&f, size)?
    } else {
        vec![(0, size)]
    };
    let large = size >= bs;
    if large {
        sink.align().map_err(std::io::Error::other)?;
    }
    let start = sink.pos();
    let mut extents: Vec<Extent> = Vec::with_capacity(regions.len());
    let mut read = 0u64;
    let mut short = false;
    'regions: for (off, len) in regions {
        let mut done = 0u64;
        while done < len {
            let at = sink.pos();
            let n = sink.read_at(f.as_fd(), off + done, len - done)? as u64;
            if n == 0 {
                short = true;
                break 'regions;
            }
            extend_or_push(&mut extents, off + done, at, n);
            done += n;
            read += n;
            progress.read(n);
        }
    }
    let final_size = if short {
        extents.last().map_or(0, |e| e.offset + e.len)
    } else {
        size
    };
    let mut dup = false;
    if !large
        && !short
        && read > 0
        && extents.len() == 1
        && extents[0].offset == 0
        && read == size
        && let Some(bytes) = sink.pending_since(start)
    {
        let key = *blake3::hash(bytes).as_bytes();
        if let Some(stream) = seen.get_or_insert(key, extents[0].stream)
            && sink.truncate(start)
        {
            extents = vec![Extent {
                offset: 0,
                stream,
                len: size,
            }];
            dup = true;
        }
    }
    if large {
        sink.align().map_err(std::io::Error::other)?;
    }
    let after = f.metadata()?;
    let changed = if short {
        Some(format!(
            "shrank while read: stored {final_size} of {size} bytes"
        ))
    } else if after.len() != size
        || after.mtime() != job.mtime.sec
        || after.mtime_nsec() as u32 != job.mtime.nsec
        || after.ctime() != job.ctime.sec
        || after.ctime_nsec() as u32 != job.ctime.nsec
    {
        Some("changed while read: the stored copy may be inconsistent".to_string())
    } else {
        None
    };
    Ok((extents, final_size, read, dup, changed))
}

/// Adds bytes at file `offset` / stream `stream`, merging with the last
/// extent when both continue it.
fn extend_or_push(v: &mut Vec<Extent>, offset: u64, stream: u64, len: u64) {
    if let Some(last) = v.last_mut()
        && last.offset + last.len == offset
        && last.stream + last.len == stream
    {
        last.len += len;
        return;
    }
    v.push(Extent {
        offset,
        stream,
        len,
    });
}

#[cfg(test)]
mod tests {
    use super::SeenFiles;

    fn key(i: u32) -> [u8; 32] {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn seen_files_finds_each_file_where_it_was_first_put() {
        let mut seen = SeenFiles::default();
        // Enough to grow the table several times.
        for i in 0..20_000u32 {
            assert_eq!(seen.get_or_insert(key(i), u64::from(i) * 7), None);
        }
        for i in 0..20_000u32 {
            assert_eq!(seen.get_or_insert(key(i), 1), Some(u64::from(i) * 7));
        }
        // Keys that share their first 8 bytes (the table's hash) are told apart.
        let mut a = [1u8; 32];
        let mut b = [1u8; 32];
        a[31] = 2;
        b[31] = 3;
        assert_eq!(seen.get_or_insert(a, 10), None);
        assert_eq!(seen.get_or_insert(b, 11), None);
        assert_eq!(seen.get_or_insert(a, 12), Some(10));
        assert_eq!(seen.get_or_insert(b, 13), Some(11));
        assert_eq!(seen.files.len(), 20_002);
    }
}
