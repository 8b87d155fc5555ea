//! File mode, first pass: walk the source tree in a stable order (names
//! sorted bytewise, each directory's entries together) and record every
//! entry's metadata. Regular files are listed for the read pass.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::archive::{Body, Dirent, Inode, Stats, Time};
use crate::error::{Error, IoContext, Result};
use crate::sys;

/// A regular file the read pass will store.
pub struct FileJob {
    pub inode: u32,
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
    /// Fewer blocks allocated than the size needs: look for holes.
    pub sparse: bool,
}

pub struct Tree {
    pub inodes: Vec<Inode>,
    pub dirents: Vec<Dirent>,
    pub files: Vec<FileJob>,
    pub warnings: Vec<String>,
    pub stats: Stats,
    pub uids: BTreeMap<u32, ()>,
    pub gids: BTreeMap<u32, ()>,
    pub total_bytes: u64,
}

pub struct Excludes {
    by_name: GlobSet,
    by_path: GlobSet,
}

impl Excludes {
    /// A pattern with a `/` matches the path relative to the source root;
    /// one without matches an entry's name at any depth (as rsync and tar do).
    pub fn new(patterns: &[String]) -> Result<Excludes> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for p in patterns {
            let (set, pat) = if p.contains('/') {
                (
                    &mut by_path,
                    p.trim_start_matches('/').trim_end_matches('/'),
                )
            } else {
                (&mut by_name, p.as_str())
            };
            let g = GlobBuilder::new(pat)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::Other(format!("--exclude {p:?}: {e}")))?;
            set.add(g);
        }
        Ok(Excludes {
            by_name: by_name.build().map_err(|e| Error::Other(e.to_string()))?,
            by_path: by_path.build().map_err(|e| Error::Other(e.to_string()))?,
        })
    }

    pub fn excluded(&self, rel: &Path, name: &std::ffi::OsStr) -> bool {
        self.by_name.is_match(Path::new(name)) || self.by_path.is_match(rel)
    }
}

