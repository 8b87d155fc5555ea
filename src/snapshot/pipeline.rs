//! The patent's block-parallel compressor.
//!
//! ```text
//! producer ──(index, raw block)──► N workers ──(index, frame)──► writer
//!    ▲      bounded work channel   zero test, BLAKE3,           reorders by index,
//!    │                             zstd (one context each)      appends frames in order
//!    └────────────── empty buffers back from the writer ◄──────────┘
//! ```
//!
//! The producer (the walk/read of file mode, or the sequential read of
//! volume mode) fills fixed-size block buffers and hands them out in index
//! order; each worker takes the next block, tests it for zeros, hashes it
//! and compresses it; the writer puts frames in block order, so the output
//! does not depend on the thread count or on timing. Memory is bounded: the
//! producer draws its buffers from a pool of `threads + 2` that the writer
//! refills only after a block is written — one being compressed by each
//! worker, one being filled, one ready in the queue (or held by the writer
//! while an earlier block is still being compressed). More buffers gain no
//! speed: the workers are never starved while the producer is faster than
//! them, and when it is slower they wait for it however many buffers are
//! empty. With the workers' zstd contexts (about 1.3 MiB each at level 3)
//! and their frames, this keeps a snapshot of compressible data within
//! (2 × threads + 4) blocks plus its index. Incompressible data can hold
//! more: each worker's scratch frame and up to threads + 1 frames waiting
//! in the writer's reorder map are then each as large as a block, so about
//! 3 × threads + 3 blocks at worst.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::RwLock;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::archive::writer::{ArchiveWriter, Payload};
use crate::error::{Error, Result};
use crate::progress::Progress;

pub struct Config {
    pub threads: usize,
    pub level: i32,
    /// Hand blocks on uncompressed (a remote repository compresses them).
    pub raw: bool,
}

/// Cuts the producer's bytes into blocks of the logical stream.
pub struct BlockSink<'a> {
    bs: u64,
    index: u64,
    buf: Option<Vec<u8>>,
    pool: &'a Receiver<Vec<u8>>,
    work: &'a Sender<Job>,
}

/// A block for the compressors (its number first).
enum Job {
    /// Its bytes, in a buffer of the pool.
    Bytes(u64, Vec<u8>),
    /// That many zero bytes nobody read (a hole of the source).
    Zeros(u64, u32),
}

fn stopped() -> Error {
    Error::Other("the archive writer stopped".into())
}

