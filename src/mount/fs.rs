//! The FUSE filesystem: archives' indexes answered as a read-only tree.
//!
//! ```text
//! lookup / getattr / readdir(plus) / readlink / xattrs / statfs ─► the index, in memory
//! read ─► plan (which bytes of which blocks, which holes) ─► cache.get ─► reply
//!      ├► sequential? ─► cache.prefetch(the file's next blocks)
//!      └► whole files in archive order? ─► push the next small files into the page cache (push.rs)
//! ```
//!
//! One [`HbbFs`] serves either one archive, whose root is the mount's root,
//! or many (a repository's snapshots): then the root is a made-up top
//! directory holding one directory per archive, by name. Each archive is a
//! [`View`] in a table indexed by its entry number `k`; a view is made (the
//! archive opened, its index decoded, its directories counted) the first
//! time something inside it is asked for, so mounting and listing the top
//! directory open nothing. All views share one [`BlockCache`] (one byte
//! budget, one pool of workers), keyed by `(k, block)`.
//!
//! Inode numbers: with one archive they are the archive's (index + 1, the
//! root being 1), so hard links share one. With many, the top directory is
//! 1 and archive `k`'s inode `i` is `((k + 1) << 32) | (i + 1)`: disjoint
//! ranges, the same on every mount of the same list. An archive's root
//! (`i` = 0) is the entry's directory in the top directory; its attributes
//! are made up (mode 0555, the mounting user's, the entry's time) so that
//! neither `ls -l` of the top directory nor `..` needs the archive opened.
//!
//! Thin by design: the helpers return `Result<_, Errno>` and the
//! `Filesystem` methods only reply. Nothing changes while mounted, so the
//! kernel is told to cache entries, attributes, pages and directory
//! listings for long. A damaged block is an EIO for the reads touching it
//! and one log line naming the file and the block, never an ENOENT; an
//! archive that cannot be opened is an EIO for everything inside its
//! directory and one log line; every number taken from an index is
//! checked, never unwrapped.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use lru::LruCache;

use super::Entry;
use super::cache::{BlockCache, Data, Origin};
use super::push::{self, Pusher};
use crate::archive::{Archive, Block, BlockLoc, Body, Extent, Inode, MAX_NAME_LEN, Time};

/// How long the kernel may trust what we tell it: the archive is immutable.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// `st_blksize`: the preferred I/O size, which `cp` and friends read by.
const IO_SIZE: u32 = 1 << 20;
/// Reads this close to a file's current run of reads (either end) belong to
/// it (the kernel's asynchronous reads may arrive slightly out of order).
const SEQ_WINDOW: u64 = 1 << 20;
/// How far reads away from a file's start must have gone, front to back,
/// before they count as a stream worth reading ahead of.
const SEQ_RUN: u64 = 512 << 10;
/// Files whose read position is remembered for read-ahead.
const SEQ_FILES: NonZeroUsize = NonZeroUsize::new(4096).unwrap();
/// Mode of the made-up top directory of a multi-archive mount: r-x for all.
const TOP_PERM: u16 = 0o555;
/// Mode of each archive's made-up directory: its owner (the mounting user)
/// only. The archive root's own mode is not known before the archive is
/// opened, so with allow_other nobody else may enter: a snapshot of a 0700
/// home directory never becomes readable to other users.
const ENTRY_PERM: u16 = 0o500;

pub struct HbbFs {
    /// With many archives: the top directory (inode 1). Without, the one
    /// archive's root is inode 1.
    top: Option<Top>,
    /// The archives, by entry number.
    slots: Vec<Slot>,
    cache: BlockCache,
    /// `--cache`, for the warning about archives with larger blocks.
    cache_bytes: u64,
    /// Where the recent readers of each file have got to, by entry and inode.
    seq: Mutex<LruCache<(u32, u32), Seq>>,
    /// The kernel opens files and directories without asking (it then
    /// keeps their pages and listings cached, as `open` would tell it to).
    zero_open: bool,
    zero_opendir: bool,
    /// Whole small files pushed into the kernel's cache ahead of readers
    /// that go through them in order.
    push: Pusher,
}

/// The top directory of a multi-archive mount.
struct Top {
    /// Owner of the made-up directories: the mounting user.
    uid: u32,
    gid: u32,
    /// The newest entry's time.
    time: SystemTime,
    /// Entry number by name.
    by_name: HashMap<Vec<u8>, u32>,
}

/// One archive of the mount: opened on first use (or at once, alone).
struct Slot {
    name: Vec<u8>,
    time: SystemTime,
    open: Option<super::Opener>,
    /// None once opening it failed (said once, in the log).
    view: OnceLock<Option<View>>,
}

/// An opened archive, as the mount serves it.
struct View {
    /// The archive and its number in the cache's keys (the entry number).
    origin: Origin,
    /// FUSE inode number of archive inode `i`: `base + i + 1`.
    base: u64,
    /// Parent and number of subdirectories of every directory.
    dirs: HashMap<u32, DirInfo>,
    /// Data bytes of all files, rounded up to 4 KiB pieces, for statfs.
    data_bytes: u64,
    /// Read-ahead window in bytes (0: off).
    readahead: u64,
    reporter: Arc<Reporter>,
}

#[derive(Debug, Clone, Copy, Default)]
struct DirInfo {
    parent: u32,
    subdirs: u32,
}

/// Where the reads of one file have got to.
#[derive(Debug, Clone, Copy, Default)]
struct Seq {
    /// Where the current run of nearby reads began (its lowest offset).
    start: u64,
    /// End of the furthest recent read.
    end: u64,
    /// Bytes the run's reads asked for.
    read: u64,
    /// Read-ahead has been requested up to here.
    ahead: u64,
}

