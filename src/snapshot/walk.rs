//! File mode, first pass: walk the source tree in a stable order (names
//! sorted bytewise, each directory's entries together) and record every
//! entry's metadata. Regular files are handed to the read pass as found.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::inodes::Inodes;
use crate::archive::{Body, Inode, Stats, Time};
use crate::error::{Error, IoContext, Result};
use crate::sys;

/// The tree's directory entries, in `Index::dirents` order, their names
/// packed in one buffer: 12 bytes and the name's bytes an entry, where a
/// [`crate::archive::Dirent`] takes 32 and a heap block of its own for the
/// name (32 bytes or more). Encodes as `Vec<Dirent>` does.
#[derive(Default)]
pub struct Dirents {
    names: Vec<u8>,
    /// Each entry's name's end in `names` (it starts where the previous
    /// one ends), and its inode: two lists, as a list of pairs would pad
    /// each to 16 bytes.
    ends: Vec<u64>,
    inodes: Vec<u32>,
}

impl Dirents {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn push(&mut self, name: &[u8], inode: u32) {
        self.names.extend_from_slice(name);
        self.ends.push(self.names.len() as u64);
        self.inodes.push(inode);
    }

    /// Entry `i`: its name and inode.
    pub fn get(&self, i: u32) -> (&[u8], u32) {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        let end = self.ends[i];
        (&self.names[start as usize..end as usize], self.inodes[i])
    }
}

impl serde::Serialize for Dirents {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        /// Field for field a `Dirent`, borrowing its name.
        #[derive(serde::Serialize)]
        struct DirentRef<'a> {
            name: &'a [u8],
            inode: u32,
        }
        s.collect_seq((0..self.len() as u32).map(|i| {
            let (name, inode) = self.get(i);
            DirentRef { name, inode }
        }))
    }
}

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
    pub inodes: Inodes,
    pub dirents: Dirents,
    /// Where the walk hands each regular file, in walk order, as soon as
    /// it is found: the read pass runs alongside it.
    pub files: Option<crossbeam_channel::Sender<FileJob>>,
    pub warnings: Vec<String>,
    pub stats: Stats,
    pub uids: BTreeMap<u32, ()>,
    pub gids: BTreeMap<u32, ()>,
}

impl Tree {
    /// No entries yet.
    pub fn empty() -> Tree {
        Tree {
            inodes: Inodes::default(),
            dirents: Dirents::default(),
            files: None,
            warnings: Vec::new(),
            stats: Stats::default(),
            uids: BTreeMap::new(),
            gids: BTreeMap::new(),
        }
    }
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

    /// As [`Excludes::excluded`], making the relative path only when a
    /// pattern needs it.
    fn excluded_with(&self, rel: impl FnOnce() -> PathBuf, name: &OsStr) -> bool {
        (!self.by_name.is_empty() && self.by_name.is_match(Path::new(name)))
            || (!self.by_path.is_empty() && self.by_path.is_match(rel()))
    }
}

