//! The block cache of a mount: decompressed blocks, shared by all readers
//! and by all the archives of a mount, decoded on one pool of worker threads.
//!
//! ```text
//! read ─► get(blocks, done) ─┬─ all cached ─────────────────────► done(blocks), on the caller's thread
//!                            ├─ one missing (get_here) ─► decode as far as the read needs ─► done(blocks),
//!                            │      on the caller's thread ─► paused (decoded in part), resumed by a later read
//!                            └─ some missing ─► pending ─► pool ─► LRU ─► done(blocks), on a worker
//! sequential read ─► prefetch(next blocks) ─► same pool, served after every demand miss
//! ```
//!
//! One mutex guards the LRU, the table of blocks being decoded and the two
//! work queues; it is never held while a block is read, decoded, hashed or
//! copied, so hits answer at once while misses decode in parallel. A block
//! is decoded once however many readers ask for it meanwhile: later readers
//! wait on the first one's decode. The LRU is bounded in bytes of decoded
//! data; blocks handed to readers are reference-counted, so evicting one
//! never disturbs a reply being built from it.
//!
//! A random read needs a few KiB of a block, on average from its middle.
//! A block whose frame has a check ([`Partial`]) is decoded on the reader's
//! thread only as far as the read needs, and paused there: a later read of
//! it goes on from where it stopped, and it enters the LRU once whole. A
//! few paused blocks are kept (`PAUSED_PER_THREAD` a thread, an eighth of
//! the budget on top of it, the newest even if alone it exceeds that), the
//! least recently used dropped first (read again, such a block is decoded
//! again from its start).
//!
//! A block is keyed by its archive's number in the mount ([`Origin::id`])
//! and its number in that archive, so the archives of a multi-archive mount
//! share the byte budget and the workers; each queued block carries its
//! archive, which the workers decode it from.
//!
//! The archive never changes while mounted, so a damaged block stays
//! damaged: its error is remembered and every read touching it fails at once
//! with the same error (naming the block and its offset) without decoding it
//! again.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use lru::LruCache;

use crate::archive::{Archive, Partial, new_decompressor};
use crate::error::Error;

/// The largest block [`BlockCache::get_here`] decodes whole on the
/// caller's thread, which then keeps a buffer of that size: a larger block
/// takes long enough to decode that a worker's wake-up no longer counts,
/// and would hold the kernel's request thread that much longer. A block
/// that can be decoded in part (format 1.2) is decoded there whatever its
/// size, only as far as the read needs, into a buffer of its own.
const DECODE_HERE_MAX: u64 = 4 << 20;

/// A decompressed block, exactly its index length; or, handed to the one
/// reader it was decoded for, as much of its start as that reader needs.
pub type Data = Arc<Vec<u8>>;
/// Why a block cannot be read (an `Error::Block` naming it).
pub type Failure = Arc<Error>;
/// What a reader does once all its blocks are there (or one failed).
pub type Done = Box<dyn FnOnce(Result<Vec<Data>, Failure>) + Send>;

/// A block of the cache: `(Origin::id, block number in that archive)`.
pub type Key = (u32, u64);

/// An archive whose blocks the cache serves, and its number in the mount
/// (distinct for distinct archives: it keys their blocks).
#[derive(Clone)]
pub struct Origin {
    pub id: u32,
    pub archive: Arc<Archive>,
}

/// Counters, for tests and for the foreground summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Blocks found in the cache.
    pub hits: u64,
    /// Blocks a reader had to wait for.
    pub misses: u64,
    /// Misses that joined a decode already under way.
    pub joined: u64,
    /// Blocks decoded (each at most once while it stays cached).
    pub decoded: u64,
    /// Blocks queued by read-ahead.
    pub prefetched: u64,
    pub cached_blocks: u64,
    pub cached_bytes: u64,
}

