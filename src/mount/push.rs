//! Read-ahead across files: whole small files pushed into the kernel's page
//! cache before anyone asks for them.
//!
//! `tar`, `cp -r`, `rsync` and `diff -r` read a tree one file after another,
//! in directory order, which is the order the snapshot walked and stored the
//! files in. Each small file costs such a reader one FUSE round trip (its
//! READ, answered from a block that is usually decoded already: small files
//! share blocks), and the reader waits for each in turn; on two cores the
//! round trips, not the decoding, set the pace. So when reads of whole files
//! follow one another in archive order, the files that come next in that
//! order and whose blocks are decoded are written into the kernel's cache of
//! their pages with FUSE_NOTIFY_STORE: the reader then finds them there and
//! sends no request at all, while the mount pushes the next ones on another
//! core.
//!
//! ```text
//! READ(file i, offset 0) ─► follows the last one? ─► push i+1..i+PUSH_FIRST ─► reply ─► push the rest
//!                           (files ≤ PUSH_FILE_MAX, ≤ PUSH_BYTES, ≤ PUSH_FILES; before the reply
//!                            only from decoded blocks, after it waiting for decodes)
//! ```
//!
//! The first few files are pushed before the READ is answered, so that the
//! reader, woken by the reply, finds them; the rest after, on the same
//! session thread, while the reader goes through the first ones.
//!
//! A push ends at the first file whose directory the reader has not listed
//! yet (the kernel does not hold its inode). When the reader lists it, the
//! kernel asks for the rest of the listing only after taking in what it got,
//! so that request is where the push goes on ([`Pusher::listed`]), before
//! the reader asks for the directory's first file.
//!
//! What is pushed is what a READ would have answered, from blocks checked
//! against their hashes; a damaged block is never cached, so its files are
//! never pushed and still fail with EIO when read. The kernel refuses a
//! push into an inode it does not hold (ENOENT: a directory not listed
//! yet), which ends that push.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::cache::{BlockCache, Origin};
use super::fs::{fuse_ino, plan_read};
use crate::archive::{Body, Extent};

/// A read of a file this many inodes or fewer past the last one (or past
/// the end of what was pushed) continues the walk.
pub const PUSH_GAP: u32 = 64;
/// Files larger than this are left to the kernel's own read-ahead.
pub const PUSH_FILE_MAX: u64 = 256 << 10;
/// At most this many bytes of files, and this many files, per push, and
/// this many inodes looked at.
pub const PUSH_BYTES: u64 = 4 << 20;
pub const PUSH_FILES: usize = 512;
pub const PUSH_SCAN: u32 = 2048;
/// Files pushed before the READ that started the push is answered.
pub const PUSH_FIRST: usize = 4;
/// Blocks past a push's last file decoded ahead of the next push, and the
/// most blocks one push queues.
pub const PUSH_LOOKAHEAD: u64 = 2;
const PUSH_BLOCKS_MAX: usize = 16;

/// Where a reader of one archive's files in archive order has got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// The inode of the last whole-file read.
    pub last: u32,
    /// Files before this inode have been pushed (or claimed by a push).
    pub ahead: u32,
}

impl Default for Walk {
    /// No read yet: the first one starts a walk, the second may continue it.
    fn default() -> Walk {
        Walk {
            last: u32::MAX,
            ahead: 0,
        }
    }
}

impl Walk {
    /// Notes a read from offset 0 of file `idx`; when it follows the walk,
    /// returns the first inode to push from (the caller claims the range
    /// with [`Walk::claim`]).
    pub fn read(&mut self, idx: u32) -> Option<u32> {
        let reach = self.last.max(self.ahead).saturating_add(PUSH_GAP);
        let follows = idx > self.last && idx <= reach;
        self.last = idx;
        if !follows {
            // Elsewhere now: what was pushed says nothing about what is next.
            self.ahead = 0;
            return None;
        }
        Some(self.ahead.max(idx.saturating_add(1)))
    }

    /// Inodes `lo..=hi` have just become known to the kernel: where to
    /// push from, when the walk's last push stopped among them (at an
    /// inode the kernel did not hold yet).
    pub fn listed(&self, lo: u32, hi: u32) -> Option<u32> {
        (self.last != u32::MAX && self.ahead > self.last && (lo..=hi).contains(&self.ahead))
            .then_some(self.ahead)
    }

    /// Records that inodes before `end` are being pushed.
    pub fn claim(&mut self, end: u32) {
        self.ahead = self.ahead.max(end);
    }

