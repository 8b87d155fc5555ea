//! `hbb restore`: the backup run in reverse.
//!
//! ```text
//! tree pass:  directories (private until the end), symlinks, devices, fifos, empty files
//! data pass:  blocks decoded in parallel, in stream order ─► each file's extents written
//!             (files created when their first byte comes, finished when their last does)
//! link pass:  hard links to the files just written
//! last:       directories' owners, modes and times, deepest first
//! ```
//!
//! Every entry is created relative to a directory descriptor that restore
//! itself created or opened without following symlinks (`O_NOFOLLOW`), and
//! every name is checked, so nothing is ever written outside DEST whatever
//! the archive says. A file whose data touch a damaged block is removed and
//! reported; every other file is restored.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::archive::decode::{Block, Span, for_each_span};
use crate::archive::*;
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::sys;

pub struct Options {
    pub archive: PathBuf,
    pub dest: PathBuf,
    pub paths: Vec<Vec<u8>>,
    pub threads: usize,
    pub numeric_owner: bool,
    pub overwrite: bool,
    pub quiet: bool,
}

#[derive(Default, Debug)]
pub struct Report {
    pub entries: u64,
    pub bytes: u64,
    /// Entries not restored, or restored without some metadata: path: why.
    pub problems: Vec<String>,
}

pub fn restore(o: &Options) -> Result<Report> {
    let a = crate::repo::handle::open_archive(&o.archive)?;
    let volume_target = a.meta().mode == crate::archive::Mode::Volume && o.paths.is_empty() && {
        match std::fs::metadata(&o.dest) {
            Ok(md) => !md.is_dir(),
            Err(_) => true,
        }
    };
    let r = Restorer::new(&a, o, !volume_target)?;
    if volume_target {
        r.restore_volume(&o.dest)?;
    } else {
        r.restore_tree()?;
    }
    let mut report = r.report.into_inner().expect("report lock");
    report.entries = r.entries.into_inner();
    report.bytes += r.bytes.into_inner();
    report.problems.sort();
    Ok(report)
}

struct Restorer<'a> {
    a: &'a Archive,
    o: &'a Options,
    report: Mutex<Report>,
    entries: AtomicU64,
    bytes: AtomicU64,
    root: u32,
    /// First (parent, name) seen for each inode within the selection, set
    /// by the tree pass (see `place`); the data pass waits for it.
    place: Vec<AtomicU64>,
    /// The tree pass is over: an inode not placed by now never will be.
    tree_done: AtomicBool,
    /// Writers waiting for the tree pass, and where they wait.
    waiters: AtomicUsize,
    tree_wait: (Mutex<()>, Condvar),
    /// DEST, for a tree restore.
    dest: Option<OwnedFd>,
    is_root: bool,
    uid_map: HashMap<u32, u32>,
    gid_map: HashMap<u32, u32>,
    /// Paths for reports, made at the first problem.
    paths: OnceLock<Vec<Vec<u8>>>,
}

/// One thread's directory descriptors by inode, opened through their
/// parents from DEST down, each `O_NOFOLLOW | O_DIRECTORY`, and reopened
/// the same way when evicted. Each thread has its own: no lock, no `dup`.
#[derive(Default)]
struct DirCache {
    open: HashMap<u32, OwnedFd>,
}

const DIR_FD_CACHE: usize = 256;