pub struct BlockCache {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

struct Shared {
    capacity: u64,
    threads: usize,
    state: Mutex<State>,
    wake: Condvar,
    hits: AtomicU64,
    misses: AtomicU64,
    joined: AtomicU64,
    decoded: AtomicU64,
    prefetched: AtomicU64,
}

struct State {
    lru: LruCache<Key, Data>,
    /// Bytes held by `lru`.
    bytes: u64,
    /// Blocks queued or being decoded, with the readers waiting for them.
    pending: HashMap<Key, Pending>,
    /// Blocks readers wait for, served first.
    demand: VecDeque<Key>,
    /// Blocks read-ahead asked for, served when no reader waits.
    prefetch: VecDeque<Key>,
    /// Blocks found damaged; the archive does not change, so neither do they.
    bad: HashMap<Key, Failure>,
    /// Buffers of evicted blocks no reply still used, for the workers'
    /// next decodes (at most one per worker).
    free: Vec<Vec<u8>>,
    /// Blocks decoded only as far as a read needed (random reads of a
    /// large file), resumed where they stopped if a read needs more, or
    /// dropped, least recently used first, past `threads *
    /// PAUSED_PER_THREAD` of them or `capacity / PAUSED_SHARE` bytes (on
    /// top of the decoded blocks').
    paused: LruCache<Key, Box<Partial>>,
    paused_bytes: u64,
    /// Decoders of blocks done with, for the next ones (boxed, as in
    /// `paused`, which they move to and from).
    #[allow(clippy::vec_box)]
    partials: Vec<Box<Partial>>,
    shutdown: bool,
}

/// Blocks decoded in part hold at most this share of the cache's budget,
/// and there are at most this many of them per thread.
const PAUSED_SHARE: u64 = 8;
const PAUSED_PER_THREAD: usize = 4;

struct Pending {
    /// What to decode the block from.
    archive: Arc<Archive>,
    waiters: Vec<(Arc<Gather>, usize)>,
    /// A worker has taken it.
    started: bool,
    /// It is in the demand queue (not only in the prefetch queue).
    in_demand: bool,
}

/// One reader's blocks, filled in as workers finish them.
struct Gather(Mutex<GatherState>);

struct GatherState {
    slots: Vec<Option<Data>>,
    missing: usize,
    done: Option<Done>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking reader must not take the whole mount down with it: the
    // state is consistent between statements, so carry on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlockCache {
    /// A cache of at most `capacity` bytes of decoded blocks (whatever
    /// archives they come from), decoding on `threads` workers (named
    /// `hbb-mount-N`). The block inserted last is kept even when it alone
    /// exceeds `capacity`.
    pub fn new(capacity: u64, threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            capacity,
            threads,
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                bytes: 0,
                pending: HashMap::new(),
                demand: VecDeque::new(),
                prefetch: VecDeque::new(),
                bad: HashMap::new(),
                free: Vec::new(),
                paused: LruCache::unbounded(),
                paused_bytes: 0,
                partials: Vec::new(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            decoded: AtomicU64::new(0),
            prefetched: AtomicU64::new(0),
        });
        let mut workers = Vec::with_capacity(threads);
        for t in 0..threads {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("hbb-mount-{t}"))
                .spawn(move || s.work());
            match h {
                Ok(h) => workers.push(h),
                Err(e) => {
                    let c = BlockCache { shared, workers };
                    drop(c);
                    return Err(e);
                }
            }
        }
        Ok(BlockCache { shared, workers })
    }

    /// How many blocks of `block_size` bytes read-ahead may queue at once
    /// (0: read-ahead is off, the cache being too small for it).
    pub fn prefetch_limit(&self, block_size: u64) -> usize {
        self.shared.prefetch_limit(block_size)
    }

    /// Calls `done` with the blocks `blocks` (distinct block numbers) of
    /// `origin`, in that order: at once on this thread when all are cached,
    /// otherwise on a worker thread once the missing ones are decoded, or
    /// with the error of the first one found damaged.
    pub fn get(&self, origin: &Origin, blocks: &[u64], done: Done) {
        self.get_on(origin, blocks, done, None)
    }

    /// As [`get`](Self::get), except that a single missing block nobody
    /// is decoding yet is decoded on this thread, which is awake already:
    /// handing it to a sleeping worker costs a cold read the time it takes
    /// the scheduler to wake one (a good part of a millisecond on a VM
    /// whose idle vCPU halts). For the kernel's requests, whose threads
    /// are several, so that one decoding does not hold the others up.
    ///
    /// `needs[k]` is how many bytes from the start of `blocks[k]` the
    /// reader uses. A block decoded here that can be decoded in part (see
    /// [`Partial`]) is decoded only that far and goes to `done` shorter
    /// than its index length; it is kept so, paused, and a later read
    /// that needs more goes on from there.
    pub fn get_here(&self, origin: &Origin, blocks: &[u64], needs: &[usize], done: Done) {
        debug_assert_eq!(blocks.len(), needs.len());
        self.get_on(origin, blocks, done, Some(needs))
    }

    fn get_on(&self, origin: &Origin, blocks: &[u64], done: Done, here: Option<&[usize]>) {
        debug_assert!(
            blocks
                .iter()
                .enumerate()
                .all(|(i, b)| !blocks[..i].contains(b)),
            "blocks must be distinct"
        );
        let sh = &*self.shared;
        let mut st = lock(&sh.state);
        let mut slots = Vec::with_capacity(blocks.len());
        let mut missing = Vec::new();
        let id = origin.id;
        for (k, &b) in blocks.iter().enumerate() {
            let b = (id, b);
            if let Some(f) = st.bad.get(&b) {
                let f = f.clone();
                drop(st);
                done(Err(f));
                return;
            }
            match st.lru.get(&b) {
                Some(d) => slots.push(Some(d.clone())),
                None => {
                    slots.push(None);
                    missing.push(k);
                }
            }
        }
        sh.hits
            .fetch_add((blocks.len() - missing.len()) as u64, Ordering::Relaxed);
        if missing.is_empty() {
            drop(st);
            done(Ok(slots.into_iter().flatten().collect()));
            return;
        }
        sh.misses.fetch_add(missing.len() as u64, Ordering::Relaxed);
        let gather = Arc::new(Gather(Mutex::new(GatherState {
            slots,
            missing: missing.len(),
            done: Some(done),
        })));
        if let Some(needs) = here
            && let [k] = missing[..]
            && let b = (id, blocks[k])
            && (origin.archive.block_size() <= DECODE_HERE_MAX
                || origin.archive.decodes_in_parts(b.1))
            && let Entry::Vacant(v) = st.pending.entry(b)
        {
            v.insert(Pending {
                archive: origin.archive.clone(),
                waiters: vec![(gather.clone(), k)],
                started: true,
                in_demand: true,
            });
            let resumed = st.paused.pop(&b);
            if let Some(p) = &resumed {
                st.paused_bytes -= p.cost() as u64;
            }
            let part = resumed.ok_or_else(|| st.partials.pop());
            drop(st);
            thread_local! {
                static SPARE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            // Taken out while decoding: the readers' callbacks run inside
            // the decode, and one that read again would find it borrowed.
            let mut spare = SPARE.take();
            let need = needs.get(k).copied().unwrap_or(usize::MAX);
            sh.decode_here(
                b,
                origin.archive.clone(),
                part,
                need,
                (gather, k),
                &mut spare,
            );
            SPARE.set(spare);
            return;
        }
        let mut queued = 0;
        for k in missing {
            let b = (id, blocks[k]);
            let st = &mut *st;
            match st.pending.entry(b) {
                Entry::Occupied(mut o) => {
                    let p = o.get_mut();
                    p.waiters.push((gather.clone(), k));
                    if p.started {
                        sh.joined.fetch_add(1, Ordering::Relaxed);
                    } else if !p.in_demand {
                        // Queued by read-ahead only: a reader waits now.
                        p.in_demand = true;
                        st.demand.push_back(b);
                        queued += 1;
                    }
                }
                Entry::Vacant(v) => {
                    v.insert(Pending {
                        archive: origin.archive.clone(),
                        waiters: vec![(gather.clone(), k)],
                        started: false,
                        in_demand: true,
                    });
                    st.demand.push_back(b);
                    queued += 1;
                }
            }
        }
        drop(st);
        for _ in 0..queued {
            sh.wake.notify_one();
        }
    }

    /// Queues `blocks` of `origin` for decoding ahead of need, skipping
    /// those cached, under way or damaged, while fewer than the read-ahead
    /// limit for its block size are queued (from all archives).
    pub fn prefetch(&self, origin: &Origin, blocks: &[u64]) {
        let sh = &*self.shared;
        let limit = sh.prefetch_limit(origin.archive.block_size());
        if limit == 0 || blocks.is_empty() {
            return;
        }
        let mut st = lock(&sh.state);
        let mut queued = 0;
        for &b in blocks {
            if st.prefetch.len() >= limit {
                break;
            }
            let b = (origin.id, b);
            if st.lru.contains(&b) || st.pending.contains_key(&b) || st.bad.contains_key(&b) {
                continue;
            }
            st.pending.insert(
                b,
                Pending {
                    archive: origin.archive.clone(),
                    waiters: Vec::new(),
                    started: false,
                    in_demand: false,
                },
            );
            st.prefetch.push_back(b);
            queued += 1;
        }
        drop(st);
        sh.prefetched.fetch_add(queued as u64, Ordering::Relaxed);
        for _ in 0..queued {
            sh.wake.notify_one();
        }
    }

    /// `blocks` of `origin` if every one is decoded and cached (they are
    /// then the most recently used); otherwise None, and nothing is queued.
    /// Not counted as hits: no reader asked for them.
    pub fn cached(&self, origin: &Origin, blocks: &[u64]) -> Option<Vec<Data>> {
        let mut st = lock(&self.shared.state);
        blocks
            .iter()
            .map(|&b| st.lru.get(&(origin.id, b)).cloned())
            .collect()
    }

    pub fn stats(&self) -> Stats {
        let sh = &*self.shared;
        let st = lock(&sh.state);
        Stats {
            hits: sh.hits.load(Ordering::Relaxed),
            misses: sh.misses.load(Ordering::Relaxed),
            joined: sh.joined.load(Ordering::Relaxed),
            decoded: sh.decoded.load(Ordering::Relaxed),
            prefetched: sh.prefetched.load(Ordering::Relaxed),
            cached_blocks: st.lru.len() as u64,
            cached_bytes: st.bytes,
        }
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.wake.notify_all();
        let me = std::thread::current().id();
        for h in self.workers.drain(..) {
            // The last owner may be a worker finishing a reply: it cannot
            // join itself, and it stops on its own at the shutdown flag.
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
        // Readers still waiting are dropped with their replies, which
        // answer EIO on drop.
    }
}

impl Shared {
    fn prefetch_limit(&self, block_size: u64) -> usize {
        let in_cache = (self.capacity / block_size.max(1)) as usize;
        // Never read ahead more than half the cache holds: prefetched
        // blocks must not evict one another before they are read.
        (2 * self.threads).min(in_cache / 2)
    }

    fn work(&self) {
        let mut dec = new_decompressor();
        // The buffer the next block is decoded into, its pages already
        // touched: faulting a fresh block's pages in (a zeroed page per
        // 4 KiB) is otherwise a good part of a cold read's latency. It is
        // made ready after a reply, while no reader waits on this worker.
        let mut spare: Vec<u8> = Vec::new();
        loop {
            let (b, archive, resumed) = {
                let mut st = lock(&self.state);
                loop {
                    if st.shutdown {
                        return;
                    }
                    if let Some(job) = st.next_job() {
                        break job;
                    }
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            match resumed {
                Some(part) => self.resume(b, archive, part),
                None => self.decode(b, archive, &mut dec, &mut spare),
            }
        }
    }

    /// Decodes block `b` of `archive`, caches it (or remembers why it is
    /// damaged) and hands it to the readers waiting for it. `spare` is the
    /// buffer to decode into, its pages already touched; it is made ready
    /// for the next block afterwards, while no reader waits on this thread.
    fn decode(
        &self,
        b: Key,
        archive: Arc<Archive>,
        dec: &mut zstd::bulk::Decompressor<'static>,
        spare: &mut Vec<u8>,
    ) {
        let block_size = archive.block_size();
        let len = archive
            .index
            .blocks
            .get(b.1 as usize)
            .map_or(0, |x| u64::from(x.len));
        // A short block (a file's tail) gets a buffer of its own size,
        // so that the cache's byte budget holds what it holds.
        let mut buf = if len >= spare.capacity() as u64 / 2 {
            std::mem::take(spare)
        } else {
            Vec::new()
        };
        // Should the decode unwind (a bug: damaged content is an error, not
        // a panic), its readers get an error now, and later ones at once,
        // instead of waiting for a block nobody decodes any more: the
        // kernel's request threads survive a panic (fs::guard).
        let unwinding = FailOnUnwind {
            cache: self,
            b,
            archive: &archive,
        };
        #[cfg(test)]
        if tests::PANIC_AT.with(|p| p.get()) == Some(b) {
            panic!("test: decoding block {b:?} panics");
        }
        let r = archive.read_block_into(b.1, dec, &mut buf).map(|()| buf);
        std::mem::forget(unwinding);
        drop(archive);
        self.complete(b, r);
        self.refill(spare, len, block_size);
    }

    /// Caches block `b` (or remembers why it is damaged) and hands it to
    /// the readers waiting for it.
    fn complete(&self, b: Key, r: crate::error::Result<Vec<u8>>) {
        self.decoded.fetch_add(1, Ordering::Relaxed);
        let (waiters, result) = {
            let mut st = lock(&self.state);
            let waiters = st.pending.remove(&b).map(|p| p.waiters);
            let result = match r {
                Ok(buf) => {
                    let d = Arc::new(buf);
                    st.insert(b, d.clone(), self.capacity, self.threads);
                    Ok(d)
                }
                Err(e) => {
                    let f = Arc::new(e);
                    st.bad.insert(b, f.clone());
                    Err(f)
                }
            };
            (waiters.unwrap_or_default(), result)
        };
        for (g, k) in waiters {
            g.fill(k, result.clone());
        }
    }

    /// Makes `spare` ready for the next block after one of `len` bytes:
    /// sized by the block just decoded (a real one, not the header's word),
    /// when it was a whole block, its pages touched.
    fn refill(&self, spare: &mut Vec<u8>, len: u64, block_size: u64) {
        let want = len as usize;
        if len >= block_size / 2 && spare.capacity() < want {
            let recycled = lock(&self.state).free.pop();
            *spare = match recycled {
                Some(v) if v.capacity() >= want => v,
                _ => crate::sys::populated_buffer(want),
            };
        }
    }

    /// Decodes block `b` on the reader's thread: from where `part` stopped
    /// if it was decoded in part before (`Ok`), else from its start (`Err`,
    /// perhaps with a decoder to start with). The first reader (`first`:
    /// its gather and slot) is answered once its first `need` bytes are
    /// decoded; the block is then left paused, unless other readers came
    /// for it meanwhile (decoded whole for them, here).
    fn decode_here(
        &self,
        b: Key,
        archive: Arc<Archive>,
        part: Result<Box<Partial>, Option<Box<Partial>>>,
        need: usize,
        first: (Arc<Gather>, usize),
        spare: &mut Vec<u8>,
    ) {
        let block_size = archive.block_size();
        let len = archive
            .index
            .blocks
            .get(b.1 as usize)
            .map_or(0, |x| u64::from(x.len));
        let unwinding = FailOnUnwind {
            cache: self,
            b,
            archive: &archive,
        };
        #[cfg(test)]
        if tests::PANIC_AT.with(|p| p.get()) == Some(b) {
            panic!("test: decoding block {b:?} panics");
        }
        let (mut part, resumed) = match part {
            Ok(p) => (p, true),
            Err(p) => (p.unwrap_or_default(), false),
        };
        // The thread's spare buffer serves blocks up to DECODE_HERE_MAX.
        let use_spare = !resumed && block_size <= DECODE_HERE_MAX;
        let started = if resumed {
            Ok(())
        } else {
            // A short block (a file's tail) gets a buffer of its own size,
            // so that the cache's byte budget holds what it holds.
            let buf = if use_spare && len >= spare.capacity() as u64 / 2 {
                std::mem::take(spare)
            } else {
                Vec::new()
            };
            part.start(&archive, b.1, buf)
        };
        let r = started.and_then(|()| part.advance(&archive, need));
        match r {
            Ok(false) => {
                // The reply is sent before `fill` returns: should it panic,
                // `unwinding` still fails the block's other readers.
                part.lend(|d| first.0.fill(first.1, Ok(d)));
                std::mem::forget(unwinding);
                let mut st = lock(&self.state);
                let others = st.pending.get(&b).is_some_and(|p| p.waiters.len() > 1);
                let budget = self.capacity / PAUSED_SHARE;
                // The newest stays, even alone over the budget (as the
                // LRU keeps its newest block): a read near another is
                // likelier soon after it.
                if !others {
                    st.pending.remove(&b);
                    st.paused_bytes += part.cost() as u64;
                    let was = st.paused.put(b, part);
                    debug_assert!(was.is_none(), "a block paused twice");
                    while st.paused.len() > self.threads * PAUSED_PER_THREAD
                        || (st.paused_bytes > budget && st.paused.len() > 1)
                    {
                        match st.paused.pop_lru() {
                            Some((_, old)) => {
                                st.paused_bytes -= old.cost() as u64;
                                st.recycle(old, self.threads);
                            }
                            None => break,
                        }
                    }
                    drop(st);
                } else {
                    drop(st);
                    self.resume(b, archive.clone(), part);
                }
            }
            Ok(true) => {
                std::mem::forget(unwinding);
                let d = part.take();
                lock(&self.state).recycle(part, self.threads);
                self.complete(b, Ok(d));
            }
            Err(e) => {
                std::mem::forget(unwinding);
                lock(&self.state).recycle(part, self.threads);
                self.complete(b, Err(e));
            }
        }
        if use_spare {
            self.refill(spare, len, block_size);
        }
    }

    /// Decodes the rest of block `b`, decoded in part, and hands it out.
    fn resume(&self, b: Key, archive: Arc<Archive>, mut part: Box<Partial>) {
        let unwinding = FailOnUnwind {
            cache: self,
            b,
            archive: &archive,
        };
        let r = part.advance(&archive, usize::MAX).map(|_| part.take());
        std::mem::forget(unwinding);
        lock(&self.state).recycle(part, self.threads);
        self.complete(b, r);
    }
}

/// Fails block `b`'s readers if dropped, which only an unwinding decode
/// does (a finished one forgets it).
struct FailOnUnwind<'a> {
    cache: &'a Shared,
    b: Key,
    archive: &'a Archive,
}

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        let f: Failure = Arc::new(
            self.archive
                .block_err(self.b.1, "decoding it panicked (a bug in hbb)"),
        );
        let waiters = {
            let mut st = lock(&self.cache.state);
            st.bad.insert(self.b, f.clone());
            st.pending.remove(&self.b).map(|p| p.waiters)
        };
        for (g, k) in waiters.unwrap_or_default() {
            g.fill(k, Err(f.clone()));
        }
    }
}