    /// A push that claimed up to `end` stopped at `at`: the rest is open
    /// again, unless another push has claimed further meanwhile.
    pub fn release(&mut self, end: u32, at: u32) {
        if self.ahead == end {
            self.ahead = at;
        }
    }
}

/// Pushes for one mount: the walks of its readers, and the connection.
pub struct Pusher {
    /// The session's /dev/fuse, once the session is made.
    conn: Arc<OnceLock<OwnedFd>>,
    /// Readers going through each archive's files in order, by entry.
    walks: Mutex<HashMap<u32, Walk>>,
    /// Held by the one session thread that pushes (see [`Pusher::start`]).
    busy: Mutex<()>,
    stats: Mutex<Stats>,
    /// Off for a mount whose other users must see nothing: pushed pages
    /// are read from the kernel's cache without asking the mount.
    off: AtomicBool,
    /// Directory listings continued so far (see [`Pusher::listed`]).
    listings: AtomicU64,
}

/// Counters, for the foreground summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub pushes: u64,
    pub files: u64,
    pub bytes: u64,
    /// Pushes that stopped at an inode the kernel did not hold.
    pub unknown: u64,
    /// Pushes that went on where one stopped, once a listing made the
    /// kernel hold the inodes.
    pub listed: u64,
}

/// One push under way: the files claimed, and how far it has got.
pub struct Push<'p> {
    pusher: &'p Pusher,
    cache: &'p BlockCache,
    _busy: MutexGuard<'p, ()>,
    conn: &'p OwnedFd,
    origin: &'p Origin,
    base: u64,
    files: Vec<(u32, u64, &'p [Extent])>,
    next: usize,
    /// Inodes before this one were claimed.
    end: u32,
    stopped: Option<u32>,
    /// `Pusher::listings` when this push last found an inode not held.
    listings: u64,
}

impl Pusher {
    /// Pushes nothing until [`Pusher::connection`] is set.
    pub fn new() -> Pusher {
        Pusher {
            conn: Arc::new(OnceLock::new()),
            walks: Mutex::new(HashMap::new()),
            busy: Mutex::new(()),
            stats: Mutex::new(Stats::default()),
            off: AtomicBool::new(false),
            listings: AtomicU64::new(0),
        }
    }

    /// Where the session's connection goes once it is made: until then,
    /// and if it never is, nothing is pushed.
    pub fn connection(&self) -> Arc<OnceLock<OwnedFd>> {
        self.conn.clone()
    }

    pub fn stats(&self) -> Stats {
        *lock(&self.stats)
    }

    /// Never push: for a mount whose other users must see nothing, or one
    /// with a single session thread (see [`Pusher::start`]).
    pub fn disable(&self) {
        self.off.store(true, Ordering::Relaxed);
    }