/// What a FUSE inode number stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// The top directory of a multi-archive mount.
    Top,
    /// Inode `idx` of entry `k`'s archive.
    In { k: u32, idx: u32 },
}

/// A directory listing: position + 1 of each entry, what it is, its name.
type Listing<'a> = Box<dyn Iterator<Item = (u64, Loc, &'a [u8])> + 'a>;

impl View {
    /// Indexes the directories of archive `k`, whose inode `i` is FUSE
    /// inode `base + i + 1`; `prefix` is its place in the mount, for the log.
    fn new(k: u32, archive: Arc<Archive>, base: u64, prefix: Vec<u8>, cache: &BlockCache) -> View {
        let mut dirs: HashMap<u32, DirInfo> = HashMap::new();
        let mut data_bytes = 0u64;
        for (i, ino) in archive.index.inodes.iter().enumerate() {
            match &ino.body {
                Body::Dir { .. } => {
                    let i = i as u32;
                    let mut subdirs = 0u32;
                    for d in archive.children(i) {
                        if archive
                            .index
                            .inodes
                            .get(d.inode as usize)
                            .is_some_and(|c| matches!(c.body, Body::Dir { .. }))
                        {
                            subdirs = subdirs.saturating_add(1);
                            dirs.entry(d.inode).or_default().parent = i;
                        }
                    }
                    dirs.entry(i).or_default().subdirs = subdirs;
                }
                Body::File { extents, .. } => {
                    data_bytes = data_bytes.saturating_add(allocated(extents));
                }
                _ => {}
            }
        }
        let readahead = cache.prefetch_limit(archive.block_size()) as u64 * archive.block_size();
        View {
            reporter: Arc::new(Reporter {
                archive: archive.clone(),
                prefix,
                base,
                seen: Mutex::new(HashSet::new()),
            }),
            origin: Origin { id: k, archive },
            base,
            dirs,
            data_bytes,
            readahead,
        }
    }

    fn archive(&self) -> &Archive {
        &self.origin.archive
    }

    fn ino(&self, idx: u32) -> INodeNo {
        INodeNo(fuse_ino(self.base, idx))
    }

    fn inode(&self, idx: u32) -> Result<&Inode, Errno> {
        self.archive()
            .index
            .inodes
            .get(idx as usize)
            .ok_or(Errno::ESTALE)
    }

    fn attr(&self, idx: u32) -> Result<FileAttr, Errno> {
        let ino = self.inode(idx)?;
        let (kind, size, blocks, rdev) = match &ino.body {
            Body::Dir { .. } => (FileType::Directory, 4096, 8, 0),
            Body::File { size, extents } => {
                (FileType::RegularFile, *size, allocated(extents) / 512, 0)
            }
            Body::Symlink { target } => (FileType::Symlink, target.len() as u64, 0, 0),
            Body::BlockDev { rdev } => (FileType::BlockDevice, 0, 0, fuse_rdev(*rdev)),
            Body::CharDev { rdev } => (FileType::CharDevice, 0, 0, fuse_rdev(*rdev)),
            Body::Fifo => (FileType::NamedPipe, 0, 0, 0),
            Body::Socket => (FileType::Socket, 0, 0, 0),
        };
        let nlink = match self.dirs.get(&idx) {
            Some(d) => d.subdirs.saturating_add(2),
            None => ino.nlink.max(1),
        };
        Ok(FileAttr {
            ino: self.ino(idx),
            size,
            blocks,
            atime: system_time(ino.atime),
            mtime: system_time(ino.mtime),
            ctime: system_time(ino.ctime),
            crtime: system_time(ino.mtime),
            kind,
            perm: (ino.perm & 0o7777) as u16,
            nlink,
            uid: ino.uid,
            gid: ino.gid,
            rdev,
            blksize: IO_SIZE,
            flags: 0,
        })
    }