pub fn time(sec: i64, nsec: i64) -> Time {
    Time {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

fn inode_from(md: &std::fs::Metadata, body: Body, xattrs: Vec<crate::archive::Xattr>) -> Inode {
    Inode {
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        nlink: 1,
        mtime: time(md.mtime(), md.mtime_nsec()),
        atime: time(md.atime(), md.atime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
        xattrs,
        body,
    }
}

/// Counts entries below `root`, stopping once the count exceeds `limit`.
pub fn count_entries(root: &Path, limit: u64) -> u64 {
    let mut n = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(names) = sys::read_dir_names(&dir) else {
            continue;
        };
        for (name, ft) in names {
            n += 1;
            if n > limit {
                return n;
            }
            let p = dir.join(name);
            let is_dir = match ft {
                rustix::fs::FileType::Directory => true,
                rustix::fs::FileType::Unknown => {
                    std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir())
                }
                _ => false,
            };
            if is_dir {
                stack.push(p);
            }
        }
    }
    n
}

pub fn walk(root: &Path, excludes: &Excludes, one_file_system: bool) -> Result<Tree> {
    let rmd = std::fs::metadata(root).at(root)?;
    if !rmd.is_dir() {
        return Err(Error::Other(format!("{}: not a directory", root.display())));
    }
    let root_dev = rmd.dev();
    let mut t = Tree {
        inodes: Vec::new(),
        dirents: Vec::new(),
        files: Vec::new(),
        warnings: Vec::new(),
        stats: Stats::default(),
        uids: BTreeMap::new(),
        gids: BTreeMap::new(),
        total_bytes: 0,
    };
    let xattrs = sys::read_xattrs(root).unwrap_or_else(|e| {
        t.warnings
            .push(format!("{}: extended attributes: {e}", root.display()));
        Vec::new()
    });
    t.inodes
        .push(inode_from(&rmd, Body::Dir { first: 0, count: 0 }, xattrs));
    t.uids.insert(rmd.uid(), ());
    t.gids.insert(rmd.gid(), ());
    t.stats.dirs += 1;
    let mut links: HashMap<(u64, u64), u32> = HashMap::new();
    // (inode, absolute path, path relative to root)
    let mut stack: Vec<(u32, PathBuf, PathBuf)> = vec![(0, root.to_path_buf(), PathBuf::new())];
    while let Some((dir_ino, dir_path, rel)) = stack.pop() {
        let mut names: Vec<OsString> = match sys::read_dir_names(&dir_path) {
            Ok(v) => v.into_iter().map(|(n, _)| n).collect(),
            Err(e) => {
                t.warnings
                    .push(format!("{}: reading directory: {e}", dir_path.display()));
                Vec::new()
            }
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let first = t.dirents.len() as u32;
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir_path.join(&name);
            let crel = rel.join(&name);
            if excludes.excluded(&crel, &name) {
                continue;
            }
            let md = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    t.warnings.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let ft = md.file_type();
            if !ft.is_dir()
                && md.nlink() > 1
                && let Some(&existing) = links.get(&(md.dev(), md.ino()))
            {
                t.inodes[existing as usize].nlink += 1;
                t.stats.hardlinks += 1;
                t.dirents.push(Dirent {
                    name: name.into_vec(),
                    inode: existing,
                });
                continue;
            }
            let xattrs = sys::read_xattrs(&path).unwrap_or_else(|e| {
                t.warnings
                    .push(format!("{}: extended attributes: {e}", path.display()));
                Vec::new()
            });
            let id = t.inodes.len() as u32;
            let body = if ft.is_dir() {
                t.stats.dirs += 1;
                if !one_file_system || md.dev() == root_dev {
                    subdirs.push((id, path.clone(), crel));
                }
                Body::Dir { first: 0, count: 0 }
            } else if ft.is_file() {
                t.stats.files += 1;
                t.total_bytes += md.size();
                t.files.push(FileJob {
                    inode: id,
                    path: path.clone(),
                    dev: md.dev(),
                    ino: md.ino(),
                    size: md.size(),
                    mtime: time(md.mtime(), md.mtime_nsec()),
                    ctime: time(md.ctime(), md.ctime_nsec()),
                    sparse: md.blocks().saturating_mul(512) < md.size(),
                });
                Body::File {
                    size: md.size(),
                    extents: Vec::new(),
                }
            } else if ft.is_symlink() {
                t.stats.symlinks += 1;
                match std::fs::read_link(&path) {
                    Ok(target) => Body::Symlink {
                        target: target.into_os_string().into_vec(),
                    },
                    Err(e) => {
                        t.warnings
                            .push(format!("{}: reading symlink: {e}", path.display()));
                        continue;
                    }
                }
            } else if ft.is_block_device() {
                t.stats.specials += 1;
                Body::BlockDev { rdev: md.rdev() }
            } else if ft.is_char_device() {
                t.stats.specials += 1;
                Body::CharDev { rdev: md.rdev() }
            } else if ft.is_fifo() {
                t.stats.specials += 1;
                Body::Fifo
            } else if ft.is_socket() {
                t.stats.specials += 1;
                Body::Socket
            } else {
                t.warnings
                    .push(format!("{}: unknown file type, skipped", path.display()));
                continue;
            };
            if !ft.is_dir() && md.nlink() > 1 {
                links.insert((md.dev(), md.ino()), id);
            }
            t.uids.insert(md.uid(), ());
            t.gids.insert(md.gid(), ());
            t.inodes.push(inode_from(&md, body, xattrs));
            t.dirents.push(Dirent {
                name: name.into_vec(),
                inode: id,
            });
        }
        let count = t.dirents.len() as u32 - first;
        t.inodes[dir_ino as usize].body = Body::Dir { first, count };
        // Reversed, so that the first subdirectory is walked first.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(t)
}

/// Removes inodes the read pass could not store, with their entries.
pub fn drop_inodes(t: &mut Tree, failed: &[u32]) {
    if failed.is_empty() {
        return;
    }
    let mut gone = vec![false; t.inodes.len()];
    for &i in failed {
        gone[i as usize] = true;
    }
    let mut map = vec![u32::MAX; t.inodes.len()];
    let mut next = 0u32;
    for (i, g) in gone.iter().enumerate() {
        if !g {
            map[i] = next;
            next += 1;
        }
    }
    let old_dirents = std::mem::take(&mut t.dirents);
    let old_inodes = std::mem::take(&mut t.inodes);
    for (i, mut ino) in old_inodes.into_iter().enumerate() {
        if gone[i] {
            continue;
        }
        if let Body::Dir { first, count } = ino.body {
            let nf = t.dirents.len() as u32;
            for d in &old_dirents[first as usize..(first + count) as usize] {
                if !gone[d.inode as usize] {
                    t.dirents.push(Dirent {
                        name: d.name.clone(),
                        inode: map[d.inode as usize],
                    });
                }
            }
            ino.body = Body::Dir {
                first: nf,
                count: t.dirents.len() as u32 - nf,
            };
        }
        t.inodes.push(ino);
    }
    for f in &mut t.files {
        f.inode = map[f.inode as usize];
    }
    t.files.retain(|f| f.inode != u32::MAX);
}

pub fn name_of(p: &Path) -> Vec<u8> {
    p.file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_else(|| b"volume".to_vec())
}