    /// Notes a read from the start of file `idx` of `origin` (FUSE inodes
    /// from `base`); when it continues a walk through the files in order,
    /// claims the files that come next and returns the push of them, from
    /// `cache`'s blocks.
    ///
    /// A push waits for any page a READ in flight holds, and that READ
    /// needs a session thread to be answered; so one session thread at a
    /// time pushes (another finding it busy pushes nothing: the files just
    /// ahead are being pushed already), and a mount with a single session
    /// thread is told not to push. A handler that panics must not end its thread
    /// (see `HbbFs`'s handlers): a push could then wait for ever.
    pub fn start<'p>(
        &'p self,
        cache: &'p BlockCache,
        origin: &'p Origin,
        base: u64,
        idx: u32,
    ) -> Option<Push<'p>> {
        if self.off.load(Ordering::Relaxed) {
            return None;
        }
        let mut walks = lock(&self.walks);
        let walk = walks.entry(origin.id).or_default();
        let from = walk.read(idx)?;
        self.begin(cache, origin, base, walks, from)
    }

    /// Notes that the kernel now holds inodes `lo..=hi` of `origin` (a
    /// directory listing just answered); when a walk's push stopped there,
    /// for want of them, returns the push that goes on from that inode. So
    /// the files of the directory a reader enters are in the kernel's cache
    /// before the reader asks for the first one.
    pub fn listed<'p>(
        &'p self,
        cache: &'p BlockCache,
        origin: &'p Origin,
        base: u64,
        lo: u32,
        hi: u32,
    ) -> Option<Push<'p>> {
        if self.off.load(Ordering::Relaxed) {
            return None;
        }
        // Counted first: a push running meanwhile that finds one of these
        // inodes not held yet tries it again.
        self.listings.fetch_add(1, Ordering::AcqRel);
        let walks = lock(&self.walks);
        let from = walks.get(&origin.id)?.listed(lo, hi)?;
        let push = self.begin(cache, origin, base, walks, from)?;
        lock(&self.stats).listed += 1;
        Some(push)
    }

    /// Claims the files from inode `from` on and makes the push of them.
    fn begin<'p>(
        &'p self,
        cache: &'p BlockCache,
        origin: &'p Origin,
        base: u64,
        mut walks: MutexGuard<'_, HashMap<u32, Walk>>,
        from: u32,
    ) -> Option<Push<'p>> {
        let conn = self.conn.get()?;
        let busy = self.busy.try_lock().ok()?;
        let walk = walks.entry(origin.id).or_default();
        let inodes = &origin.archive.index.inodes;
        let last = (inodes.len() as u64).min(u64::from(from) + u64::from(PUSH_SCAN)) as u32;
        let mut files = Vec::new();
        let mut bytes = 0u64;
        let mut end = from;
        while end < last && files.len() < PUSH_FILES && bytes < PUSH_BYTES {
            if let Body::File { size, extents } = &inodes[end as usize].body
                && *size > 0
                && *size <= PUSH_FILE_MAX
            {
                files.push((end, *size, &extents[..]));
                bytes += size;
            }
            end += 1;
        }
        walk.claim(end);
        drop(walks);
        lock(&self.stats).pushes += 1;
        // The claimed files' blocks and the next ones, decoded from now on:
        // the files are stored in this order, so the next push needs what
        // follows. Without it the decoders wait for the push, and it for them.
        let bs = origin.archive.block_size();
        let stream = |f: &(u32, u64, &[Extent])| {
            let e = f.2.last()?;
            Some((f.2.first()?.stream / bs, (e.stream + e.len.max(1) - 1) / bs))
        };
        if let (Some(lo), Some(hi)) = (
            files.first().and_then(stream).map(|s| s.0),
            files.last().and_then(stream).map(|s| s.1),
        ) && lo <= hi
        {
            let n = origin.archive.index.blocks.len() as u64;
            let ahead: Vec<u64> = (lo..=hi.saturating_add(PUSH_LOOKAHEAD))
                .take(PUSH_BLOCKS_MAX)
                .filter(|&b| b < n)
                .collect();
            cache.prefetch(origin, &ahead);
        }
        Some(Push {
            pusher: self,
            cache,
            _busy: busy,
            conn,
            origin,
            base,
            files,
            next: 0,
            end,
            stopped: None,
            listings: self.listings.load(Ordering::Acquire),
        })
    }
}

impl Push<'_> {
    /// Pushes up to `n` more files; false once the push is over. Before
    /// the reply (`wait` false) it stops at a block not decoded yet, and
    /// has it decoded; after (`wait` true) it waits for such blocks: the
    /// decode workers need no session thread, and the other session
    /// threads answer reads meanwhile.
    pub fn some(&mut self, n: usize, wait: bool) -> bool {
        let a = &self.origin.archive;
        let (bs, blocks) = (a.block_size(), &a.index.blocks);
        let until = self.next.saturating_add(n).min(self.files.len());
        while self.stopped.is_none() && self.next < until {
            let (idx, size, extents) = self.files[self.next];
            let Ok(plan) = plan_read(bs, blocks, size, extents, 0, size) else {
                self.next += 1;
                continue; // its READ will say what is wrong
            };
            let data = match self.cache.cached(self.origin, &plan.blocks) {
                Some(d) => d,
                None if !wait => {
                    self.cache.prefetch(self.origin, &plan.blocks);
                    return true;
                }
                None => {
                    let (tx, rx) = crossbeam_channel::bounded(1);
                    self.cache.get(
                        self.origin,
                        &plan.blocks,
                        Box::new(move |r| {
                            let _ = tx.send(r);
                        }),
                    );
                    match rx.recv() {
                        Ok(Ok(d)) => d,
                        // Damaged: never pushed; its READ fails with EIO.
                        Ok(Err(_)) => {
                            self.next += 1;
                            continue;
                        }
                        // The cache is shutting down.
                        Err(_) => {
                            self.stopped = Some(idx);
                            break;
                        }
                    }
                }
            };
            self.next += 1;
            let ino = fuse_ino(self.base, idx);
            let assembled;
            let bytes = match plan.single(&data) {
                Some(slice) => slice,
                None => match plan.assemble(&data) {
                    Some(buf) => {
                        assembled = buf;
                        &assembled[..]
                    }
                    None => continue,
                },
            };
            let mut sent = store(self.conn, ino, 0, bytes);
            // ENOENT: the kernel does not hold this inode (its directory is
            // not listed yet). A listing answered meanwhile may have been
            // the one that makes it known: then once more.
            let listings = self.pusher.listings.load(Ordering::Acquire);
            if sent.is_err() && listings != self.listings {
                self.listings = listings;
                sent = store(self.conn, ino, 0, bytes);
            }
            let mut st = lock(&self.pusher.stats);
            if sent.is_ok() {
                st.files += 1;
                st.bytes += size;
            } else {
                // Still not held, or the connection is gone.
                st.unknown += 1;
                self.stopped = Some(idx);
            }
        }
        self.stopped.is_none() && self.next < self.files.len()
    }
}