impl BlockSink<'_> {
    pub fn block_size(&self) -> u64 {
        self.bs
    }

    /// The stream offset the next byte will get.
    pub fn pos(&self) -> u64 {
        self.index * self.bs + self.buf.as_ref().map_or(0, |b| b.len() as u64)
    }

    /// Bytes left in the current block.
    pub fn space(&self) -> u64 {
        self.bs - self.buf.as_ref().map_or(0, |b| b.len() as u64)
    }

    fn buf(&mut self) -> Result<&mut Vec<u8>> {
        if self.buf.is_none() {
            let mut b = self.pool.recv().map_err(|_| stopped())?;
            b.clear();
            b.reserve_exact(self.bs as usize);
            self.buf = Some(b);
        }
        Ok(self.buf.as_mut().unwrap())
    }

    /// Reads up to `max` bytes at `offset` of `fd` (at most what is left of
    /// the current block) straight into the block. Returns the count; 0 is
    /// end of file.
    pub fn read_at(&mut self, fd: BorrowedFd<'_>, offset: u64, max: u64) -> std::io::Result<usize> {
        let n = max.min(self.space()) as usize;
        let buf = self.buf().map_err(std::io::Error::other)?;
        let spare = buf.spare_capacity_mut();
        let n = n.min(spare.len());
        // SAFETY: pread writes at most `n` bytes into the spare capacity,
        // which has room for them; only the bytes it wrote become visible.
        let got = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                spare.as_mut_ptr() as *mut libc::c_void,
                n,
                offset as libc::off_t,
            )
        };
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let got = got as usize;
        unsafe { buf.set_len(buf.len() + got) };
        if buf.len() as u64 == self.bs {
            self.send()?;
        }
        Ok(got)
    }

    /// The bytes of the current, unsent block from stream offset `from`.
    pub fn pending_since(&self, from: u64) -> Option<&[u8]> {
        let start = self.index * self.bs;
        let buf = self.buf.as_ref()?;
        if from < start {
            return None;
        }
        buf.get((from - start) as usize..)
    }

    /// Takes back the bytes from stream offset `pos` on, if they are still
    /// in the current block. Returns whether it could.
    pub fn truncate(&mut self, pos: u64) -> bool {
        let start = self.index * self.bs;
        match &mut self.buf {
            Some(b) if pos >= start && pos <= start + b.len() as u64 => {
                b.truncate((pos - start) as usize);
                true
            }
            None if pos == start => true,
            _ => false,
        }
    }

    /// Appends `n` zero bytes (a hole of the source) without reading them:
    /// whole blocks of them go to the writer as zero blocks without a
    /// buffer, the rest is filled in.
    pub fn zeros(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            let partial = self.buf.as_ref().is_some_and(|b| !b.is_empty());
            if partial || n < self.bs {
                let k = n.min(self.space());
                let buf = self.buf()?;
                buf.resize(buf.len() + k as usize, 0);
                n -= k;
                if self.space() == 0 {
                    self.send().map_err(|_| stopped())?;
                }
            } else {
                self.work
                    .send(Job::Zeros(self.index, self.bs as u32))
                    .map_err(|_| stopped())?;
                self.index += 1;
                n -= self.bs;
            }
        }
        Ok(())
    }

    /// Ends the current block early, so the next byte starts a new block.
    pub fn align(&mut self) -> Result<()> {
        if self.buf.as_ref().is_some_and(|b| !b.is_empty()) {
            self.send().map_err(|_| stopped())?;
        }
        Ok(())
    }

    fn send(&mut self) -> std::io::Result<()> {
        let b = self.buf.take().expect("block buffer");
        self.work
            .send(Job::Bytes(self.index, b))
            .map_err(|_| std::io::Error::other(stopped()))?;
        self.index += 1;
        Ok(())
    }
}

struct Done {
    index: u64,
    len: u32,
    /// The pool's buffer, to give back.
    buf: Option<Vec<u8>>,
    hash: [u8; 32],
    payload: Payload,
}

fn worker(
    level: i32,
    raw: bool,
    work: Receiver<Job>,
    done: Sender<Result<Done>>,
    stored: &RwLock<HashSet<[u8; 32]>>,
) {
    let mut comp = match zstd::bulk::Compressor::new(level) {
        Ok(c) => c,
        Err(e) => {
            let _ = done.send(Err(Error::Other(format!("zstd level {level}: {e}"))));
            return;
        }
    };
    let _ = comp.include_checksum(false);
    let _ = comp.include_contentsize(true);
    let mut scratch: Vec<u8> = Vec::new();
    for job in work {
        let (index, buf) = match job {
            Job::Bytes(index, buf) => (index, buf),
            Job::Zeros(index, zeros) => {
                let msg = Done {
                    index,
                    len: zeros,
                    buf: None,
                    hash: [0; 32],
                    payload: Payload::Zero,
                };
                if done.send(Ok(msg)).is_err() {
                    return;
                }
                continue;
            }
        };
        let r = if is_zero(&buf) {
            Ok(([0; 32], Payload::Zero))
        } else {
            let hash = *blake3::hash(&buf).as_bytes();
            if stored.read().unwrap().contains(&hash) {
                Ok((hash, Payload::Known))
            } else if raw {
                Ok((hash, Payload::Raw(buf.clone())))
            } else {
                // Into a scratch buffer of the worst case's size, then
                // copied out at its real size: a frame is held until the
                // writer takes it, and `compress` would hold a worst-case
                // allocation (the whole block and more) for each.
                scratch.clear();
                scratch.reserve(zstd::zstd_safe::compress_bound(buf.len()));
                comp.compress_to_buffer(&buf, &mut scratch)
                    .map(|_| (hash, Payload::Frame(scratch.as_slice().to_vec())))
                    .map_err(|e| Error::Other(format!("compressing block {index}: {e}")))
            }
        };
        let msg = r.map(|(hash, payload)| Done {
            index,
            len: buf.len() as u32,
            buf: Some(buf),
            hash,
            payload,
        });
        if done.send(msg).is_err() {
            return;
        }
    }
}