impl State {
    /// The next block to decode, its archive, and where its decoding
    /// stopped if it was decoded in part: readers' first, then read-ahead's.
    #[allow(clippy::type_complexity)]
    fn next_job(&mut self) -> Option<(Key, Arc<Archive>, Option<Box<Partial>>)> {
        while let Some(b) = self
            .demand
            .pop_front()
            .or_else(|| self.prefetch.pop_front())
        {
            if let Some(p) = self.pending.get_mut(&b)
                && !p.started
            {
                p.started = true;
                let archive = p.archive.clone();
                let resumed = self.paused.pop(&b);
                if let Some(r) = &resumed {
                    self.paused_bytes -= r.cost() as u64;
                }
                return Some((b, archive, resumed));
            }
            // Already taken through the other queue.
        }
        None
    }

    /// Keeps `part`'s decoder, not its buffers, for the next block
    /// decoded in part.
    fn recycle(&mut self, mut part: Box<Partial>, threads: usize) {
        if self.partials.len() < threads {
            part.release();
            self.partials.push(part);
        }
    }

    fn insert(&mut self, b: Key, d: Data, capacity: u64, workers: usize) {
        let cost = |d: &Data| d.capacity() as u64;
        self.bytes += cost(&d);
        if let Some(old) = self.lru.put(b, d) {
            self.bytes -= cost(&old);
        }
        // The newest block stays, should it alone exceed the budget (a
        // cache smaller than one block of some archive).
        while self.bytes > capacity && self.lru.len() > 1 {
            match self.lru.pop_lru() {
                Some((_, old)) => {
                    self.bytes -= cost(&old);
                    // Unless a reply still holds it, its buffer is reused.
                    if self.free.len() < workers
                        && let Ok(v) = Arc::try_unwrap(old)
                    {
                        self.free.push(v);
                    }
                }
                None => break,
            }
        }
    }
}