impl Drop for Push<'_> {
    fn drop(&mut self) {
        // What was not pushed is open again for the next push.
        let at = match self.stopped {
            Some(at) => at,
            None => match self.files.get(self.next) {
                Some(&(idx, ..)) => idx,
                None => return,
            },
        };
        lock(&self.pusher.walks)
            .entry(self.origin.id)
            .or_default()
            .release(self.end, at);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// FUSE_NOTIFY_STORE, as `<linux/fuse.h>` numbers it.
const FUSE_NOTIFY_STORE: i32 = 4;

/// Writes `data` into the kernel's page cache of FUSE inode `ino` at
/// `offset`, through the connection `conn` (the session's /dev/fuse).
/// ENOENT: the kernel does not hold that inode.
pub fn store(conn: impl AsFd, ino: u64, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let size =
        u32::try_from(data.len()).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // struct fuse_out_header { u32 len; i32 error (the notify code); u64 unique (0) }
    // struct fuse_notify_store_out { u64 nodeid; u64 offset; u32 size; u32 padding }
    let mut head = [0u8; 40];
    let total = 40 + size;
    head[0..4].copy_from_slice(&total.to_ne_bytes());
    head[4..8].copy_from_slice(&FUSE_NOTIFY_STORE.to_ne_bytes());
    head[16..24].copy_from_slice(&ino.to_ne_bytes());
    head[24..32].copy_from_slice(&offset.to_ne_bytes());
    head[32..36].copy_from_slice(&size.to_ne_bytes());
    let n = rustix::io::writev(conn, &[IoSlice::new(&head), IoSlice::new(data)])?;
    if n != total as usize {
        return Err(std::io::Error::other("short write of a FUSE notification"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_in_order_pushes_ahead_once() {
        let mut w = Walk::default();
        // The first read only starts the walk.
        assert_eq!(w.read(10), None);
        assert_eq!(w.read(11), Some(12));
        let mut w = Walk {
            last: 1000,
            ahead: 0,
        };
        assert_eq!(w.read(5), None, "backwards: no push");
        assert_eq!(w.read(6), Some(7));
        w.claim(300);
        // A file inside the pushed range read anyway (too large, or raced):
        // push on from where the last push ended, never the same files twice.
        assert_eq!(w.read(40), Some(300));
        w.claim(600);
        // The push stopped at 450 (a block not decoded yet).
        w.release(600, 450);
        assert_eq!(w.ahead, 450);
        assert_eq!(w.read(450), Some(451));
        // Far away (another directory, another reader): start over.
        assert_eq!(w.read(50_000), None);
        assert_eq!(w.read(50_001), Some(50_002));
        w.claim(50_300);
        // Back to an earlier place: what was pushed at 50_000 is forgotten.
        assert_eq!(w.read(700), None);
        assert_eq!(w.read(701), Some(702));
    }

    #[test]
    fn a_listing_continues_a_stopped_push_only() {
        let mut w = Walk::default();
        // No reader yet: nothing to continue.
        assert_eq!(w.listed(0, 100), None);
        w.read(10);
        assert_eq!(w.read(11), Some(12));
        w.claim(40);
        // The push stopped at 30, the first file of a directory not listed.
        w.release(40, 30);
        assert_eq!(w.listed(20, 29), None, "another directory");
        assert_eq!(w.listed(30, 35), Some(30));
        assert_eq!(w.listed(25, 31), Some(30));
        // A reader elsewhere (behind the stop): the stop says nothing.
        w.read(50);
        assert_eq!(w.listed(30, 35), None);
    }

    #[test]
    fn release_keeps_a_later_claim() {
        let mut w = Walk { last: 5, ahead: 0 };
        w.claim(100);
        w.claim(200);
        w.release(100, 50);
        assert_eq!(w.ahead, 200);
    }
}