pub fn time(sec: i64, nsec: i64) -> Time {
    Time {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

fn inode_from_stat(md: &sys::Stat, body: Body, xattrs: Vec<crate::archive::Xattr>) -> Inode {
    Inode {
        perm: md.mode & 0o7777,
        uid: md.uid,
        gid: md.gid,
        nlink: 1,
        mtime: time(md.mtime.0, md.mtime.1),
        atime: time(md.atime.0, md.atime.1),
        ctime: time(md.ctime.0, md.ctime.1),
        xattrs: xattrs.into(),
        body,
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
        xattrs: xattrs.into(),
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

/// Walks `root`, sending each regular file to `files` as soon as it is
/// found, in walk order, so that reading can start while the walk goes
/// on; the channel is closed when the walk ends.
pub fn walk(
    root: &Path,
    excludes: &Excludes,
    one_file_system: bool,
    files: crossbeam_channel::Sender<FileJob>,
) -> Result<Tree> {
    let rmd = std::fs::metadata(root).at(root)?;
    if !rmd.is_dir() {
        return Err(Error::Other(format!("{}: not a directory", root.display())));
    }
    let root_dev = rmd.dev();
    let mut t = Tree {
        files: Some(files),
        ..Tree::empty()
    };
    let xattrs = sys::read_xattrs(root).unwrap_or_else(|e| {
        t.warnings
            .push(format!("{}: extended attributes: {e}", root.display()));
        Vec::new()
    });
    t.inodes
        .push(&inode_from(&rmd, Body::Dir { first: 0, count: 0 }, xattrs));
    t.uids.insert(rmd.uid(), ());
    t.gids.insert(rmd.gid(), ());
    t.stats.dirs += 1;
    let mut links: HashMap<(u64, u64), u32> = HashMap::new();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    std::thread::scope(|s| {
        // Helper threads scan the directories the walk will come to next
        // (list, sort, lstat, extended attributes, symlink targets), so
        // that these system calls run on every core. The walk takes the
        // scans in its own order, so the tree does not depend on timing.
        let (req_tx, req_rx) = crossbeam_channel::unbounded::<ScanRequest>();
        if threads > 1 {
            for _ in 0..threads {
                let req_rx = req_rx.clone();
                std::thread::Builder::new()
                    .name("hbb-walk".into())
                    .spawn_scoped(s, move || {
                        for r in req_rx {
                            let _ = r
                                .reply
                                .send(scan(&r.dir, &r.rel, false, excludes, SCAN_AHEAD));
                        }
                    })
                    .expect("spawn walk thread");
            }
        }
        drop(req_rx);
        let ahead = if threads > 1 { 4 * threads } else { 0 };
        let mut stack: Vec<Pending> = vec![Pending {
            dir_no: 0,
            dir: root.to_path_buf(),
            rel: PathBuf::new(),
            scan: None,
        }];
        while let Some(p) = stack.pop() {
            let scanned = match p.scan.and_then(|rx| rx.recv().ok()) {
                Some(r) => r,
                None => scan(&p.dir, &p.rel, p.dir_no == 0, excludes, 0),
            };
            let first = t.dirents.len() as u32;
            let mut subdirs = Vec::new();
            match scanned {
                Ok(Scan { dfd, done, rest }) => {
                    let more = rest.filter_map(|n| look(dfd.as_fd(), &p.dir, &p.rel, n, excludes));
                    for e in done.into_iter().chain(more) {
                        add_entry(
                            &mut t,
                            &mut links,
                            e,
                            &p.rel,
                            one_file_system,
                            root_dev,
                            &mut subdirs,
                        );
                    }
                }
                Err(e) => t
                    .warnings
                    .push(format!("{}: reading directory: {e}", p.dir.display())),
            }
            let count = t.dirents.len() as u32 - first;
            t.inodes.set_dir(p.dir_no, first, count);
            // Reversed, so that the first subdirectory is walked first.
            stack.extend(subdirs.into_iter().rev());
            // Have the helpers scan the directories next in line.
            for q in stack.iter_mut().rev().take(ahead) {
                if q.scan.is_none() {
                    let (tx, rx) = crossbeam_channel::bounded(1);
                    if req_tx
                        .send(ScanRequest {
                            dir: q.dir.clone(),
                            rel: q.rel.clone(),
                            reply: tx,
                        })
                        .is_ok()
                    {
                        q.scan = Some(rx);
                    }
                }
            }
        }
        drop(req_tx);
    });
    t.files = None;
    Ok(t)
}

/// A directory still to walk, and its scan if a helper was asked for it.
struct Pending {
    /// Its number among the directories (`Inodes::set_dir`); the root's is 0.
    dir_no: u32,
    /// The absolute path, and the path relative to the root.
    dir: PathBuf,
    rel: PathBuf,
    scan: Option<crossbeam_channel::Receiver<std::io::Result<Scan>>>,
}

struct ScanRequest {
    dir: PathBuf,
    rel: PathBuf,
    reply: crossbeam_channel::Sender<std::io::Result<Scan>>,
}

/// One entry of a directory, as its scan found it. Errors are kept for the
/// walk to report (or not: a second hard link's attributes are not used).
struct Scanned {
    name: CString,
    path: PathBuf,
    stat: std::io::Result<sys::Stat>,
    xattrs: std::io::Result<Vec<crate::archive::Xattr>>,
    link: Option<std::io::Result<Vec<u8>>>,
}

/// A directory, opened and listed (sorted bytewise), with its first
/// entries looked up; the walk looks up the `rest` itself as it goes, so
/// that a huge directory is not held in memory twice.
struct Scan {
    dfd: OwnedFd,
    done: Vec<Scanned>,
    rest: std::vec::IntoIter<CString>,
}

/// How many entries of a directory a helper looks up ahead of the walk.
const SCAN_AHEAD: usize = 4096;

/// Opens and lists the directory `dir` and looks up its first `ahead`
/// entries. Nothing but the directory is opened.
fn scan(
    dir: &Path,
    rel: &Path,
    follow: bool,
    excludes: &Excludes,
    ahead: usize,
) -> std::io::Result<Scan> {
    let dfd = sys::open_dir(dir, follow)?;
    let mut names = sys::read_dir_fd(dfd.as_fd())?;
    names.sort_unstable_by(|a, b| a.to_bytes().cmp(b.to_bytes()));
    let mut rest = names.into_iter();
    let mut done = Vec::new();
    for name in rest.by_ref().take(ahead) {
        if let Some(e) = look(dfd.as_fd(), dir, rel, name, excludes) {
            done.push(e);
        }
    }
    Ok(Scan { dfd, done, rest })
}

/// Looks up the entry `name` of the directory `dfd` (whose path is `dir`,
/// `rel` from the root): one path component per call, not the whole path
/// again. `None` if it is excluded.
fn look(
    dfd: BorrowedFd<'_>,
    dir: &Path,
    rel: &Path,
    name: CString,
    excludes: &Excludes,
) -> Option<Scanned> {
    let os = OsStr::from_bytes(name.to_bytes());
    if excludes.excluded_with(|| rel.join(os), os) {
        return None;
    }
    let path = join_exact(dir, os);
    let stat = sys::stat_at(dfd, &name);
    let (xattrs, link) = match &stat {
        Ok(md) => (
            sys::read_xattrs_at(dfd, &name, &path),
            (md.kind() == libc::S_IFLNK).then(|| sys::read_link_at(dfd, &name)),
        ),
        Err(_) => (Ok(Vec::new()), None),
    };
    Some(Scanned {
        name,
        path,
        stat,
        xattrs,
        link,
    })
}

/// `dir.join(name)` for a plain name, without spare capacity: it is kept
/// for every regular file until the end of the snapshot.
fn join_exact(dir: &Path, name: &OsStr) -> PathBuf {
    let d = dir.as_os_str().as_bytes();
    let sep = !d.ends_with(b"/");
    let mut v = Vec::with_capacity(d.len() + usize::from(sep) + name.len());
    v.extend_from_slice(d);
    if sep {
        v.push(b'/');
    }
    v.extend_from_slice(name.as_bytes());
    PathBuf::from(std::ffi::OsString::from_vec(v))
}

/// Records one scanned entry in the tree (a directory to descend into goes
/// to `subdirs`).
fn add_entry(
    t: &mut Tree,
    links: &mut HashMap<(u64, u64), u32>,
    e: Scanned,
    rel: &Path,
    one_file_system: bool,
    root_dev: u64,
    subdirs: &mut Vec<Pending>,
) {
    let Scanned {
        name,
        path,
        stat,
        xattrs,
        link,
    } = e;
    let md = match stat {
        Ok(m) => m,
        Err(e) => {
            t.warnings.push(format!("{}: {e}", path.display()));
            return;
        }
    };
    let kind = md.kind();
    if kind != libc::S_IFDIR
        && md.nlink > 1
        && let Some(&existing) = links.get(&(md.dev, md.ino))
    {
        t.inodes.add_link(existing);
        t.stats.hardlinks += 1;
        t.dirents.push(name.as_bytes(), existing);
        return;
    }
    let xattrs = xattrs.unwrap_or_else(|e| {
        t.warnings
            .push(format!("{}: extended attributes: {e}", path.display()));
        Vec::new()
    });
    let id = t.inodes.len() as u32;
    let body = match kind {
        libc::S_IFDIR => {
            t.stats.dirs += 1;
            if !one_file_system || md.dev == root_dev {
                subdirs.push(Pending {
                    dir_no: t.inodes.next_dir(),
                    dir: path,
                    rel: rel.join(OsStr::from_bytes(name.to_bytes())),
                    scan: None,
                });
            }
            Body::Dir { first: 0, count: 0 }
        }
        libc::S_IFREG => {
            t.stats.files += 1;
            let job = FileJob {
                inode: id,
                path,
                dev: md.dev,
                ino: md.ino,
                size: md.size,
                mtime: time(md.mtime.0, md.mtime.1),
                ctime: time(md.ctime.0, md.ctime.1),
                sparse: md.blocks.saturating_mul(512) < md.size,
            };
            // A reader that stopped (the snapshot failed) is ignored: the
            // walk ends soon anyway.
            if let Some(tx) = &t.files {
                let _ = tx.send(job);
            }
            Body::File {
                size: md.size,
                extents: Box::default(),
            }
        }
        libc::S_IFLNK => {
            t.stats.symlinks += 1;
            match link {
                Some(Ok(target)) => Body::Symlink {
                    target: target.into(),
                },
                Some(Err(e)) => {
                    t.warnings
                        .push(format!("{}: reading symlink: {e}", path.display()));
                    return;
                }
                None => unreachable!("a symlink's target is read with its lstat"),
            }
        }
        libc::S_IFBLK => {
            t.stats.specials += 1;
            Body::BlockDev { rdev: md.rdev }
        }
        libc::S_IFCHR => {
            t.stats.specials += 1;
            Body::CharDev { rdev: md.rdev }
        }
        libc::S_IFIFO => {
            t.stats.specials += 1;
            Body::Fifo
        }
        libc::S_IFSOCK => {
            t.stats.specials += 1;
            Body::Socket
        }
        _ => {
            t.warnings
                .push(format!("{}: unknown file type, skipped", path.display()));
            return;
        }
    };
    if kind != libc::S_IFDIR && md.nlink > 1 {
        links.insert((md.dev, md.ino), id);
    }
    t.uids.insert(md.uid, ());
    t.gids.insert(md.gid, ());
    t.inodes.push(&inode_from_stat(&md, body, xattrs));
    t.dirents.push(name.as_bytes(), id);
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
    t.inodes.drop_marked(&gone, &mut t.dirents);
}

pub fn name_of(p: &Path) -> Vec<u8> {
    p.file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_else(|| b"volume".to_vec())
}

#[cfg(test)]
mod tests {
    use super::Dirents;
    use crate::archive::Dirent;

    #[test]
    fn packed_dirents_encode_as_a_vec_of_dirent() {
        let names: [&[u8]; 5] = [b"a", b"", b"\xffnot utf-8", &[b'x'; 300], b"z"];
        let mut packed = Dirents::default();
        let mut plain = Vec::new();
        for (i, n) in names.iter().enumerate() {
            packed.push(n, i as u32 * 1000);
            plain.push(Dirent {
                name: (*n).into(),
                inode: i as u32 * 1000,
            });
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(packed.get(i as u32), (*n, i as u32 * 1000));
        }
        assert_eq!(
            postcard::to_stdvec(&packed).unwrap(),
            postcard::to_stdvec(&plain).unwrap()
        );
        let back: Vec<Dirent> =
            postcard::from_bytes(&postcard::to_stdvec(&packed).unwrap()).unwrap();
        assert_eq!(back, plain);
    }
}