impl Gather {
    fn fill(&self, k: usize, r: Result<Data, Failure>) {
        let mut g = lock(&self.0);
        if g.done.is_none() {
            return; // already failed on another block
        }
        let outcome = match r {
            Err(f) => Some(Err(f)),
            Ok(d) => {
                if let Some(slot) = g.slots.get_mut(k)
                    && slot.is_none()
                {
                    *slot = Some(d);
                    g.missing -= 1;
                }
                (g.missing == 0)
                    .then(|| Ok(std::mem::take(&mut g.slots).into_iter().flatten().collect()))
            }
        };
        if let Some(outcome) = outcome {
            let done = g.done.take();
            drop(g);
            if let Some(done) = done {
                done(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::mpsc;

    /// An archive of one file of `blocks` 64 KiB blocks of distinct bytes
    /// (different for another `salt`).
    fn archive(name: &str, blocks: usize, salt: usize) -> (tempdir::Dir, Arc<Archive>) {
        let (dir, a) = archive_of(name, blocks, salt, 65536);
        (dir, Arc::new(a))
    }

    /// As [`archive`], with blocks of `block_size` bytes.
    fn archive_of(
        name: &str,
        blocks: usize,
        salt: usize,
        block_size: u64,
    ) -> (tempdir::Dir, Archive) {
        let dir = tempdir::Dir::new(name);
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let bs = block_size as usize;
        let data: Vec<u8> = (0..blocks * bs)
            .map(|i| (i / bs * 7 + i % 251 + i / 4093 + salt) as u8)
            .collect();
        std::fs::write(src.join("f"), &data).unwrap();
        let out = dir.path().join("a.hbb");
        let opts = crate::snapshot::Options {
            source: src,
            archive: out.clone(),
            mode: crate::snapshot::ModeChoice::File,
            threads: 2,
            block_size,
            level: 1,
            volume_threshold: 100_000,
            excludes: vec![],
            one_file_system: false,
            allow_mounted_rw: false,
            quiet: true,
            repo: None,
        };
        crate::snapshot::snapshot(&opts).unwrap();
        let a = Archive::open(&out).unwrap();
        (dir, a)
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new(name: &str) -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "hbb-cache-{name}-{}-{:?}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn origin(id: u32, a: &Arc<Archive>) -> Origin {
        Origin {
            id,
            archive: a.clone(),
        }
    }

    fn get_sync(c: &BlockCache, o: &Origin, blocks: &[u64]) -> Result<Vec<Data>, Failure> {
        get_sync_on(c, o, blocks, false)
    }

    /// What a `get_here` of block `b` that needs its first `need` bytes
    /// hands over, which it must do before it returns (on this thread).
    fn get_part(c: &BlockCache, o: &Origin, b: u64, need: usize) -> Vec<u8> {
        let (tx, rx) = mpsc::channel();
        c.get_here(
            o,
            &[b],
            &[need],
            Box::new(move |r| tx.send(r.map(|d| d[0].to_vec())).unwrap()),
        );
        rx.try_recv().expect("answered on this thread").unwrap()
    }

    /// `get`, or `get_here` if `here`, waited for.
    fn get_sync_on(
        c: &BlockCache,
        o: &Origin,
        blocks: &[u64],
        here: bool,
    ) -> Result<Vec<Data>, Failure> {
        let (tx, rx) = mpsc::channel();
        let done: Done = Box::new(move |r| {
            tx.send(r).unwrap();
        });
        if here {
            c.get_here(o, blocks, &vec![usize::MAX; blocks.len()], done);
        } else {
            c.get(o, blocks, done);
        }
        rx.recv().unwrap()
    }

    #[test]
    fn concurrent_misses_decode_once() {
        let (_d, a) = archive("once", 4, 0);
        let c = Arc::new(BlockCache::new(1 << 30, 4).unwrap());
        let o = origin(0, &a);
        let n = 16;
        let barrier = Arc::new(Barrier::new(n));
        let hs: Vec<_> = (0..n)
            .map(|_| {
                let (c, barrier, o) = (c.clone(), barrier.clone(), o.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    get_sync(&c, &o, &[2]).unwrap()
                })
            })
            .collect();
        let mut dec = new_decompressor();
        let want = a.read_block(2, &mut dec).unwrap();
        for h in hs {
            assert_eq!(*h.join().unwrap()[0], want);
        }
        let s = c.stats();
        assert_eq!(s.decoded, 1, "{s:?}");
        assert_eq!(s.hits + s.misses, n as u64);
    }

    thread_local! {
        /// A block whose decode panics, on this thread (tests only).
        pub static PANIC_AT: std::cell::Cell<Option<Key>> = const { std::cell::Cell::new(None) };
    }

    #[test]
    fn a_block_too_large_for_the_paused_budget_is_kept_alone() {
        // A 4 MiB cache: half a MiB for paused blocks, less than one.
        let (_d, a) = archive_of("alone", 2, 0, 1 << 20);
        let mut dec = new_decompressor();
        let whole = a.read_block(1, &mut dec).unwrap();
        let a = Arc::new(a);
        let c = BlockCache::new(4 << 20, 1).unwrap();
        let o = origin(0, &a);
        let part = |b: u64, need: usize| get_part(&c, &o, b, need);
        let first = part(0, 5000);
        assert!(first.len() < whole.len());
        let p = part(1, 5000);
        assert!(p.len() < whole.len());
        // Block 1 was kept (block 0 dropped for it): read on from there.
        let more = part(1, p.len() + 1000);
        assert!(more.len() > p.len() && more.len() < whole.len());
        assert_eq!(more[..], whole[..more.len()]);
        assert_eq!(c.stats().decoded, 0);
        assert_eq!(*get_sync(&c, &o, &[1]).unwrap()[0], whole);
    }

    #[test]
    fn a_reader_that_panics_on_a_part_strands_no_one() {
        let (_d, a) = archive_of("lend-panics", 2, 0, 1 << 20);
        let a = Arc::new(a);
        let c = BlockCache::new(1 << 30, 1).unwrap();
        let o = origin(0, &a);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.get_here(
                &o,
                &[1],
                &[5000],
                Box::new(|_| panic!("test: a reply panics")),
            )
        }));
        assert!(r.is_err());
        // Later readers get an error at once, not a wait.
        let e = get_sync(&c, &o, &[1]).unwrap_err();
        assert!(e.to_string().contains("block 1"), "{e}");
        assert!(get_sync(&c, &o, &[0]).is_ok());
    }

