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
use std::sync::Mutex;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::archive::decode::for_each_piece;
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
    let a = Archive::open(&o.archive)?;
    let volume_target = a.meta().mode == crate::archive::Mode::Volume && o.paths.is_empty() && {
        match std::fs::metadata(&o.dest) {
            Ok(md) => !md.is_dir(),
            Err(_) => true,
        }
    };
    let mut r = Restorer::new(&a, o, !volume_target)?;
    if volume_target {
        r.restore_volume(&o.dest)?;
    } else {
        r.restore_tree()?;
    }
    let mut report = r.report.into_inner().expect("report lock");
    report.problems.sort();
    Ok(report)
}

struct Restorer<'a> {
    a: &'a Archive,
    o: &'a Options,
    report: Mutex<Report>,
    root: u32,
    /// First (parent, name) seen for each inode within the selection.
    place: Vec<Option<(u32, u32)>>,
    dirs: Mutex<DirFds>,
    is_root: bool,
    uid_map: HashMap<u32, u32>,
    gid_map: HashMap<u32, u32>,
    paths: Vec<Vec<u8>>,
}

/// Directory descriptors by inode, reopened through their parents when
/// evicted, each open `O_NOFOLLOW | O_DIRECTORY`.
struct DirFds {
    dest: Option<OwnedFd>,
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
            root: 0,
            place: vec![None; n],
            dirs: Mutex::new(DirFds {
                dest: if tree {
                    Some(open_dest(&o.dest)?)
                } else {
                    None
                },
                open: HashMap::new(),
            }),
            is_root,
            uid_map,
            gid_map,
            paths: a.paths(),
        })
    }

    fn path_of(&self, ino: u32) -> String {
        let p = &self.paths[ino as usize];
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

    fn count_entry(&self) {
        self.report.lock().expect("report lock").entries += 1;
    }

    fn name(&self, dirent: u32) -> &[u8] {
        &self.a.index.dirents[dirent as usize].name
    }

    // ---- directory descriptors ------------------------------------------

    /// A descriptor of directory `ino` (a duplicate, so that no lock is
    /// held while it is used). Directories are opened through their
    /// parents, from DEST down, never following a symlink.
    fn dir_owned(&self, ino: u32) -> Result<OwnedFd> {
        let mut dirs = self.dirs.lock().expect("dir lock");
        let fd = self.dir_fd(&mut dirs, ino)?;
        fd.try_clone_to_owned().at(&self.o.dest)
    }

    fn dir_fd<'d>(&self, dirs: &'d mut DirFds, ino: u32) -> Result<BorrowedFd<'d>> {
        if ino == self.root || ino == u32::MAX {
            return match &dirs.dest {
                Some(fd) => Ok(fd.as_fd()),
                None => Err(Error::Other("no destination directory".into())),
            };
        }
        if !dirs.open.contains_key(&ino) {
            let (parent, de) = self.place[ino as usize].expect("placed directory");
            let pfd = self
                .dir_fd(dirs, parent)?
                .try_clone_to_owned()
                .at(&self.o.dest)?;
            let fd = rustix::fs::openat(
                &pfd,
                sys::os(self.name(de)),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io(self.path_of(ino), e.into()))?;
            if dirs.open.len() >= DIR_FD_CACHE {
                dirs.open.clear();
            }
            dirs.open.insert(ino, fd);
        }
        Ok(dirs.open[&ino].as_fd())
    }

    // ---- selection ----------------------------------------------------------

    /// Resolves the PATH arguments; returns the directories to walk from,
    /// creating the parents of each selected path.
    fn select(&mut self) -> Result<Vec<u32>> {
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
                let Ok(pos) = ents.binary_search_by(|d| d.name.as_slice().cmp(comp)) else {
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
                if self.place[child as usize].is_none() {
                    self.place[child as usize] = Some((cur, de));
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
                    self.make_dir(child, false)?;
                }
                cur = child;
            }
            starts.push(cur);
        }
        Ok(starts)
    }

    // ---- tree pass ----------------------------------------------------------

    fn restore_tree(&mut self) -> Result<()> {
        let starts = self.select()?;
        let mut dirs_done = Vec::new();
        let mut files = Vec::new(); // (ino) with data
        let mut links = Vec::new(); // (ino, parent, dirent) of further names
        let mut stack: Vec<u32> = Vec::new();
        for s in starts {
            match self.a.inode(s).body {
                Body::Dir { .. } => {
                    if s != 0 && !self.make_dir(s, true)? {
                        continue;
                    }
                    stack.push(s);
                    dirs_done.push(s);
                }
                _ => {
                    self.make_entry(s, &mut files)?;
                }
            }
        }
        while let Some(dir) = stack.pop() {
            let Body::Dir { first, count } = self.a.inode(dir).body else {
                continue;
            };
            for de in first..first + count {
                let child = self.a.index.dirents[de as usize].inode;
                let is_dir = matches!(self.a.inode(child).body, Body::Dir { .. });
                if !is_dir && self.place[child as usize].is_some() {
                    // A further name of an inode already placed: a hard link.
                    links.push((child, dir, de));
                    continue;
                }
                self.place[child as usize] = Some((dir, de));
                if is_dir {
                    if self.make_dir(child, true)? {
                        stack.push(child);
                        dirs_done.push(child);
                    }
                } else {
                    self.make_entry(child, &mut files)?;
                }
            }
        }
        self.write_data(&files)?;
        for (ino, dir, de) in links {
            self.link(ino, dir, de)?;
        }
        // Directories last, deepest first, so their times stick.
        for &d in dirs_done.iter().rev() {
            if d == 0 && !self.o.paths.is_empty() {
                continue;
            }
            let fd = self.dir_owned(d)?;
            self.finish_meta(d, fd.as_fd(), false);
        }
        Ok(())
    }

    /// Creates a directory; `false` if it could not be.
    fn make_dir(&self, ino: u32, report: bool) -> Result<bool> {
        let (parent, de) = self.place[ino as usize].expect("placed");
        let name = self.name(de).to_vec();
        let pfd = self.dir_owned(parent)?;
        match rustix::fs::mkdirat(&pfd, sys::os(&name), Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(&pfd, sys::os(&name), AtFlags::SYMLINK_NOFOLLOW);
                let is_dir = st.is_ok_and(|s| (s.st_mode & libc::S_IFMT) == libc::S_IFDIR);
                if !is_dir {
                    if !self.o.overwrite {
                        if report {
                            self.problem(ino, "exists and is not a directory (use --overwrite)");
                        }
                        return Ok(false);
                    }
                    if let Err(e) = rustix::fs::unlinkat(&pfd, sys::os(&name), AtFlags::empty())
                        .and_then(|_| {
                            rustix::fs::mkdirat(&pfd, sys::os(&name), Mode::from_raw_mode(0o700))
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
    fn make_entry(&self, ino: u32, files: &mut Vec<u32>) -> Result<bool> {
        let (parent, de) = self.place[ino as usize].expect("placed");
        let name = self.name(de).to_vec();
        let pfd = self.dir_owned(parent)?;
        let inode = self.a.inode(ino);
        let nm = sys::os(&name);
        if let Body::File { extents, .. } = &inode.body
            && extents.iter().any(|e| e.len > 0)
        {
            files.push(ino);
            return Ok(true);
        }
        if !self.clear_place(ino, pfd.as_fd(), &name) {
            return Ok(false);
        }
        let made: rustix::io::Result<()> = match &inode.body {
            Body::File { size, .. } => {
                match rustix::fs::openat(
                    &pfd,
                    nm,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                ) {
                    Ok(fd) => {
                        let f = File::from(fd);
                        if let Err(e) = f.set_len(*size) {
                            self.problem(ino, e);
                        }
                        self.finish_meta(ino, f.as_fd(), false);
                        self.count_entry();
                        return Ok(true);
                    }
                    Err(e) => Err(e),
                }
            }
            Body::Symlink { target } => rustix::fs::symlinkat(sys::os(target), &pfd, nm),
            Body::Fifo => rustix::fs::mknodat(
                &pfd,
                nm,
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            ),
            Body::Socket => rustix::fs::mknodat(
                &pfd,
                nm,
                rustix::fs::FileType::Socket,
                Mode::from_raw_mode(0o600),
                0,
            ),
            Body::BlockDev { rdev } | Body::CharDev { rdev } => {
                if !self.is_root {
                    self.problem(ino, "device node not restored (needs root)");
                    return Ok(false);
                }
                let ft = if matches!(inode.body, Body::BlockDev { .. }) {
                    rustix::fs::FileType::BlockDevice
                } else {
                    rustix::fs::FileType::CharacterDevice
                };
                rustix::fs::mknodat(&pfd, nm, ft, Mode::from_raw_mode(0o600), *rdev)
            }
            Body::Dir { .. } => unreachable!(),
        };
        if let Err(e) = made {
            self.problem(ino, e);
            return Ok(false);
        }
        self.count_entry();
        if matches!(inode.body, Body::Symlink { .. }) {
            self.symlink_meta(ino, pfd.as_fd(), &name);
        } else {
            match rustix::fs::openat(
                &pfd,
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

    fn link(&self, ino: u32, dir: u32, de: u32) -> Result<()> {
        let (p0, de0) = self.place[ino as usize].expect("placed");
        let n0 = self.name(de0).to_vec();
        let n1 = self.name(de).to_vec();
        let f0 = self.dir_owned(p0)?;
        let f1 = self.dir_owned(dir)?;
        if !self.clear_place(ino, f1.as_fd(), &n1) {
            return Ok(());
        }
        if let Err(e) = rustix::fs::linkat(&f0, sys::os(&n0), &f1, sys::os(&n1), AtFlags::empty()) {
            let p = format!("{}/{}", self.path_of(dir), String::from_utf8_lossy(&n1));
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

    /// Owner, xattrs, mode, times, in that order (chown clears set-id bits
    /// and capabilities). `fd` may be an O_PATH descriptor.
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
        if self.is_root {
            let (uid, gid) = self.owner(inode);
            let r = rustix::fs::chownat(
                fd,
                "",
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::EMPTY_PATH,
            );
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
        let r = match &proc_path {
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
        if let Err(e) = rustix::fs::utimensat(fd, "", &ts, AtFlags::EMPTY_PATH) {
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

    fn write_data(&self, files: &[u32]) -> Result<()> {
        let mut items = Vec::new();
        for &ino in files {
            if let Body::File { extents, .. } = &self.a.inode(ino).body {
                for e in extents.iter().filter(|e| e.len > 0) {
                    items.push((ino, *e));
                }
            }
        }
        self.run_data(items, &Targets::Tree, self.o.threads)
    }

    /// Creates a regular file that has data, sized (so holes stay holes).
    fn create_file(&self, ino: u32) -> Option<Target> {
        let (parent, de) = self.place[ino as usize].expect("placed");
        let name = self.name(de).to_vec();
        let pfd = match self.dir_owned(parent) {
            Ok(f) => f,
            Err(e) => {
                self.problem(ino, e);
                return None;
            }
        };
        if !self.clear_place(ino, pfd.as_fd(), &name) {
            return None;
        }
        let size = match self.a.inode(ino).body {
            Body::File { size, .. } => size,
            _ => 0,
        };
        let fd = rustix::fs::openat(
            &pfd,
            sys::os(&name),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        );
        match fd {
            Ok(fd) => {
                let f = File::from(fd);
                if let Err(e) = f.set_len(size) {
                    self.problem(ino, e);
                }
                Some(Target {
                    file: f,
                    fresh: true,
                    parent,
                    name,
                })
            }
            Err(e) => {
                self.problem(ino, e);
                None
            }
        }
    }

    /// The data pass: blocks decoded in parallel and in stream order; each
    /// piece goes to one of `writers` threads, chosen by the file's
    /// directory, so that a file's pieces are written in order by one thread
    /// while files of different directories are created, written and
    /// finished on all cores at once.
    fn run_data(&self, items: Vec<(u32, Extent)>, targets: &Targets, writers: usize) -> Result<()> {
        let total = items.iter().map(|(_, e)| e.len).sum();
        let progress = Progress::new(total, self.o.quiet);
        let writers = writers.max(1);
        let result = std::thread::scope(|s| {
            let mut txs = Vec::with_capacity(writers);
            for w in 0..writers {
                let (tx, rx) = crossbeam_channel::bounded::<Piece>(WRITE_QUEUE);
                txs.push(tx);
                std::thread::Builder::new()
                    .name(format!("hbb-write-{w}"))
                    .spawn_scoped(s, move || self.writer(rx, targets))
                    .expect("spawn writer thread");
            }
            let r = for_each_piece(self.a, items, self.o.threads, |p| {
                progress.read(p.len);
                let piece = Piece {
                    ino: p.ino,
                    offset: p.offset,
                    len: p.len,
                    zero: p.zero,
                    last: p.last,
                    data: match p.data {
                        Ok(_) if p.zero => Ok(Vec::new()),
                        Ok(b) => Ok(b.to_vec()),
                        Err(e) => Err(e.to_string()),
                    },
                };
                // By parent directory: files of one directory go to one
                // writer, so writers do not contend for a directory's lock.
                let parent = self.place[p.ino as usize].map_or(0, |(d, _)| d);
                txs[parent as usize % writers]
                    .send(piece)
                    .map_err(|_| Error::Other("a restore writer stopped".into()))
            });
            drop(txs);
            r
        });
        progress.finish();
        result
    }

    /// One writer thread: opens each of its files at its first piece,
    /// writes the pieces, finishes the file at its last.
    fn writer(&self, rx: crossbeam_channel::Receiver<Piece>, targets: &Targets) {
        let mut open: HashMap<u32, Option<Target>> = HashMap::new();
        let mut damaged: HashMap<u32, String> = HashMap::new();
        for p in rx {
            let target = open.entry(p.ino).or_insert_with(|| match targets {
                Targets::Tree => self.create_file(p.ino),
                Targets::Volume(slot) => slot.lock().expect("volume lock").take(),
            });
            match (&p.data, target.as_mut()) {
                (Ok(bytes), Some(tg)) => {
                    let r = if !p.zero {
                        tg.file.write_all_at(bytes, p.offset)
                    } else if !tg.fresh {
                        // A device, not a new file: its zeros must be written.
                        tg.file.write_all_at(&vec![0u8; p.len as usize], p.offset)
                    } else {
                        Ok(())
                    };
                    if let Err(err) = r {
                        damaged
                            .entry(p.ino)
                            .or_insert(format!("write at offset {}: {err}", p.offset));
                    }
                }
                (Err(err), _) => {
                    damaged.entry(p.ino).or_insert(err.clone());
                }
                (Ok(_), None) => {}
            }
            if p.last
                && let Some(Some(tg)) = open.remove(&p.ino)
            {
                self.finish_file(p.ino, tg, damaged.contains_key(&p.ino));
            }
        }
        for (ino, why) in damaged {
            self.problem(ino, format!("not restored: {why}"));
        }
    }

    fn finish_file(&self, ino: u32, tg: Target, damaged: bool) {
        if damaged {
            if let Ok(pfd) = self.dir_owned(tg.parent) {
                let _ = rustix::fs::unlinkat(&pfd, sys::os(&tg.name), AtFlags::empty());
            }
            return;
        }
        if let Body::File { size, .. } = self.a.inode(ino).body {
            self.report.lock().expect("report lock").bytes += size;
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
            name: Vec::new(),
        })));
        self.run_data(items, &slot, 1)?;
        let mut report = self.report.lock().expect("report lock");
        report.bytes = size;
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
enum Targets {
    /// Each file of the tree, created at its first piece.
    Tree,
    /// The one file or device a volume is restored to.
    Volume(Mutex<Option<Target>>),
}

/// One piece of a file for a writer thread.
struct Piece {
    ino: u32,
    offset: u64,
    len: u64,
    /// From an all-zero block: `data` is empty, the bytes are zeros.
    zero: bool,
    last: bool,
    data: std::result::Result<Vec<u8>, String>,
}

/// Pieces queued per writer thread (bounds the memory of the data pass).
const WRITE_QUEUE: usize = 64;

struct Target {
    file: File,
    /// Newly created and sized: zero blocks can be left as holes.
    fresh: bool,
    parent: u32,
    name: Vec<u8>,
}

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
