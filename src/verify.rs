//! `hbb verify`: decode every frame and check every hash, in parallel; with
//! `--source`, compare content and metadata with the source as well.
//!
//! ```text
//! frames:  distinct frames ─► N decode threads (hash check) ─► bad blocks ─► files that hold them
//! source:  every file's pieces, in stream order ─► compared with the source file's bytes
//!          every entry's metadata ─► compared with lstat/xattrs of the source path
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::decode::{for_each_block, for_each_piece};
use crate::archive::*;
use crate::error::Result;
use crate::sys;

#[derive(Debug, Serialize)]
pub struct BadBlock {
    pub block: u64,
    pub offset: u64,
    pub error: String,
    /// Paths of the entries whose data use this block.
    pub files: Vec<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct Report {
    pub archive: String,
    pub ok: bool,
    pub blocks: u64,
    pub frames_checked: u64,
    pub bytes_checked: u64,
    pub bad_blocks: Vec<BadBlock>,
    /// With --source: every difference found, "path: what".
    pub differences: Vec<String>,
    pub entries_compared: u64,
}

/// Where a block's frame is: (pack id or none for this archive, offset).
type FrameKey = (Option<[u8; 16]>, u64);

fn frame_key(a: &Archive, i: usize) -> Option<FrameKey> {
    match a.index.blocks[i].loc {
        BlockLoc::Zero => None,
        BlockLoc::Frame { offset, .. } => Some((None, offset)),
        BlockLoc::External { source, offset, .. } => {
            Some((Some(a.index.sources[source as usize].archive_id), offset))
        }
    }
}

pub fn verify(path: &Path, source: Option<&Path>, threads: usize) -> Result<Report> {
    let mut a = crate::repo::handle::open_archive(path)?;
    // Every content hash, not only the frame checks that reading relies on.
    a.check_content = true;
    let mut r = Report {
        archive: path.display().to_string(),
        blocks: a.index.blocks.len() as u64,
        ..Default::default()
    };
    // Each distinct frame once.
    let mut seen = HashSet::new();
    let mut list = Vec::new();
    for (i, b) in a.index.blocks.iter().enumerate() {
        // Blocks sharing a frame are decoded once, unless they disagree on
        // what it holds or on its frame check.
        let check = a.frame_check_of(i as u64);
        if let Some(k) = frame_key(&a, i)
            && seen.insert((k, b.len, b.hash, check))
        {
            list.push(i as u64);
        }
    }
    let mut bad: Vec<(u64, String)> = Vec::new();
    for_each_block(&a, &list, threads, |b, data| {
        match data {
            Ok(d) => {
                r.frames_checked += 1;
                r.bytes_checked += d.len() as u64;
            }
            Err(e) => bad.push((b, e.to_string())),
        }
        Ok(())
    })?;
    if !bad.is_empty() {
        let bad_offsets: HashMap<FrameKey, usize> = bad
            .iter()
            .enumerate()
            .filter_map(|(k, (b, _))| Some((frame_key(&a, *b as usize)?, k)))
            .collect();
        let users = a.block_users();
        let paths = a.paths();
        let mut files: Vec<BTreeSet<String>> = vec![BTreeSet::new(); bad.len()];
        for (i, blk) in a.index.blocks.iter().enumerate() {
            let _ = blk;
            if let Some(key) = frame_key(&a, i)
                && let Some(&k) = bad_offsets.get(&key)
            {
                for &ino in &users[i] {
                    files[k].insert(String::from_utf8_lossy(&paths[ino as usize]).into_owned());
                }
            }
        }
        for ((b, e), f) in bad.into_iter().zip(files) {
            r.bad_blocks.push(BadBlock {
                block: b,
                offset: a.block_offset(b),
                error: e,
                files: f.into_iter().collect(),
            });
        }
    }
    if let Some(src) = source {
        compare(&a, src, threads, &mut r)?;
    }
    r.ok = r.bad_blocks.is_empty() && r.differences.is_empty();
    Ok(r)
}

fn compare(a: &Archive, src: &Path, threads: usize, r: &mut Report) -> Result<()> {
    let paths = a.paths();
    let volume = a.meta().mode == Mode::Volume;
    let src_of = |ino: u32| -> PathBuf {
        if volume && ino != 0 {
            src.to_path_buf()
        } else {
            src.join(sys::os(&paths[ino as usize]))
        }
    };
    let show = |ino: u32| -> String {
        let p = &paths[ino as usize];
        if p.is_empty() {
            ".".into()
        } else {
            String::from_utf8_lossy(p).into_owned()
        }
    };
    let mut items = Vec::new();
    let mut skip = vec![false; a.index.inodes.len()];
    let excl = crate::snapshot::walk::Excludes::new(&a.meta().excludes).ok();
    let root_dev = std::fs::metadata(src).ok().map(|m| m.dev());
    // Metadata.
    for (i, ino) in a.index.inodes.iter().enumerate() {
        let i = i as u32;
        if volume {
            if let Body::File { size, extents } = &ino.body {
                match crate::snapshot::volume::volume_size(src) {
                    Ok(s) if s == *size => items.extend(extents.iter().map(|e| (i, *e))),
                    Ok(s) => r.differences.push(format!(
                        "{}: size {size} in the archive, {s} in the source",
                        show(i)
                    )),
                    Err(e) => r.differences.push(format!("{}: {e}", show(i))),
                }
            }
            continue;
        }
        r.entries_compared += 1;
        let p = src_of(i);
        let md = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                r.differences
                    .push(format!("{}: missing in the source ({e})", show(i)));
                skip[i as usize] = true;
                continue;
            }
        };
        let mut d = Vec::new();
        let ft = md.file_type();
        let kind_ok = match &ino.body {
            Body::Dir { .. } => ft.is_dir(),
            Body::File { size, extents } => {
                if ft.is_file() && md.size() != *size {
                    d.push(format!(
                        "size {} in the archive, {} in the source",
                        size,
                        md.size()
                    ));
                }
                if ft.is_file() {
                    items.extend(extents.iter().map(|e| (i, *e)));
                }
                ft.is_file()
            }
            Body::Symlink { target } => {
                if ft.is_symlink()
                    && let Ok(t) = std::fs::read_link(&p)
                    && t.as_os_str().as_bytes() != &target[..]
                {
                    d.push("symlink target differs".into());
                }
                ft.is_symlink()
            }
            Body::BlockDev { rdev } | Body::CharDev { rdev } => {
                if md.rdev() != *rdev {
                    d.push("device number differs".into());
                }
                ft.is_block_device() || ft.is_char_device()
            }
            Body::Fifo => ft.is_fifo(),
            Body::Socket => ft.is_socket(),
        };
        if !kind_ok {
            r.differences.push(format!("{}: type differs", show(i)));
            skip[i as usize] = true;
            continue;
        }
        if md.mode() & 0o7777 != ino.perm {
            d.push(format!(
                "mode {:o} in the archive, {:o} in the source",
                ino.perm,
                md.mode() & 0o7777
            ));
        }
        if md.uid() != ino.uid || md.gid() != ino.gid {
            d.push(format!(
                "owner {}:{} in the archive, {}:{} in the source",
                ino.uid,
                ino.gid,
                md.uid(),
                md.gid()
            ));
        }
        if !ft.is_dir() && (md.mtime() != ino.mtime.sec || md.mtime_nsec() as u32 != ino.mtime.nsec)
        {
            d.push("mtime differs".into());
        }
        if let Ok(x) = sys::read_xattrs(&p)
            && x[..] != ino.xattrs[..]
        {
            d.push("extended attributes differ".into());
        }
        if !ft.is_dir() && ino.nlink > 1 && md.nlink() < ino.nlink as u64 {
            d.push(format!(
                "{} links in the archive, {} in the source",
                ino.nlink,
                md.nlink()
            ));
        }
        for x in d {
            r.differences.push(format!("{}: {x}", show(i)));
        }
        let other_fs = a.meta().one_file_system && root_dev.is_some_and(|d| d != md.dev());
        if let (Body::Dir { .. }, false) = (&ino.body, other_fs) {
            // Entries only in the source (excluded ones aside).
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    let name = e.file_name();
                    if a.lookup(i, name.as_bytes()).is_none() {
                        let rel = Path::new(sys::os(&paths[i as usize])).join(&name);
                        if excl.as_ref().is_some_and(|x| x.excluded(&rel, &name)) {
                            continue;
                        }
                        r.differences
                            .push(format!("{}: only in the source", rel.display()));
                    }
                }
            }
        }
    }
    items.retain(|(i, _)| !skip[*i as usize]);
    // Content.
    let mut open: HashMap<u32, Option<File>> = HashMap::new();
    let mut differs: BTreeSet<u32> = BTreeSet::new();
    let mut buf = Vec::new();
    for_each_piece(a, items, threads, |p| {
        let f = open
            .entry(p.ino)
            .or_insert_with(|| File::open(src_of(p.ino)).ok());
        if let (Ok(bytes), Some(f)) = (p.data, f.as_ref()) {
            buf.resize(bytes.len(), 0);
            let same = f.read_exact_at(&mut buf, p.offset).is_ok() && buf == bytes;
            if !same {
                differs.insert(p.ino);
            }
        }
        if p.last {
            open.remove(&p.ino);
        }
        Ok(())
    })?;
    // What the archive holds as holes must read as zeros in the source.
    for (i, ino) in a.index.inodes.iter().enumerate() {
        let i = i as u32;
        if let Body::File { size, extents } = &ino.body
            && !skip[i as usize]
            && !differs.contains(&i)
            && extents.iter().map(|e| e.len).sum::<u64>() < *size
            && !holes_are_zero(&src_of(i), *size, extents)
        {
            differs.insert(i);
        }
    }
    for ino in differs {
        r.differences
            .push(format!("{}: content differs", show(ino)));
    }
    Ok(())
}

/// Whether the source file reads as zeros wherever `extents` leave a hole.
/// Only the source's data regions are read: its own holes are zeros.
fn holes_are_zero(path: &Path, size: u64, extents: &[Extent]) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let Ok(regions) = sys::data_regions(&f, size) else {
        return false;
    };
    let mut buf = vec![0u8; 1 << 20];
    for (start, len) in regions {
        let mut pos = start;
        let end = start + len;
        while pos < end {
            // Skip what an extent covers (compared already).
            if let Some(e) = extents
                .iter()
                .find(|e| e.offset <= pos && pos < e.offset + e.len)
            {
                pos = e.offset + e.len;
                continue;
            }
            let next = extents
                .iter()
                .map(|e| e.offset)
                .filter(|&o| o > pos)
                .min()
                .unwrap_or(end);
            let n = (next.min(end) - pos).min(buf.len() as u64) as usize;
            if f.read_exact_at(&mut buf[..n], pos).is_err() || buf[..n].iter().any(|&b| b != 0) {
                return false;
            }
            pos += n as u64;
        }
    }
    true
}