    #[test]
    fn a_decode_that_panics_fails_its_readers_instead_of_stranding_them() {
        let (_d, a) = archive("panics", 3, 0);
        let c = BlockCache::new(1 << 30, 1).unwrap();
        let o = origin(0, &a);
        PANIC_AT.with(|p| p.set(Some((0, 1))));
        // The kernel's request thread survives a panic (fs::guard); the
        // reader must have had its answer by then.
        let (tx, rx) = mpsc::channel();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.get_here(
                &o,
                &[1],
                &[usize::MAX],
                Box::new(move |r| tx.send(r).unwrap()),
            )
        }));
        PANIC_AT.with(|p| p.set(None));
        assert!(r.is_err(), "the decode was to panic");
        let e = rx.try_recv().expect("answered").unwrap_err();
        assert!(e.to_string().contains("block 1"), "{e}");
        // Later readers get the error at once, not a wait.
        let e = get_sync(&c, &o, &[1]).unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        // The other blocks are fine.
        let mut dec = new_decompressor();
        assert_eq!(
            *get_sync(&c, &o, &[2]).unwrap()[0],
            a.read_block(2, &mut dec).unwrap()
        );
    }

    #[test]
    fn a_block_is_decoded_as_far_as_reads_need_and_cached_once_whole() {
        // 1 MiB blocks: eight zstd blocks each, so a frame can be decoded
        // in parts.
        let (_d, a) = archive_of("early", 2, 0, 1 << 20);
        let mut dec = new_decompressor();
        let whole = a.read_block(1, &mut dec).unwrap();
        assert_eq!(whole.len(), 1 << 20);
        let a = Arc::new(a);
        let c = BlockCache::new(1 << 30, 1).unwrap();
        let o = origin(0, &a);
        let part = get_part(&c, &o, 1, 5000);
        assert!(
            part.len() >= 5000 && part.len() < whole.len(),
            "{}",
            part.len()
        );
        assert_eq!(part[..], whole[..part.len()]);
        assert_eq!(c.stats().decoded, 0, "the rest waits for a reader");
        // A read a little further on goes on from there, on this thread.
        let further = part.len() + 1000;
        let more = get_part(&c, &o, 1, further);
        assert!(more.len() >= further && more.len() < whole.len());
        assert_eq!(more[..], whole[..more.len()]);
        // A read of its end (here through a worker) gets it whole, cached.
        assert_eq!(*get_sync(&c, &o, &[1]).unwrap()[0], whole);
        assert_eq!(c.stats().decoded, 1);
        assert_eq!(*get_sync(&c, &o, &[1]).unwrap()[0], whole);
        assert_eq!(c.stats().hits, 1);
        // A read of a block's end needs all of it.
        let got = get_sync_on(&c, &o, &[0], true).unwrap();
        assert_eq!(*got[0], a.read_block(0, &mut dec).unwrap());
        assert_eq!(c.stats().decoded, 2);

        // A block larger than DECODE_HERE_MAX too, on this thread.
        let (_d, a8) = archive_of("early-8m", 1, 0, 8 << 20);
        let whole8 = a8.read_block(0, &mut dec).unwrap();
        let a8 = Arc::new(a8);
        let o8 = origin(1, &a8);
        let part = get_part(&c, &o8, 0, 5000);
        assert!(part.len() >= 5000 && part.len() < whole8.len());
        assert_eq!(part[..], whole8[..part.len()]);
        assert_eq!(*get_sync(&c, &o8, &[0]).unwrap()[0], whole8);

        // With `check_content` (or no frame check) nothing is handed out
        // before the content hash of the whole block is checked.
        let (_d, mut a) = archive_of("early-content", 2, 0, 1 << 20);
        a.check_content = true;
        let a = Arc::new(a);
        let c = BlockCache::new(1 << 30, 1).unwrap();
        let o = origin(0, &a);
        assert_eq!(get_part(&c, &o, 1, 5000), whole);
    }

    #[test]
    fn a_single_miss_is_decoded_on_the_callers_thread_and_once() {
        let (_d, a) = archive("here", 4, 0);
        let c = Arc::new(BlockCache::new(1 << 30, 2).unwrap());
        let o = origin(0, &a);
        let mut dec = new_decompressor();
        // One missing block: answered before get_here returns, on this thread.
        let me = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        c.get_here(
            &o,
            &[1],
            &[usize::MAX],
            Box::new(move |r| tx.send((std::thread::current().id(), r)).unwrap()),
        );
        let (on, r) = rx.try_recv().expect("answered before get_here returned");
        assert_eq!(on, me);
        assert_eq!(*r.unwrap()[0], a.read_block(1, &mut dec).unwrap());
        // Two missing: the workers decode them, as get does.
        let got = get_sync_on(&c, &o, &[2, 3], true).unwrap();
        assert_eq!(*got[1], a.read_block(3, &mut dec).unwrap());
        // Many readers of one block at once, some decoding where they are:
        // one decode, and every reader gets the block.
        let n = 16;
        let barrier = Arc::new(Barrier::new(n));
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let (c, barrier, o) = (c.clone(), barrier.clone(), o.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    get_sync_on(&c, &o, &[0], i % 2 == 0).unwrap()
                })
            })
            .collect();
        let want = a.read_block(0, &mut dec).unwrap();
        for h in hs {
            assert_eq!(*h.join().unwrap()[0], want);
        }
        assert_eq!(c.stats().decoded, 4, "{:?}", c.stats());
    }

    #[test]
    fn bounded_in_bytes_and_in_order() {
        let (_d, a) = archive("bound", 8, 0);
        // Room for two blocks of 64 KiB.
        let c = BlockCache::new(2 * 65536, 2).unwrap();
        let o = origin(0, &a);
        let mut dec = new_decompressor();
        for round in 0..2 {
            let got = get_sync(&c, &o, &[5, 1, 3]).unwrap();
            for (d, b) in got.iter().zip([5, 1, 3]) {
                assert_eq!(
                    **d,
                    a.read_block(b, &mut dec).unwrap(),
                    "round {round} block {b}"
                );
            }
            let s = c.stats();
            assert!(s.cached_bytes <= 2 * 65536, "{s:?}");
            assert!(s.cached_blocks <= 2);
        }
        // The second round found two of them still cached at most.
        assert_eq!(c.stats().decoded, 4, "{:?}", c.stats());
    }

    #[test]
    fn reused_buffers_hold_only_their_own_block() {
        // Eight blocks through room for two, one at a time and in pairs,
        // so evicted blocks' buffers are decoded into again and again.
        let (_d, a) = archive("reuse", 8, 3);
        let c = BlockCache::new(2 * 65536, 2).unwrap();
        let o = origin(0, &a);
        let mut dec = new_decompressor();
        let want: Vec<_> = (0..8).map(|b| a.read_block(b, &mut dec).unwrap()).collect();
        for round in 0..4u64 {
            for b in 0..8u64 {
                let b = (b * 3 + round) % 8;
                let pair = [b, (b + 5) % 8];
                let got = get_sync(&c, &o, &pair).unwrap();
                for (d, k) in got.iter().zip(pair) {
                    assert_eq!(**d, want[k as usize], "round {round} block {k}");
                }
                let s = c.stats();
                assert!(s.cached_bytes <= 2 * 65536, "{s:?}");
            }
        }
    }

    #[test]
    fn archives_share_the_budget_and_never_mix_blocks() {
        // Same block numbers, different bytes.
        let (_d1, a) = archive("two-a", 4, 0);
        let (_d2, b) = archive("two-b", 5, 1);
        let (oa, ob) = (origin(0, &a), origin(1, &b));
        let mut dec = new_decompressor();
        assert_ne!(
            a.read_block(0, &mut dec).unwrap(),
            b.read_block(0, &mut dec).unwrap()
        );
        // Room for three blocks in all.
        let c = BlockCache::new(3 * 65536, 2).unwrap();
        for round in 0..2 {
            for (o, ar) in [(&oa, &a), (&ob, &b)] {
                let got = get_sync(&c, o, &[0, 3]).unwrap();
                for (d, k) in got.iter().zip([0, 3]) {
                    assert_eq!(**d, ar.read_block(k, &mut dec).unwrap(), "round {round}");
                }
                let s = c.stats();
                assert!(s.cached_bytes <= 3 * 65536, "{s:?}");
            }
        }
        let s = c.stats();
        // Four distinct blocks through room for three: the second round
        // finds one of each pair still cached (a3, then b3).
        assert_eq!(s.decoded, 6, "{s:?}");
        // A cache smaller than one block still serves, keeping the newest.
        let tiny = BlockCache::new(1000, 1).unwrap();
        for _ in 0..2 {
            let got = get_sync(&tiny, &ob, &[4]).unwrap();
            assert_eq!(*got[0], b.read_block(4, &mut dec).unwrap());
        }
        let s = tiny.stats();
        assert_eq!((s.decoded, s.cached_blocks), (1, 1), "{s:?}");
        assert_eq!(tiny.prefetch_limit(65536), 0);
    }

    #[test]
    fn prefetch_then_hit() {
        let (_d, a) = archive("prefetch", 6, 0);
        let c = BlockCache::new(1 << 30, 2).unwrap();
        let o = origin(7, &a);
        assert!(c.prefetch_limit(a.block_size()) > 0);
        c.prefetch(&o, &[0, 1, 2]);
        let t0 = std::time::Instant::now();
        while c.stats().cached_blocks < 3 {
            assert!(t0.elapsed().as_secs() < 10, "prefetch did not finish");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        get_sync(&c, &o, &[0, 1, 2]).unwrap();
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.decoded, s.prefetched), (3, 0, 3, 3));
    }

    #[test]
    fn damaged_block_fails_every_time_with_its_number() {
        let (d, a) = archive("bad", 3, 0);
        // Flip a byte in block 1's frame and reopen.
        let off = a.block_offset(1) + 5;
        let path = d.path().join("a.hbb");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[off as usize] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
        let a = Arc::new(Archive::open(&path).unwrap());
        let c = BlockCache::new(1 << 30, 2).unwrap();
        let o = origin(0, &a);
        for _ in 0..2 {
            let e = get_sync(&c, &o, &[0, 1]).unwrap_err();
            assert!(
                matches!(*e, Error::Block { block: 1, .. }),
                "unexpected error {e}"
            );
        }
        assert!(get_sync(&c, &o, &[0, 2]).is_ok());
        // The same block number of another archive is not damaged.
        let (_d2, b) = archive("good", 3, 0);
        assert!(get_sync(&c, &origin(1, &b), &[1]).is_ok());
        assert_eq!(c.stats().decoded, 4);
    }
}