impl<'a> Restorer<'a> {
    fn new(a: &'a Archive, o: &'a Options, tree: bool) -> Result<Restorer<'a>> {
        let n = a.index.inodes.len();
        let is_root = sys::is_root();
        let mut uid_map = HashMap::new();
        let mut gid_map = HashMap::new();
        if !o.numeric_owner {
            for u in &a.meta().users {
                if let Some(id) = sys::uid_by_name(&u.name) {
                    uid_map.insert(u.id, id);
                }
            }
            for g in &a.meta().groups {
                if let Some(id) = sys::gid_by_name(&g.name) {
                    gid_map.insert(g.id, id);
                }
            }
        }
        Ok(Restorer {
            a,
            o,
            report: Mutex::new(Report::default()),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            root: 0,
            place: (0..n).map(|_| AtomicU64::new(NOWHERE)).collect(),
            tree_done: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
            tree_wait: (Mutex::new(()), Condvar::new()),
            dest: if tree {
                Some(open_dest(&o.dest)?)
            } else {
                None
            },
            is_root,
            uid_map,
            gid_map,
            paths: OnceLock::new(),
        })
    }

    fn path_of(&self, ino: u32) -> String {
        let p = &self.paths.get_or_init(|| self.a.paths())[ino as usize];
        self.o.dest.join(sys::os(p)).display().to_string()
    }

    fn problem(&self, ino: u32, msg: impl std::fmt::Display) {
        let p = self.path_of(ino);
        self.report
            .lock()
            .expect("report lock")
            .problems
            .push(format!("{p}: {msg}"));
    }

    fn place(&self, ino: u32) -> Option<(u32, u32)> {
        match self.place[ino as usize].load(Ordering::SeqCst) {
            NOWHERE => None,
            v => Some(((v >> 32) as u32, v as u32)),
        }
    }

    fn set_place(&self, ino: u32, parent: u32, dirent: u32) {
        self.place[ino as usize].store((parent as u64) << 32 | dirent as u64, Ordering::SeqCst);
    }

    /// Wakes writers waiting for the tree pass (see `wait_placed`).
    fn tree_progress(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.tree_wait.0.lock().expect("tree lock");
            self.tree_wait.1.notify_all();
        }
    }

    fn tree_finished(&self) {
        let _g = self.tree_wait.0.lock().unwrap_or_else(|e| e.into_inner());
        self.tree_done.store(true, Ordering::SeqCst);
        self.tree_wait.1.notify_all();
    }

    /// Waits until the tree pass has placed `ino` (its directory made) or
    /// is over; `false`: it was not placed (not selected after all, or in
    /// a directory that could not be made).
    fn wait_placed(&self, ino: u32) -> bool {
        loop {
            if self.place(ino).is_some() {
                return true;
            }
            if self.tree_done.load(Ordering::SeqCst) {
                return self.place(ino).is_some();
            }
            let g = self.tree_wait.0.lock().expect("tree lock");
            self.waiters.fetch_add(1, Ordering::SeqCst);
            if self.place(ino).is_none() && !self.tree_done.load(Ordering::SeqCst) {
                drop(self.tree_wait.1.wait(g).expect("tree lock"));
            }
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn count_entry(&self) {
        self.entries.fetch_add(1, Ordering::Relaxed);
    }

    fn name(&self, dirent: u32) -> &'a [u8] {
        &self.a.index.dirents[dirent as usize].name
    }

    // ---- directory descriptors ------------------------------------------

    fn dest_fd(&self) -> Result<BorrowedFd<'_>> {
        match &self.dest {
            Some(fd) => Ok(fd.as_fd()),
            None => Err(Error::Other("no destination directory".into())),
        }
    }

    /// A descriptor of directory `ino`, from the thread's cache `c`.
    /// Directories are opened through their parents, from DEST down, never
    /// following a symlink.
    fn dir<'c>(&'c self, c: &'c mut DirCache, ino: u32) -> Result<BorrowedFd<'c>> {
        if ino == self.root || ino == u32::MAX {
            return self.dest_fd();
        }
        if !c.open.contains_key(&ino) {
            if c.open.len() >= DIR_FD_CACHE {
                c.open.clear();
            }
            // The directories from the nearest open ancestor down.
            let mut chain = vec![ino];
            let mut cur = ino;
            loop {
                let (parent, _) = self.place(cur).expect("placed directory");
                if parent == self.root || c.open.contains_key(&parent) {
                    break;
                }
                chain.push(parent);
                cur = parent;
            }
            for &d in chain.iter().rev() {
                let (parent, de) = self.place(d).expect("placed directory");
                let pfd = match c.open.get(&parent) {
                    Some(fd) if parent != self.root => fd.as_fd(),
                    _ => self.dest_fd()?,
                };
                let fd = rustix::fs::openat(
                    pfd,
                    sys::os(self.name(de)),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| Error::io(self.path_of(d), e.into()))?;
                c.open.insert(d, fd);
            }
        }
        Ok(c.open[&ino].as_fd())
    }

    // ---- selection ----------------------------------------------------------

    /// Resolves the PATH arguments; returns the directories to walk from,
    /// creating the parents of each selected path.
    fn select(&self, dc: &mut DirCache) -> Result<Vec<u32>> {
        if self.o.paths.is_empty() {
            return Ok(vec![0]);
        }
        let mut starts = Vec::new();
        for p in &self.o.paths {
            let mut cur = 0u32;
            let comps: Vec<&[u8]> = p
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty() && *c != b".")
                .collect();
            for (k, comp) in comps.iter().enumerate() {
                let ents = self.a.children(cur);
                let Ok(pos) = ents.binary_search_by(|d| d.name[..].cmp(comp)) else {
                    return Err(Error::Other(format!(
                        "{}: {} not found in the archive",
                        self.a.path.display(),
                        String::from_utf8_lossy(p)
                    )));
                };
                let de = match self.a.index.inodes[cur as usize].body {
                    Body::Dir { first, .. } => first + pos as u32,
                    _ => unreachable!(),
                };
                let child = ents[pos].inode;
                if self.place(child).is_none() {
                    self.set_place(child, cur, de);
                }
                if k + 1 < comps.len() {
                    if !matches!(self.a.inode(child).body, Body::Dir { .. }) {
                        return Err(Error::Other(format!(
                            "{}: {} is not a directory in the archive",
                            self.a.path.display(),
                            String::from_utf8_lossy(p)
                        )));
                    }
                    // A parent of a selected path: created plainly.
                    self.make_dir(child, false, dc)?;
                }
                cur = child;
            }
            starts.push(cur);
        }
        Ok(starts)
    }

    // ---- tree pass ----------------------------------------------------------

    fn restore_tree(&self) -> Result<()> {
        let mut dc = DirCache::default();
        let starts = self.select(&mut dc)?;
        let (items, route) = self.plan(&starts);
        // The tree pass and the data pass at once: writers wait for their
        // files' directories (see `wait_placed`), while the archive is read
        // and decoded from the start.
        let (tree, data) = std::thread::scope(|s| {
            let tree = std::thread::Builder::new()
                .name("hbb-tree".into())
                .spawn_scoped(s, || {
                    // Writers are let go however the pass ends (a panic too).
                    struct Finished<'r, 'a>(&'r Restorer<'a>);
                    impl Drop for Finished<'_, '_> {
                        fn drop(&mut self) {
                            self.0.tree_finished();
                        }
                    }
                    let _finished = Finished(self);
                    let r = self.walk_tree(&starts, &mut dc);
                    r.map(|done| (done, dc))
                })
                .expect("spawn tree thread");
            let data = self.run_data(items, &Targets::Tree, self.o.threads, &route);
            (tree.join().expect("tree pass"), data)
        });
        let ((dirs_done, links), mut dc) = tree?;
        data?;
        let dc = &mut dc;
        for (ino, dir, de) in links {
            self.link(ino, dir, de, dc)?;
        }
        // Directories last, deepest first, so their times stick.
        for &d in dirs_done.iter().rev() {
            if d == 0 && !self.o.paths.is_empty() {
                continue;
            }
            let fd = self.dir(dc, d)?;
            self.finish_meta(d, fd, false);
        }
        Ok(())
    }

    /// What the data pass will have to write, known from the index alone:
    /// the extents of every file with data under `starts` (the tree pass
    /// decides which are restored, and where), and the directory of each
    /// file's first name (which writer takes it).
    #[allow(clippy::type_complexity)]
    fn plan(&self, starts: &[u32]) -> (Vec<(u32, Extent)>, Vec<u32>) {
        let n = self.a.index.inodes.len();
        let mut seen = vec![false; n];
        let mut route = vec![0u32; n];
        let mut items = Vec::new();
        let mut stack = Vec::new();
        let add = |ino: u32, items: &mut Vec<(u32, Extent)>| {
            if let Body::File { extents, .. } = &self.a.inode(ino).body {
                items.extend(extents.iter().filter(|e| e.len > 0).map(|e| (ino, *e)));
            }
        };
        for &s in starts {
            if seen[s as usize] {
                continue;
            }
            seen[s as usize] = true;
            match self.a.inode(s).body {
                Body::Dir { .. } => stack.push(s),
                _ => {
                    route[s as usize] = self.place(s).map_or(0, |(d, _)| d);
                    add(s, &mut items);
                }
            }
        }
        while let Some(dir) = stack.pop() {
            let Body::Dir { first, count } = self.a.inode(dir).body else {
                continue;
            };
            for de in first..first + count {
                let child = self.a.index.dirents[de as usize].inode;
                if std::mem::replace(&mut seen[child as usize], true) {
                    continue;
                }
                route[child as usize] = dir;
                if matches!(self.a.inode(child).body, Body::Dir { .. }) {
                    stack.push(child);
                } else {
                    add(child, &mut items);
                }
            }
        }
        (items, route)
    }

    /// The tree pass: directories made, and every entry but files with
    /// data (the data pass's) and further names of an inode (returned, for
    /// the link pass), in the order the snapshot walked them (which is the
    /// order of the data). Returns the directories made, parents first.
    #[allow(clippy::type_complexity)]
    fn walk_tree(
        &self,
        starts: &[u32],
        dc: &mut DirCache,
    ) -> Result<(Vec<u32>, Vec<(u32, u32, u32)>)> {
        let mut dirs_done = Vec::new();
        let mut links = Vec::new(); // (ino, parent, dirent) of further names
        let mut stack: Vec<u32> = Vec::new();
        for &s in starts {
            match self.a.inode(s).body {
                Body::Dir { .. } => {
                    if s != 0 && !self.make_dir(s, true, dc)? {
                        continue;
                    }
                    stack.push(s);
                    dirs_done.push(s);
                }
                _ => {
                    self.make_entry(s, dc)?;
                }
            }
        }
        // The first start is walked first.
        stack.reverse();
        let mut subdirs = Vec::new();
        while let Some(dir) = stack.pop() {
            let Body::Dir { first, count } = self.a.inode(dir).body else {
                continue;
            };
            for de in first..first + count {
                let child = self.a.index.dirents[de as usize].inode;
                let is_dir = matches!(self.a.inode(child).body, Body::Dir { .. });
                if !is_dir && self.place(child).is_some() {
                    // A further name of an inode already placed: a hard link.
                    links.push((child, dir, de));
                    continue;
                }
                self.set_place(child, dir, de);
                if is_dir {
                    if self.make_dir(child, true, dc)? {
                        subdirs.push(child);
                        dirs_done.push(child);
                    }
                } else {
                    self.make_entry(child, dc)?;
                }
            }
            // Reversed, so that the first subdirectory is walked first.
            stack.extend(subdirs.drain(..).rev());
            self.tree_progress();
        }
        Ok((dirs_done, links))
    }

    /// Creates a directory; `false` if it could not be.
    fn make_dir(&self, ino: u32, report: bool, dc: &mut DirCache) -> Result<bool> {
        let (parent, de) = self.place(ino).expect("placed");
        let name = self.name(de);
        let pfd = self.dir(dc, parent)?;
        match rustix::fs::mkdirat(pfd, sys::os(name), Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(pfd, sys::os(name), AtFlags::SYMLINK_NOFOLLOW);
                let is_dir = st.is_ok_and(|s| (s.st_mode & libc::S_IFMT) == libc::S_IFDIR);
                if !is_dir {
                    if !self.o.overwrite {
                        if report {
                            self.problem(ino, "exists and is not a directory (use --overwrite)");
                        }
                        return Ok(false);
                    }
                    if let Err(e) = rustix::fs::unlinkat(pfd, sys::os(name), AtFlags::empty())
                        .and_then(|_| {
                            rustix::fs::mkdirat(pfd, sys::os(name), Mode::from_raw_mode(0o700))
                        })
                    {
                        self.problem(ino, e);
                        return Ok(false);
                    }
                }
            }
            Err(e) => {
                self.problem(ino, format!("creating directory: {e}"));
                return Ok(false);
            }
        }
        self.count_entry();
        Ok(true)
    }

    /// Makes room for a non-directory entry: with --overwrite an existing
    /// one is removed; otherwise it is reported. `false`: leave it.
    fn clear_place(&self, ino: u32, pfd: BorrowedFd<'_>, name: &[u8]) -> bool {
        match rustix::fs::statat(pfd, sys::os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => true,
            Err(e) => {
                self.problem(ino, e);
                false
            }
            Ok(st) => {
                if !self.o.overwrite {
                    self.problem(ino, "exists (use --overwrite)");
                    return false;
                }
                let flags = if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                match rustix::fs::unlinkat(pfd, sys::os(name), flags) {
                    Ok(()) => true,
                    Err(e) => {
                        self.problem(ino, format!("cannot replace: {e}"));
                        false
                    }
                }
            }
        }
    }

    /// Creates a non-directory entry, or queues a file with data.
    fn make_entry(&self, ino: u32, dc: &mut DirCache) -> Result<bool> {
        let (parent, de) = self.place(ino).expect("placed");
        let name = self.name(de);
        let inode = self.a.inode(ino);
        if let Body::File { extents, .. } = &inode.body
            && extents.iter().any(|e| e.len > 0)
        {
            // The data pass's, now that it is placed.
            return Ok(true);
        }
        let pfd = self.dir(dc, parent)?;
        let nm = sys::os(name);
        if let Body::BlockDev { .. } | Body::CharDev { .. } = inode.body
            && !self.is_root
        {
            if self.clear_place(ino, pfd, name) {
                self.problem(ino, "device node not restored (needs root)");
            }
            return Ok(false);
        }
        // Made at once; only if the name is taken is it looked at (and,
        // with --overwrite, removed).
        let make = || -> rustix::io::Result<Option<OwnedFd>> {
            match &inode.body {
                Body::File { .. } => rustix::fs::openat(
                    pfd,
                    nm,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    self.file_mode(ino),
                )
                .map(Some),
                Body::Symlink { target } => {
                    rustix::fs::symlinkat(sys::os(target), pfd, nm).map(|()| None)
                }
                Body::Fifo => rustix::fs::mknodat(
                    pfd,
                    nm,
                    rustix::fs::FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .map(|()| None),
                Body::Socket => rustix::fs::mknodat(
                    pfd,
                    nm,
                    rustix::fs::FileType::Socket,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .map(|()| None),
                Body::BlockDev { rdev } | Body::CharDev { rdev } => {
                    let ft = if matches!(inode.body, Body::BlockDev { .. }) {
                        rustix::fs::FileType::BlockDevice
                    } else {
                        rustix::fs::FileType::CharacterDevice
                    };
                    rustix::fs::mknodat(pfd, nm, ft, Mode::from_raw_mode(0o600), *rdev)
                        .map(|()| None)
                }
                Body::Dir { .. } => unreachable!(),
            }
        };
        let made = match make() {
            Err(Errno::EXIST) => {
                if !self.clear_place(ino, pfd, name) {
                    return Ok(false);
                }
                make()
            }
            r => r,
        };
        let made = match made {
            Ok(m) => m,
            Err(e) => {
                self.problem(ino, e);
                return Ok(false);
            }
        };
        if let Some(fd) = made {
            // An empty (or all-hole) file.
            if let Body::File { size, .. } = inode.body
                && size > 0
                && let Err(e) = rustix::fs::ftruncate(&fd, size)
            {
                self.problem(ino, std::io::Error::from(e));
            }
            self.finish_meta(ino, fd.as_fd(), false);
            self.count_entry();
            return Ok(true);
        }
        self.count_entry();
        if matches!(inode.body, Body::Symlink { .. }) {
            self.symlink_meta(ino, pfd, name);
        } else {
            match rustix::fs::openat(
                pfd,
                nm,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => self.finish_meta(ino, fd.as_fd(), true),
                Err(e) => self.problem(ino, e),
            }
        }
        Ok(true)
    }

    fn link(&self, ino: u32, dir: u32, de: u32, dc: &mut DirCache) -> Result<()> {
        let (p0, de0) = self.place(ino).expect("placed");
        let n0 = self.name(de0);
        let n1 = self.name(de);
        let f0 = self.dir(dc, p0)?.try_clone_to_owned().at(&self.o.dest)?;
        let f1 = self.dir(dc, dir)?;
        if !self.clear_place(ino, f1, n1) {
            return Ok(());
        }
        if let Err(e) = rustix::fs::linkat(&f0, sys::os(n0), f1, sys::os(n1), AtFlags::empty()) {
            let p = format!("{}/{}", self.path_of(dir), String::from_utf8_lossy(n1));
            self.report
                .lock()
                .expect("report lock")
                .problems
                .push(format!("{p}: hard link: {e}"));
        } else {
            self.count_entry();
        }
        Ok(())
    }

    // ---- metadata -----------------------------------------------------------

    fn owner(&self, ino: &Inode) -> (u32, u32) {
        let uid = *self.uid_map.get(&ino.uid).unwrap_or(&ino.uid);
        let gid = *self.gid_map.get(&ino.gid).unwrap_or(&ino.gid);
        (uid, gid)
    }

    /// The mode to create regular file `ino` with: its own, so that
    /// `finish_meta` need not set it (unless the umask or a default ACL
    /// took bits away), unless set-id bits (which chown clears) or xattrs
    /// (which may need the owner's write permission) are in the way; then
    /// the file stays private (0600) until it is finished.
    fn file_mode(&self, ino: u32) -> Mode {
        let inode = self.a.inode(ino);
        if inode.perm & 0o7000 == 0 && inode.xattrs.is_empty() {
            Mode::from_raw_mode(inode.perm)
        } else {
            Mode::from_raw_mode(0o600)
        }
    }

    /// Owner, xattrs, mode, times, in that order (chown clears set-id bits
    /// and capabilities). `fd` may be an O_PATH descriptor. An owner or a
    /// mode that is already right is left alone: chown or chmod to the same
    /// value changes nothing (on a new entry, which has no set-id bits or
    /// xattrs yet, or a directory) but costs a journalled inode update.
    fn finish_meta(&self, ino: u32, fd: BorrowedFd<'_>, o_path: bool) {
        let a = self.a;
        let inode = a.inode(ino);
        // An O_PATH descriptor (fifos, devices, sockets) takes no fchmod or
        // fsetxattr; its /proc/self/fd link reaches the same inode.
        let proc_path = o_path.then(|| {
            PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ))
        });
        let st = rustix::fs::fstat(fd).ok();
        let mut chowned = false;
        if self.is_root
            && let (uid, gid) = self.owner(inode)
            && !st
                .as_ref()
                .is_some_and(|s| s.st_uid == uid && s.st_gid == gid)
        {
            chowned = true;
            let (uid, gid) = (
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            );
            let r = if o_path {
                rustix::fs::chownat(fd, "", uid, gid, AtFlags::EMPTY_PATH)
            } else {
                rustix::fs::fchown(fd, uid, gid)
            };
            if let Err(e) = r {
                self.problem(ino, format!("owner: {e}"));
            }
        }
        for x in &inode.xattrs {
            let Ok(name) = std::ffi::CString::new(x.name.clone()) else {
                continue;
            };
            let flags = rustix::fs::XattrFlags::empty();
            let r = match &proc_path {
                Some(p) => rustix::fs::setxattr(p, name.as_c_str(), &x.value, flags),
                None => rustix::fs::fsetxattr(fd, name.as_c_str(), &x.value, flags),
            };
            if let Err(e) = r {
                self.problem(
                    ino,
                    format!("xattr {}: {e}", String::from_utf8_lossy(&x.name)),
                );
            }
        }
        // Set-user/group-id bits only for root, as tar does.
        let perm = if self.is_root {
            inode.perm
        } else {
            inode.perm & !0o6000
        };
        let mode = Mode::from_raw_mode(perm);
        let same = !chowned && st.is_some_and(|s| s.st_mode & 0o7777 == perm);
        let r = match &proc_path {
            _ if same => Ok(()),
            Some(p) => rustix::fs::chmod(p, mode),
            None => rustix::fs::fchmod(fd, mode),
        };
        if let Err(e) = r {
            self.problem(ino, format!("mode: {e}"));
        }
        let ts = Timestamps {
            last_access: ts(inode.atime),
            last_modification: ts(inode.mtime),
        };
        let r = if o_path {
            rustix::fs::utimensat(fd, "", &ts, AtFlags::EMPTY_PATH)
        } else {
            rustix::fs::futimens(fd, &ts)
        };
        if let Err(e) = r {
            self.problem(ino, format!("times: {e}"));
        }
    }

    fn symlink_meta(&self, ino: u32, pfd: BorrowedFd<'_>, name: &[u8]) {
        let inode = self.a.inode(ino).clone();
        if self.is_root {
            let (uid, gid) = self.owner(&inode);
            if let Err(e) = rustix::fs::chownat(
                pfd,
                sys::os(name),
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            ) {
                self.problem(ino, format!("owner: {e}"));
            }
        }
        let ts = Timestamps {
            last_access: ts(inode.atime),
            last_modification: ts(inode.mtime),
        };
        if let Err(e) = rustix::fs::utimensat(pfd, sys::os(name), &ts, AtFlags::SYMLINK_NOFOLLOW) {
            self.problem(ino, format!("times: {e}"));
        }
    }

    // ---- data pass ----------------------------------------------------------

    /// Creates a regular file that has data (sized when it is finished, so
    /// that holes stay holes).
    fn create_file(&self, ino: u32, dc: &mut DirCache) -> Option<Target<'a>> {
        let (parent, de) = self.place(ino).expect("placed");
        let name = self.name(de);
        let pfd = match self.dir(dc, parent) {
            Ok(f) => f,
            Err(e) => {
                self.problem(ino, e);
                return None;
            }
        };
        let size = match self.a.inode(ino).body {
            Body::File { size, .. } => size,
            _ => 0,
        };
        let create = || {
            rustix::fs::openat(
                pfd,
                sys::os(name),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                self.file_mode(ino),
            )
        };
        // Made at once; only if the name is taken is it looked at (and,
        // with --overwrite, removed).
        let fd = match create() {
            Err(Errno::EXIST) => {
                if !self.clear_place(ino, pfd, name) {
                    return None;
                }
                create()
            }
            r => r,
        };
        match fd {
            Ok(fd) => Some(Target {
                file: File::from(fd),
                fresh: true,
                parent,
                name,
                size: Some(size),
                end: 0,
            }),
            Err(e) => {
                self.problem(ino, e);
                None
            }
        }
    }

    /// The data pass: blocks decoded in parallel and in stream order; the
    /// pieces of each block go to `writers` threads, chosen by the file's
    /// directory, each with a shared reference to the block (no copy), so
    /// that a file's pieces are written in order by one thread while files
    /// of different directories are created, written and finished on all
    /// cores at once.
    fn run_data(
        &self,
        items: Vec<(u32, Extent)>,
        targets: &Targets<'a>,
        writers: usize,
        route: &[u32],
    ) -> Result<()> {
        let total = items.iter().map(|(_, e)| e.len).sum();
        let progress = Progress::new(total, self.o.quiet);
        let writers = writers.max(1);
        let result = std::thread::scope(|s| {
            let mut txs = Vec::with_capacity(writers);
            for w in 0..writers {
                let (tx, rx) = crossbeam_channel::bounded::<Batch>(WRITE_QUEUE);
                txs.push(tx);
                std::thread::Builder::new()
                    .name(format!("hbb-write-{w}"))
                    .spawn_scoped(s, move || self.writer(rx, targets))
                    .expect("spawn writer thread");
            }
            let mut batches: Vec<Vec<Span>> = vec![Vec::new(); writers];
            // Blocks a writer may hold: its queue and the one it writes.
            let extra = writers * (WRITE_QUEUE + 1);
            let r = for_each_span(self.a, items, self.o.threads, extra, |data, spans| {
                progress.read(spans.iter().map(|sp| sp.len).sum());
                for sp in spans {
                    // By parent directory: files of one directory go to one
                    // writer, so writers do not contend for a directory's lock.
                    let parent = route.get(sp.ino as usize).copied().unwrap_or(0);
                    batches[parent as usize % writers].push(*sp);
                }
                let data = data.map_err(|e| Arc::new(e.to_string()));
                for (w, b) in batches.iter_mut().enumerate() {
                    if b.is_empty() {
                        continue;
                    }
                    let batch = Batch {
                        data: data.clone(),
                        spans: std::mem::take(b),
                    };
                    txs[w]
                        .send(batch)
                        .map_err(|_| Error::Other("a restore writer stopped".into()))?;
                }
                Ok(())
            });
            drop(txs);
            r
        });
        progress.finish();
        result
    }

    /// One writer thread: opens each of its files at its first piece,
    /// writes the pieces, finishes the file at its last.
    fn writer(&self, rx: crossbeam_channel::Receiver<Batch>, targets: &Targets<'a>) {
        let mut dc = DirCache::default();
        let mut open: HashMap<u32, Option<Target>> = HashMap::new();
        let mut damaged: HashMap<u32, String> = HashMap::new();
        for batch in rx {
            for sp in &batch.spans {
                let target = open.entry(sp.ino).or_insert_with(|| match targets {
                    Targets::Tree => {
                        if self.wait_placed(sp.ino) {
                            self.create_file(sp.ino, &mut dc)
                        } else {
                            None
                        }
                    }
                    Targets::Volume(slot) => slot.lock().expect("volume lock").take(),
                });
                match (&batch.data, target.as_mut()) {
                    (Ok(block), Some(tg)) => {
                        let r = if !sp.zero {
                            match block.get(sp.lo..sp.hi) {
                                Some(bytes) => tg.file.write_all_at(bytes, sp.offset),
                                None => {
                                    // Bytes past a short block's end read as zeros.
                                    let mut v = block.get(sp.lo..).unwrap_or(&[]).to_vec();
                                    v.resize(sp.hi - sp.lo, 0);
                                    tg.file.write_all_at(&v, sp.offset)
                                }
                            }
                            .map(|()| tg.end = tg.end.max(sp.offset + sp.len))
                        } else if !tg.fresh {
                            // A device, not a new file: its zeros must be written.
                            tg.file.write_all_at(&vec![0u8; sp.len as usize], sp.offset)
                        } else {
                            Ok(())
                        };
                        if let Err(err) = r {
                            damaged
                                .entry(sp.ino)
                                .or_insert(format!("write at offset {}: {err}", sp.offset));
                        }
                    }
                    (Err(err), _) => {
                        damaged.entry(sp.ino).or_insert_with(|| err.to_string());
                    }
                    (Ok(_), None) => {}
                }
                if sp.last
                    && let Some(Some(tg)) = open.remove(&sp.ino)
                {
                    self.finish_file(sp.ino, tg, damaged.contains_key(&sp.ino), &mut dc);
                }
            }
        }
        for (ino, why) in damaged {
            self.problem(ino, format!("not restored: {why}"));
        }
    }

    fn finish_file(&self, ino: u32, tg: Target<'a>, damaged: bool, dc: &mut DirCache) {
        if damaged {
            if let Ok(pfd) = self.dir(dc, tg.parent) {
                let _ = rustix::fs::unlinkat(pfd, sys::os(tg.name), AtFlags::empty());
            }
            return;
        }
        // Trailing holes (and zero blocks at the end) make the size.
        if let Some(size) = tg.size
            && tg.end < size
            && let Err(e) = tg.file.set_len(size)
        {
            self.problem(ino, e);
        }
        if let Body::File { size, .. } = self.a.inode(ino).body {
            self.bytes.fetch_add(size, Ordering::Relaxed);
        }
        if tg.parent != u32::MAX {
            self.finish_meta(ino, tg.file.as_fd(), false);
        }
        self.count_entry();
    }

    // ---- volume -------------------------------------------------------------

    fn restore_volume(&self, dest: &Path) -> Result<()> {
        let Some(&Dirent { inode: vol, .. }) = self.a.children(0).first() else {
            return Err(Error::corrupt(
                &self.a.path,
                "volume archive without a volume",
            ));
        };
        let Body::File { size, extents } = self.a.inode(vol).body.clone() else {
            return Err(Error::corrupt(
                &self.a.path,
                "volume archive: the volume is not a file",
            ));
        };
        let md = std::fs::metadata(dest);
        let is_dev = md.as_ref().is_ok_and(|m| m.file_type().is_block_device());
        let file = if is_dev {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dest)
                .at(dest)?;
            let dsize = rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0)).at(dest)?;
            if dsize < size {
                return Err(Error::Other(format!(
                    "{}: device holds {dsize} bytes, the volume needs {size}",
                    dest.display()
                )));
            }
            f
        } else {
            if md.is_ok() && !self.o.overwrite {
                return Err(Error::Other(format!(
                    "{}: exists (use --overwrite)",
                    dest.display()
                )));
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(dest)
                .at(dest)?;
            f.set_len(size).at(dest)?;
            f
        };
        let items = extents
            .iter()
            .filter(|e| e.len > 0)
            .map(|e| (vol, *e))
            .collect();
        let slot = Targets::Volume(Mutex::new(Some(Target {
            file,
            fresh: !is_dev,
            parent: u32::MAX,
            name: &[],
            size: None,
            end: 0,
        })));
        self.run_data(items, &slot, 1, &[])?;
        self.bytes.store(size, Ordering::Relaxed);
        let report = self.report.lock().expect("report lock");
        if let Some(p) = report.problems.first() {
            return Err(Error::Other(format!(
                "{}: volume not fully restored: {p}",
                dest.display()
            )));
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dest)
            .at(dest)?;
        f.sync_all().at(dest)?;
        Ok(())
    }
}

/// Where the data pass writes.
enum Targets<'a> {
    /// Each file of the tree, created at its first piece.
    Tree,
    /// The one file or device a volume is restored to.
    Volume(Mutex<Option<Target<'a>>>),
}

/// The pieces of one block for a writer thread.
struct Batch {
    /// The block, or why it could not be read.
    data: std::result::Result<Arc<Block>, Arc<String>>,
    spans: Vec<Span>,
}

/// Batches (blocks) queued per writer thread.
const WRITE_QUEUE: usize = 8;

struct Target<'a> {
    file: File,
    /// Newly created: zero blocks can be left as holes.
    fresh: bool,
    parent: u32,
    name: &'a [u8],
    /// The size to give the file when it is finished, if its data end
    /// short of it (holes at the end).
    size: Option<u64>,
    /// The end of the data written so far.
    end: u64,
}

/// `place` of an inode not placed.
const NOWHERE: u64 = u64::MAX;

fn ts(t: Time) -> Timespec {
    Timespec {
        tv_sec: t.sec,
        tv_nsec: t.nsec as _,
    }
}

fn open_dest(dest: &Path) -> Result<OwnedFd> {
    std::fs::create_dir_all(dest).at(dest)?;
    rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .at(dest)
}