    fn dir(&self, idx: u32) -> Result<u32, Errno> {
        match self.inode(idx)?.body {
            Body::Dir { .. } => Ok(idx),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn file(&self, idx: u32) -> Result<(u64, &[Extent]), Errno> {
        match &self.inode(idx)?.body {
            Body::File { size, extents } => Ok((*size, extents)),
            Body::Dir { .. } => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }
}

impl HbbFs {
    /// Serves one archive, its root as the mount's root; indexes its
    /// directories and starts the cache's `threads` workers.
    pub fn new(archive: Arc<Archive>, cache_bytes: u64, threads: usize) -> std::io::Result<Self> {
        let cache = BlockCache::new(cache_bytes, threads)?;
        let view = View::new(0, archive, 0, Vec::new(), &cache);
        let slot = Slot {
            name: Vec::new(),
            time: UNIX_EPOCH,
            open: None,
            view: OnceLock::from(Some(view)),
        };
        Ok(Self::with(None, vec![slot], cache, cache_bytes))
    }

    /// Serves `entries`, each as a directory of the top directory, opening
    /// none of them yet; starts the cache's `threads` workers, shared by all.
    /// Names must be valid and distinct (the first of equal names wins).
    pub fn many(entries: Vec<Entry>, cache_bytes: u64, threads: usize) -> std::io::Result<Self> {
        let cache = BlockCache::new(cache_bytes, threads)?;
        let mut by_name = HashMap::with_capacity(entries.len());
        let mut slots = Vec::with_capacity(entries.len());
        let mut time = UNIX_EPOCH;
        // Entry numbers are 32 bits, less the top directory's.
        for (k, e) in entries.into_iter().take(u32::MAX as usize - 1).enumerate() {
            by_name.entry(e.name.clone()).or_insert(k as u32);
            time = time.max(e.time);
            slots.push(Slot {
                name: e.name,
                time: e.time,
                open: Some(e.open),
                view: OnceLock::new(),
            });
        }
        let top = Top {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            time,
            by_name,
        };
        Ok(Self::with(Some(top), slots, cache, cache_bytes))
    }

    fn with(top: Option<Top>, slots: Vec<Slot>, cache: BlockCache, cache_bytes: u64) -> Self {
        HbbFs {
            top,
            slots,
            cache_bytes,
            seq: Mutex::new(LruCache::new(SEQ_FILES)),
            zero_open: false,
            zero_opendir: false,
            push: Pusher::new(),
            cache,
        }
    }

    /// Where the session's connection goes once it is made: until then,
    /// and if it never is, nothing is pushed.
    pub fn connection(&self) -> Arc<OnceLock<OwnedFd>> {
        self.push.connection()
    }

    /// Never push files into the kernel's cache: with `allow_root` (or
    /// `auto_unmount`) other users could read pushed pages nobody asked
    /// the mount for, and with one session thread a push could wait for
    /// a read nobody is left to answer.
    pub fn no_push(&self) {
        self.push.disable();
    }

    /// What a FUSE inode number stands for (not checked against the index).
    fn loc(&self, ino: INodeNo) -> Result<Loc, Errno> {
        if self.top.is_none() {
            return ino
                .0
                .checked_sub(1)
                .and_then(|i| u32::try_from(i).ok())
                .map(|idx| Loc::In { k: 0, idx })
                .ok_or(Errno::ESTALE);
        }
        if ino.0 == 1 {
            return Ok(Loc::Top);
        }
        let (hi, lo) = (ino.0 >> 32, ino.0 & 0xffff_ffff);
        if hi == 0 || lo == 0 || hi > self.slots.len() as u64 {
            return Err(Errno::ESTALE);
        }
        Ok(Loc::In {
            k: (hi - 1) as u32,
            idx: (lo - 1) as u32,
        })
    }

    /// Whether `loc` is the made-up directory of an entry (an archive's
    /// root in a multi-archive mount), answered without opening it.
    fn is_entry_dir(&self, loc: Loc) -> bool {
        self.top.is_some() && matches!(loc, Loc::In { idx: 0, .. })
    }

    /// Entry `k`'s archive, opened now if it is not yet: an EIO if it
    /// cannot be (said once, in the log).
    fn view(&self, k: u32) -> Result<&View, Errno> {
        let slot = self.slots.get(k as usize).ok_or(Errno::ESTALE)?;
        slot.view
            .get_or_init(|| self.open_slot(k, slot))
            .as_ref()
            .ok_or(Errno::EIO)
    }

    fn open_slot(&self, k: u32, slot: &Slot) -> Option<View> {
        let name = String::from_utf8_lossy(&slot.name);
        let opened = match &slot.open {
            Some(open) => open(),
            None => return None,
        };
        let archive = match opened {
            Ok(a) => a,
            Err(e) => {
                super::log(&format!(
                    "cannot open {name}: {e}; everything in /{name} is an I/O error (EIO)"
                ));
                return None;
            }
        };
        let bs = archive.block_size();
        if self.cache_bytes < 2 * bs {
            super::log(&format!(
                "warning: --cache {} holds less than two blocks of {bs} bytes of {name}: \
                 no read-ahead, and readers of different blocks evict each other",
                self.cache_bytes
            ));
        }
        let base = (u64::from(k) + 1) << 32;
        let mut prefix = b"/".to_vec();
        prefix.extend_from_slice(&slot.name);
        Some(View::new(k, Arc::new(archive), base, prefix, &self.cache))
    }

    fn top_attr(&self, top: &Top) -> FileAttr {
        self.dir_attr(
            top,
            INodeNo(1),
            top.time,
            (self.slots.len() as u32).saturating_add(2),
            TOP_PERM,
        )
    }

    /// The directory of entry `k` in the top directory. Its link count is 1,
    /// as for a directory whose subdirectories are not counted: they are
    /// not known until the archive is opened.
    fn entry_attr(&self, top: &Top, k: u32) -> Result<FileAttr, Errno> {
        let slot = self.slots.get(k as usize).ok_or(Errno::ESTALE)?;
        let ino = INodeNo(((u64::from(k) + 1) << 32) | 1);
        Ok(self.dir_attr(top, ino, slot.time, 1, ENTRY_PERM))
    }

    fn dir_attr(
        &self,
        top: &Top,
        ino: INodeNo,
        time: SystemTime,
        nlink: u32,
        perm: u16,
    ) -> FileAttr {
        FileAttr {
            ino,
            size: 4096,
            blocks: 8,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind: FileType::Directory,
            perm,
            nlink,
            uid: top.uid,
            gid: top.gid,
            rdev: 0,
            blksize: IO_SIZE,
            flags: 0,
        }
    }

    fn attr(&self, loc: Loc) -> Result<FileAttr, Errno> {
        match (loc, &self.top) {
            (Loc::Top, Some(top)) => Ok(self.top_attr(top)),
            (Loc::In { k, idx: 0 }, Some(top)) => self.entry_attr(top, k),
            (Loc::In { k, idx }, _) => self.view(k)?.attr(idx),
            (Loc::Top, None) => Err(Errno::ESTALE),
        }
    }

    /// A directory: the top one, an entry's (neither opens anything), or
    /// one inside an archive.
    fn dir(&self, ino: INodeNo) -> Result<Loc, Errno> {
        let loc = self.loc(ino)?;
        match loc {
            Loc::Top => {}
            _ if self.is_entry_dir(loc) => {}
            Loc::In { k, idx } => {
                self.view(k)?.dir(idx)?;
            }
        }
        Ok(loc)
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let dir = self.dir(parent)?;
        if name.len() > MAX_NAME_LEN {
            return Err(Errno::ENAMETOOLONG);
        }
        match (dir, &self.top) {
            (Loc::Top, Some(top)) => {
                let k = *top.by_name.get(name.as_bytes()).ok_or(Errno::ENOENT)?;
                self.entry_attr(top, k)
            }
            (Loc::In { k, idx }, _) => {
                let child = self
                    .view(k)?
                    .archive()
                    .lookup(idx, name.as_bytes())
                    .ok_or(Errno::ENOENT)?;
                self.attr(Loc::In { k, idx: child })
            }
            (Loc::Top, None) => Err(Errno::ESTALE),
        }
    }

    /// The entries of a directory from position `offset` on: ".", "..",
    /// then the children; an entry's offset is its position + 1.
    fn entries(&self, ino: INodeNo, offset: u64) -> Result<Listing<'_>, Errno> {
        let loc = self.loc(ino)?;
        // Straight to the offset: a huge directory is listed in many calls.
        let from = usize::try_from(offset).unwrap_or(usize::MAX);
        match loc {
            Loc::Top => {
                let dots = [(Loc::Top, &b"."[..]), (Loc::Top, &b".."[..])];
                let dots = dots.into_iter().enumerate().skip(from);
                let rest = self
                    .slots
                    .iter()
                    .enumerate()
                    .skip(from.saturating_sub(2))
                    .map(move |(k, s)| {
                        let here = Loc::In {
                            k: k as u32,
                            idx: 0,
                        };
                        (k + 2, (here, s.name.as_slice()))
                    });
                Ok(Box::new(dots.chain(rest).map(number)))
            }
            Loc::In { k, idx } => {
                let view = self.view(k)?;
                let dir = view.dir(idx)?;
                let parent = match view.dirs.get(&dir).map_or(0, |d| d.parent) {
                    0 if dir == 0 && self.top.is_some() => Loc::Top,
                    p => Loc::In { k, idx: p },
                };
                let dots = [(Loc::In { k, idx: dir }, &b"."[..]), (parent, &b".."[..])];
                let children = view.archive().children(dir);
                let rest = children.get(from.saturating_sub(2)..).unwrap_or(&[]);
                let dots = dots.into_iter().enumerate().skip(from);
                let rest = rest.iter().enumerate().map(move |(j, d)| {
                    let here = Loc::In { k, idx: d.inode };
                    (j + from.max(2), (here, &d.name[..]))
                });
                Ok(Box::new(dots.chain(rest).map(number)))
            }
        }
    }

    /// A regular file: its archive, inode, size and extents.
    fn file(&self, ino: INodeNo) -> Result<(&View, u32, u64, &[Extent]), Errno> {
        let loc = self.loc(ino)?;
        match loc {
            Loc::Top => Err(Errno::EISDIR),
            _ if self.is_entry_dir(loc) => Err(Errno::EISDIR),
            Loc::In { k, idx } => {
                let view = self.view(k)?;
                let (size, extents) = view.file(idx)?;
                Ok((view, idx, size, extents))
            }
        }
    }

    /// An inode inside an archive, for readlink and xattrs; None for the
    /// made-up directories (no target, no xattrs).
    fn stored(&self, ino: INodeNo) -> Result<Option<&Inode>, Errno> {
        let loc = self.loc(ino)?;
        match loc {
            Loc::Top => Ok(None),
            _ if self.is_entry_dir(loc) => Ok(None),
            Loc::In { k, idx } => self.view(k)?.inode(idx).map(Some),
        }
    }

    fn do_open(&self, ino: INodeNo, flags: OpenFlags) -> Result<(), Errno> {
        self.file(ino)?;
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    /// Notes a read of `[offset, offset+len)` of file `idx` of `view`; when
    /// it continues the previous ones, returns the range to read ahead.
    fn sequential(
        &self,
        view: &View,
        idx: u32,
        offset: u64,
        len: u64,
        size: u64,
    ) -> Option<(u64, u64)> {
        let end = offset.saturating_add(len);
        if view.readahead == 0 || end >= size {
            return None; // nothing after this read
        }
        let mut seqs = lock(&self.seq);
        let seq = seqs.get_or_insert_mut((view.origin.id, idx), Seq::default);
        // Near the run (the kernel's reads may arrive out of order, by a
        // request or two), or a jump: start over from here, no read-ahead.
        if offset > seq.end.saturating_add(SEQ_WINDOW)
            || offset.saturating_add(SEQ_WINDOW) < seq.start
        {
            *seq = Seq {
                start: offset,
                end,
                read: len,
                ahead: end,
            };
            return None;
        }
        seq.start = seq.start.min(offset);
        seq.end = seq.end.max(end);
        seq.read = seq.read.saturating_add(len);
        // A stream, not random reads near one another (a database's pages,
        // say, which would have whole blocks decoded for nothing): from the
        // file's start, or over a stretch of SEQ_RUN, and most of it read.
        // And this read at its front: a run read backwards has nothing
        // ahead of it worth decoding.
        let span = seq.end - seq.start;
        if !((seq.start == 0 || span >= SEQ_RUN) && seq.read >= span / 2)
            || seq.end - end >= SEQ_RUN / 2
        {
            return None;
        }
        // Top the window up once half of it has been consumed.
        if seq.ahead >= size || seq.ahead > seq.end.saturating_add(view.readahead / 2) {
            return None;
        }
        let from = seq.ahead.max(seq.end);
        let to = seq.end.saturating_add(view.readahead).min(size);
        seq.ahead = to;
        (from < to).then_some((from, to - from))
    }

    fn do_read(&self, ino: INodeNo, offset: u64, size: u32, reply: ReplyData) {
        let (view, idx, fsize, extents) = match self.file(ino) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let bs = view.archive().block_size();
        let blocks = &view.archive().index.blocks;
        let plan = match plan_read(bs, blocks, fsize, extents, offset, u64::from(size)) {
            Ok(p) => p,
            Err(e) => {
                view.reporter.inconsistent(idx, &e);
                return reply.error(Errno::EIO);
            }
        };
        if let Some((from, len)) = self.sequential(view, idx, offset, plan.len as u64, fsize)
            && let Ok(ahead) = plan_read(bs, blocks, fsize, extents, from, len)
        {
            self.cache.prefetch(&view.origin, &ahead.blocks);
        }
        let push = if offset == 0 && view.readahead > 0 {
            self.push.start(&self.cache, &view.origin, view.base, idx)
        } else {
            None
        };
        match push {
            // The first few before the reply wakes the reader, the rest after.
            Some(mut push) => {
                let more = push.some(push::PUSH_FIRST, false);
                self.answer(view, idx, plan, reply);
                if more {
                    push.some(usize::MAX, true);
                }
            }
            None => self.answer(view, idx, plan, reply),
        }
    }

    /// Sends a directory listing's reply (`reply`), for a listing that
    /// goes on from `offset`. The kernel asks for more only once it has
    /// taken in the entries before `offset`, so it now holds their inodes;
    /// when a reader's walk through the files in order stopped among them
    /// (its push found an inode the kernel did not hold yet), it goes on:
    /// the first few files before the reply, the rest after, as for a read.
    fn answer_listing(&self, ino: INodeNo, offset: u64, reply: impl FnOnce()) {
        let push = match self.loc(ino) {
            Ok(Loc::In { k, idx }) if offset > 2 => self.view(k).ok().and_then(|view| {
                let dir = view.dir(idx).ok()?;
                let known = view.archive().children(dir);
                let known = known.get(..(offset - 2) as usize).unwrap_or(known);
                let (first, last) = (known.first()?.inode, known.last()?.inode);
                (view.readahead > 0)
                    .then(|| {
                        self.push.listed(
                            &self.cache,
                            &view.origin,
                            view.base,
                            first.min(last),
                            first.max(last),
                        )
                    })
                    .flatten()
            }),
            _ => None,
        };
        match push {
            Some(mut push) => {
                let more = push.some(push::PUSH_FIRST, false);
                reply();
                if more {
                    push.some(usize::MAX, true);
                }
            }
            None => reply(),
        }
    }

    /// Replies to a read planned by `plan_read`.
    fn answer(&self, view: &View, idx: u32, plan: Plan, reply: ReplyData) {
        if plan.blocks.is_empty() {
            return reply.data(&vec![0u8; plan.len]);
        }
        let reporter = view.reporter.clone();
        let wanted = plan.blocks.clone();
        self.cache.get_here(
            &view.origin,
            &wanted,
            &plan.needs(),
            Box::new(move |r| match r {
                Ok(data) => match plan.single(&data) {
                    Some(slice) => reply.data(slice),
                    None => match plan.assemble(&data) {
                        Some(buf) => reply.data(&buf),
                        None => {
                            reporter.inconsistent(idx, "a block is shorter than its index says");
                            reply.error(Errno::EIO)
                        }
                    },
                },
                Err(e) => {
                    reporter.damaged(idx, &e);
                    reply.error(Errno::EIO)
                }
            }),
        );
    }

    fn xattr_reply(data: &[u8], size: u32, reply: ReplyXattr) {
        if size == 0 {
            match u32::try_from(data.len()) {
                Ok(n) => reply.size(n),
                Err(_) => reply.error(Errno::E2BIG),
            }
        } else if data.len() > size as usize {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(data)
        }
    }

    /// SEEK_DATA / SEEK_HOLE over the file's extents, so that `cp` keeps
    /// holes holes.
    fn do_lseek(&self, ino: INodeNo, offset: i64, whence: i32) -> Result<i64, Errno> {
        let (_, _, size, extents) = self.file(ino)?;
        let off = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        if off >= size {
            return Err(Errno::ENXIO);
        }
        let found = match whence {
            libc::SEEK_DATA => data_at(extents, off).ok_or(Errno::ENXIO)?,
            libc::SEEK_HOLE => hole_at(extents, off, size),
            _ => return Err(Errno::EINVAL),
        };
        i64::try_from(found).map_err(|_| Errno::EOVERFLOW)
    }

    /// statfs: one archive's numbers inside it; at the top of a
    /// multi-archive mount, the sums over the archives opened so far (plus
    /// the made-up directories), which opens none.
    fn do_statfs(&self, ino: INodeNo) -> Result<(u64, u64), Errno> {
        let loc = self.loc(ino)?;
        let view_numbers = |v: &View| (v.data_bytes, v.archive().index.inodes.len() as u64);
        match loc {
            Loc::Top => {
                let (mut bytes, mut files) = (0u64, 1u64);
                for s in &self.slots {
                    match s.view.get() {
                        Some(Some(v)) => {
                            let (b, f) = view_numbers(v);
                            bytes = bytes.saturating_add(b);
                            files = files.saturating_add(f);
                        }
                        _ => files = files.saturating_add(1),
                    }
                }
                Ok((bytes, files))
            }
            Loc::In { k, .. } => Ok(view_numbers(self.view(k)?)),
        }
    }
}

/// A listing's entry numbered by its position + 1.
fn number((k, (loc, name)): (usize, (Loc, &[u8]))) -> (u64, Loc, &[u8]) {
    (k as u64 + 1, loc, name)
}

impl Filesystem for HbbFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is optional: ask for what this kernel offers.
        for f in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            let _ = config.add_capabilities(f);
        }
        // Let the kernel keep many reads in flight: misses decode in parallel.
        let _ = config.set_max_background(64);
        // No OPEN or RELEASE round trip per file: open answers ENOSYS once,
        // and from then on the kernel opens files itself, keeping their
        // page cache (what open would ask for). A third of the requests
        // when many small files are read.
        self.zero_open = config
            .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
            .is_ok();
        self.zero_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn destroy(&mut self) {
        let s = self.cache.stats();
        let p = self.push.stats();
        super::log(&format!(
            "unmounted; cache: {} hits, {} misses ({} joined a decode under way), \
             {} blocks decoded, {} read ahead; {} files ({} bytes) pushed ahead of \
             readers in {} pushes ({} stopped at an inode the kernel did not hold yet, \
             {} went on at a directory listing)",
            s.hits,
            s.misses,
            s.joined,
            s.decoded,
            s.prefetched,
            p.files,
            p.bytes,
            p.pushes,
            p.unknown,
            p.listed
        ));
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guard(|| match self.do_lookup(parent, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        })
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guard(|| match self.loc(ino).and_then(|l| self.attr(l)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        })
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guard(|| match self.stored(ino).map(|i| i.map(|i| &i.body)) {
            Ok(Some(Body::Symlink { target })) => reply.data(target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        })
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guard(|| match self.do_open(ino, flags) {
            Ok(()) if self.zero_open => reply.error(Errno::ENOSYS),
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        })
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guard(|| {
            self.do_read(ino, offset, size, reply);
        })
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guard(|| match self.dir(ino) {
            Ok(_) if self.zero_opendir => reply.error(Errno::ENOSYS),
            Ok(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(e),
        })
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guard(|| {
            let entries = match self.entries(ino, offset) {
                Ok(e) => e,
                Err(e) => return reply.error(e),
            };
            for (next, loc, name) in entries {
                let attr = match self.attr(loc) {
                    Ok(a) => a,
                    Err(e) => return reply.error(e),
                };
                if reply.add(attr.ino, next, attr.kind, OsStr::from_bytes(name)) {
                    break;
                }
            }
            self.answer_listing(ino, offset, || reply.ok());
        })
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        guard(|| {
            let entries = match self.entries(ino, offset) {
                Ok(e) => e,
                Err(e) => return reply.error(e),
            };
            for (next, loc, name) in entries {
                let attr = match self.attr(loc) {
                    Ok(a) => a,
                    Err(e) => return reply.error(e),
                };
                if reply.add(
                    attr.ino,
                    next,
                    OsStr::from_bytes(name),
                    &TTL,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
            }
            self.answer_listing(ino, offset, || reply.ok());
        })
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        guard(|| {
            let (bytes, files) = match self.do_statfs(ino) {
                Ok(n) => n,
                Err(e) => return reply.error(e),
            };
            reply.statfs(
                bytes.div_ceil(4096),
                0,
                0,
                files,
                0,
                4096,
                MAX_NAME_LEN as u32,
                4096,
            );
        })
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guard(|| {
            let xattrs = match self.stored(ino) {
                Ok(i) => i.map_or(&[][..], |i| &i.xattrs),
                Err(e) => return reply.error(e),
            };
            match xattrs.iter().find(|x| x.name == name.as_bytes()) {
                Some(x) => Self::xattr_reply(&x.value, size, reply),
                None => reply.error(Errno::NO_XATTR),
            }
        })
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guard(|| {
            let xattrs = match self.stored(ino) {
                Ok(i) => i.map_or(&[][..], |i| &i.xattrs),
                Err(e) => return reply.error(e),
            };
            let mut names = Vec::new();
            for x in xattrs {
                names.extend_from_slice(&x.name);
                names.push(0);
            }
            Self::xattr_reply(&names, size, reply);
        })
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        guard(|| match self.do_lseek(ino, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        })
    }
}

/// Says once per file and block what went wrong, naming both.
struct Reporter {
    archive: Arc<Archive>,
    /// Where the archive's root is in the mount: "" for a one-archive
    /// mount, "/NAME" for an entry of a multi-archive one.
    prefix: Vec<u8>,
    /// FUSE inode number of archive inode `i`: `base + i + 1`.
    base: u64,
    seen: Mutex<HashSet<(u32, u64)>>,
}

impl Reporter {
    fn damaged(&self, idx: u32, e: &crate::Error) {
        let block = match e {
            crate::Error::Block { block, .. } => *block,
            _ => u64::MAX,
        };
        if lock(&self.seen).insert((idx, block)) {
            super::log(&format!("read error (EIO) in {}: {e}", self.describe(idx)));
        }
    }

    fn inconsistent(&self, idx: u32, what: &str) {
        if lock(&self.seen).insert((idx, u64::MAX - 1)) {
            super::log(&format!(
                "read error (EIO) in {}: {}: inconsistent index: {what}",
                self.describe(idx),
                self.archive.path.display()
            ));
        }
    }

    /// "/path/in/mount (inode N)", found by walking up the dirents: slow,
    /// but only done once per damaged file.
    fn describe(&self, idx: u32) -> String {
        let index = &self.archive.index;
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = idx;
        while cur != 0 && parts.len() <= index.inodes.len() {
            let Some(slot) = index.dirents.iter().position(|d| d.inode == cur) else {
                break;
            };
            parts.push(&index.dirents[slot].name);
            let owner = index.inodes.iter().position(|i| match i.body {
                Body::Dir { first, count } => {
                    (first as usize..first as usize + count as usize).contains(&slot)
                }
                _ => false,
            });
            match owner {
                Some(o) => cur = o as u32,
                None => break,
            }
        }
        let mut path = self.prefix.clone();
        for p in parts.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(p);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        format!(
            "{} (inode {})",
            String::from_utf8_lossy(&path),
            self.base + u64::from(idx) + 1
        )
    }
}

/// Runs a request's handler; a panic in it is logged and its reply, dropped
/// unsent, answers EIO, but the session thread lives on: a push waits for
/// reads that another session thread must answer (see push.rs).
fn guard(handler: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(handler)).is_err() {
        super::log("a request's handler panicked (a bug): it was answered EIO");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes of a file's data, each extent rounded up to 4 KiB as a filesystem
/// would allocate it: `du` over the mount then matches the source.
fn allocated(extents: &[Extent]) -> u64 {
    extents.iter().fold(0u64, |n, e| {
        n.saturating_add(e.len.div_ceil(4096).saturating_mul(4096))
    })
}

fn system_time(t: Time) -> SystemTime {
    let nsec = t.nsec.min(999_999_999);
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, nsec)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
            .and_then(|s| s.checked_add(Duration::from_nanos(u64::from(nsec))))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// A device number as FUSE carries it (the kernel's 32-bit "new" encoding:
/// 12 bits of major, 20 of minor), from glibc's 64-bit `dev_t`.
fn fuse_rdev(rdev: u64) -> u32 {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    if major > 0xfff || minor > 0xf_ffff {
        // Not representable through FUSE; 0 rather than a wrong device.
        return 0;
    }
    ((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)) as u32
}

fn data_at(extents: &[Extent], off: u64) -> Option<u64> {
    let k = extents.partition_point(|e| e.offset.saturating_add(e.len) <= off);
    extents.get(k).map(|e| e.offset.max(off))
}

fn hole_at(extents: &[Extent], off: u64, size: u64) -> u64 {
    let mut pos = off;
    let mut k = extents.partition_point(|e| e.offset.saturating_add(e.len) <= pos);
    while let Some(e) = extents.get(k) {
        if e.offset > pos {
            break;
        }
        pos = e.offset.saturating_add(e.len);
        k += 1;
    }
    pos.min(size)
}

/// The FUSE inode number of inode `idx` of the archive whose numbers start
/// after `base`.
pub(crate) fn fuse_ino(base: u64, idx: u32) -> u64 {
    base + u64::from(idx) + 1
}

/// One piece of a read's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Zero bytes: a hole, an all-zero block, or past a short block's end.
    Zero(usize),
    /// Bytes `at..at+len` of the plan's `slot`-th block.
    Data { slot: usize, at: usize, len: usize },
}

/// Which bytes of which blocks make up a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Distinct blocks to fetch, in first-use order.
    pub blocks: Vec<u64>,
    pub pieces: Vec<Piece>,
    /// Length of the reply: the request, cut at the end of the file.
    pub len: usize,
}

impl Plan {
    fn zero(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        let n = n as usize;
        match self.pieces.last_mut() {
            Some(Piece::Zero(z)) => *z += n,
            _ => self.pieces.push(Piece::Zero(n)),
        }
    }

    fn data(&mut self, block: u64, at: u64, len: u64) {
        let slot = match self.blocks.iter().rposition(|&b| b == block) {
            Some(s) => s,
            None => {
                self.blocks.push(block);
                self.blocks.len() - 1
            }
        };
        self.pieces.push(Piece::Data {
            slot,
            at: at as usize,
            len: len as usize,
        });
    }

    /// How many bytes from its start of each of `blocks` the reply uses.
    pub(crate) fn needs(&self) -> Vec<usize> {
        let mut needs = vec![0; self.blocks.len()];
        for p in &self.pieces {
            if let Piece::Data { slot, at, len } = *p
                && let Some(n) = needs.get_mut(slot)
            {
                *n = (*n).max(at.saturating_add(len));
            }
        }
        needs
    }

    /// The reply as one slice of one block, when it is exactly that.
    pub(crate) fn single<'d>(&self, data: &'d [Data]) -> Option<&'d [u8]> {
        match self.pieces[..] {
            [Piece::Data { slot, at, len }] => data.get(slot)?.get(at..at.checked_add(len)?),
            _ => None,
        }
    }

    /// The reply assembled from the blocks (None if one is too short).
    pub(crate) fn assemble(&self, data: &[Data]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len);
        for p in &self.pieces {
            match *p {
                Piece::Zero(n) => out.resize(out.len() + n, 0),
                Piece::Data { slot, at, len } => {
                    out.extend_from_slice(data.get(slot)?.get(at..at.checked_add(len)?)?)
                }
            }
        }
        Some(out)
    }
}