pub fn is_zero(b: &[u8]) -> bool {
    let (head, words, tail) = unsafe { b.align_to::<u128>() };
    head.iter().all(|&x| x == 0) && tail.iter().all(|&x| x == 0) && words.iter().all(|&w| w == 0)
}

/// Runs `produce` on its own thread, `cfg.threads` compressors, and the
/// writer on the calling thread. Returns what `produce` returned.
pub fn run<R: Send>(
    cfg: &Config,
    writer: &mut ArchiveWriter,
    progress: &Progress,
    produce: impl FnOnce(&mut BlockSink) -> Result<R> + Send,
) -> Result<R> {
    let threads = cfg.threads.max(1);
    let slots = threads + 2;
    let bs = writer.block_size();
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(slots);
    for _ in 0..slots {
        pool_tx.send(Vec::new()).unwrap();
    }
    let (work_tx, work_rx) = bounded::<Job>(slots);
    let (done_tx, done_rx) = unbounded::<Result<Done>>();
    // Blocks already stored (in a repository) are not compressed again.
    let stored = RwLock::new(
        writer
            .known_hashes()
            .copied()
            .collect::<HashSet<[u8; 32]>>(),
    );

    std::thread::scope(|s| {
        let producer = std::thread::Builder::new()
            .name("hbb-read".into())
            .spawn_scoped(s, {
                let pool_rx = pool_rx.clone();
                move || {
                    let mut sink = BlockSink {
                        bs,
                        index: 0,
                        buf: None,
                        pool: &pool_rx,
                        work: &work_tx,
                    };
                    let r = produce(&mut sink);
                    if r.is_ok() {
                        sink.align()?;
                    }
                    r
                }
            })
            .expect("spawn reader thread");
        drop(pool_rx);
        for t in 0..threads {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            let stored = &stored;
            let level = cfg.level;
            let raw = cfg.raw;
            std::thread::Builder::new()
                .name(format!("hbb-compress-{t}"))
                .spawn_scoped(s, move || worker(level, raw, work_rx, done_tx, stored))
                .expect("spawn compress thread");
        }
        drop(work_rx);
        drop(done_tx);

        let written = (|| -> Result<()> {
            let mut next = 0u64;
            let mut pending = BTreeMap::new();
            for msg in &done_rx {
                let d = msg?;
                pending.insert(d.index, d);
                while let Some(d) = pending.remove(&next) {
                    let len = d.len;
                    let stored_frame = matches!(d.payload, Payload::Frame(_) | Payload::Raw(_));
                    writer.push(d.index, len, d.hash, d.payload)?;
                    if stored_frame {
                        stored.write().unwrap().insert(d.hash);
                    }
                    progress.stored(writer.stored_bytes);
                    if let Some(buf) = d.buf {
                        let _ = pool_tx.send(buf);
                    }
                    next += 1;
                }
            }
            Ok(())
        })();
        // On a writer error, closing the pool and the done channel stops
        // the producer and the workers.
        drop(pool_tx);
        drop(done_rx);
        let produced = producer.join().expect("reader thread panicked");
        written?;
        produced
    })
}