/// Maps the read of `want` bytes at `offset` of a file (`size` bytes, data
/// in `extents`) to pieces of blocks. Bytes past a block's stored length,
/// holes and all-zero blocks read as zeros. Errors name what is inconsistent.
pub(crate) fn plan_read(
    bs: u64,
    blocks: &[Block],
    size: u64,
    extents: &[Extent],
    offset: u64,
    want: u64,
) -> Result<Plan, String> {
    let end = offset.saturating_add(want).min(size);
    let mut plan = Plan {
        blocks: Vec::new(),
        pieces: Vec::new(),
        len: end.saturating_sub(offset) as usize,
    };
    if bs == 0 {
        return Err("block size 0".into());
    }
    let mut pos = offset;
    let mut k = extents.partition_point(|e| e.offset.saturating_add(e.len) <= pos);
    while pos < end {
        match extents.get(k) {
            Some(e) if e.offset <= pos => {
                let ext_end = e.offset.saturating_add(e.len).min(end);
                while pos < ext_end {
                    let s = e
                        .stream
                        .checked_add(pos - e.offset)
                        .ok_or("extent beyond the stream")?;
                    let (b, at) = (s / bs, s % bs);
                    let n = (bs - at).min(ext_end - pos);
                    let blk = blocks
                        .get(usize::try_from(b).unwrap_or(usize::MAX))
                        .ok_or_else(|| format!("block {b} does not exist"))?;
                    if blk.loc == BlockLoc::Zero {
                        plan.zero(n);
                    } else {
                        let avail = u64::from(blk.len).saturating_sub(at).min(n);
                        if avail > 0 {
                            plan.data(b, at, avail);
                        }
                        plan.zero(n - avail);
                    }
                    pos += n;
                }
                k += 1;
            }
            Some(e) => {
                let gap_end = e.offset.min(end);
                plan.zero(gap_end - pos);
                pos = gap_end;
            }
            None => {
                plan.zero(end - pos);
                pos = end;
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blk(len: u32) -> Block {
        Block {
            len,
            hash: [0; 32],
            loc: BlockLoc::Frame {
                offset: 64,
                clen: 1,
            },
        }
    }

    fn ext(offset: u64, stream: u64, len: u64) -> Extent {
        Extent {
            offset,
            stream,
            len,
        }
    }

    #[test]
    fn plan_spans_blocks_holes_and_eof() {
        // Block size 10; blocks 0,1 full, 2 zero, 3 short (4 bytes).
        let zero = Block {
            len: 10,
            hash: [0; 32],
            loc: BlockLoc::Zero,
        };
        let blocks = [blk(10), blk(10), zero, blk(4)];
        // File of 60 bytes: [5,20) = stream [3,18); [30,50) = stream [20,40).
        let extents = [ext(5, 3, 15), ext(30, 20, 20)];
        let p = plan_read(10, &blocks, 60, &extents, 0, 100).unwrap();
        assert_eq!(p.len, 60);
        assert_eq!(p.blocks, vec![0, 1, 3]);
        assert_eq!(
            p.pieces,
            vec![
                Piece::Zero(5),
                Piece::Data {
                    slot: 0,
                    at: 3,
                    len: 7
                },
                Piece::Data {
                    slot: 1,
                    at: 0,
                    len: 8
                },
                Piece::Zero(10 + 10),
                Piece::Data {
                    slot: 2,
                    at: 0,
                    len: 4
                },
                Piece::Zero(6 + 10),
            ]
        );
        let data: Vec<Data> = [10usize, 10, 4]
            .iter()
            .enumerate()
            .map(|(i, &n)| Arc::new(vec![i as u8 + 1; n]))
            .collect();
        let out = p.assemble(&data).unwrap();
        assert_eq!(out.len(), 60);
        assert_eq!(&out[..5], &[0; 5]);
        assert_eq!(&out[5..12], &[1; 7]);
        assert_eq!(&out[12..20], &[2; 8]);
        assert_eq!(&out[20..40], &[0; 20]);
        assert_eq!(&out[40..44], &[3; 4]);
        assert_eq!(&out[44..], &[0; 16]);
        // A read inside one block is one slice of it.
        let p = plan_read(10, &blocks, 60, &extents, 6, 3).unwrap();
        assert_eq!(p.single(&data[..1]), Some(&[1u8; 3][..]));
        // Past the end: nothing.
        let p = plan_read(10, &blocks, 60, &extents, 60, 10).unwrap();
        assert_eq!((p.len, p.pieces.len()), (0, 0));
        // Two extents in one block share its slot.
        let extents = [ext(0, 0, 3), ext(10, 3, 3)];
        let p = plan_read(10, &blocks, 13, &extents, 0, 13).unwrap();
        assert_eq!(p.blocks, vec![0]);
        assert!(plan_read(10, &blocks, 100, &[ext(0, 50, 10)], 0, 10).is_err());
    }

    #[test]
    fn seek_data_and_holes() {
        let extents = [ext(10, 0, 10), ext(20, 10, 5), ext(40, 15, 5)];
        assert_eq!(data_at(&extents, 0), Some(10));
        assert_eq!(data_at(&extents, 12), Some(12));
        assert_eq!(data_at(&extents, 25), Some(40));
        assert_eq!(data_at(&extents, 45), None);
        assert_eq!(hole_at(&extents, 0, 50), 0);
        assert_eq!(hole_at(&extents, 12, 50), 25);
        assert_eq!(hole_at(&extents, 41, 50), 45);
        assert_eq!(hole_at(&extents, 41, 44), 44);
    }

    #[test]
    fn device_numbers() {
        // glibc makedev(8, 1) and makedev(259, 0x12345).
        assert_eq!(fuse_rdev(0x801), 0x801);
        let glibc = |ma: u64, mi: u64| {
            ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12)
        };
        let fuse = fuse_rdev(glibc(259, 0x12345));
        assert_eq!((fuse >> 8) & 0xfff, 259);
        assert_eq!((fuse & 0xff) | ((fuse >> 12) & !0xff), 0x12345);
        assert_eq!(fuse_rdev(glibc(5000, 1)), 0);
    }

    #[test]
    fn times_before_1970() {
        let t = system_time(Time { sec: -2, nsec: 500 });
        let d = UNIX_EPOCH.duration_since(t).unwrap();
        assert_eq!(d, Duration::new(1, 999_999_500));
    }
}
