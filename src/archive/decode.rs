//! Parallel decoding of a list of blocks, delivered in list order: the
//! snapshot pipeline run in reverse. Workers take the next list position
//! (round-robin, as the patent's threads take the next unit), read, check
//! and decompress; the caller sees each block once, in order, with a
//! bounded number of decoded blocks in memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Sender, bounded, select, unbounded};

use super::reader::{Archive, new_decompressor};
use crate::error::Result;

/// A decoded, checked block that may be handed to other threads: its
/// buffer goes back to the decoders when the last reference is dropped.
pub struct Block {
    buf: Vec<u8>,
    pool: Sender<Vec<u8>>,
}

impl std::ops::Deref for Block {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // The pool holds at most as many buffers as were made for it; a
        // closed pool (decoding over) just lets the buffer go.
        let _ = self.pool.try_send(std::mem::take(&mut self.buf));
    }
}

pub fn for_each_block(
    archive: &Archive,
    blocks: &[u64],
    threads: usize,
    mut f: impl FnMut(u64, Result<&[u8]>) -> Result<()>,
) -> Result<()> {
    for_each_shared_block(archive, blocks, threads, 0, |b, data| {
        f(b, data.as_ref().map(|blk| &blk[..]).map_err(clone_err))
    })
}

/// As `for_each_block`, but each block comes as a shared reference that
/// the caller may keep (and send to other threads) after `f` returns; at
/// most `2 * threads + 2 + extra` blocks are decoded or kept at once, so
/// kept blocks hold up decoding until they are dropped. `f` must not keep
/// blocks past the end of the walk (they are dropped by other threads, or
/// before `f` returns for the last time).
pub fn for_each_shared_block(
    archive: &Archive,
    blocks: &[u64],
    threads: usize,
    extra: usize,
    mut f: impl FnMut(u64, Result<Arc<Block>>) -> Result<()>,
) -> Result<()> {
    let threads = threads.max(1);
    let slots = 2 * threads + 2 + extra;
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(slots);
    for _ in 0..slots {
        pool_tx.send(Vec::new()).unwrap();
    }
    let (done_tx, done_rx) = unbounded::<(usize, Vec<u8>, Result<()>)>();
    // Dropped when the walk ends: workers waiting for a buffer then stop,
    // whoever still holds blocks.
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let pool_rx = pool_rx.clone();
            let done_tx = done_tx.clone();
            let stop_rx = stop_rx.clone();
            let next = &next;
            std::thread::Builder::new()
                .name(format!("hbb-decode-{t}"))
                .spawn_scoped(s, move || {
                    let mut dec = new_decompressor();
                    // Take a buffer first, then a position: positions are
                    // then handed out only as fast as the caller consumes.
                    loop {
                        let mut buf = select! {
                            recv(pool_rx) -> b => match b {
                                Ok(b) => b,
                                Err(_) => return,
                            },
                            recv(stop_rx) -> _ => return,
                        };
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= blocks.len() {
                            return;
                        }
                        let r = archive.read_block_into(blocks[k], &mut dec, &mut buf);
                        if done_tx.send((k, buf, r)).is_err() {
                            return;
                        }
                    }
                })
                .expect("spawn decode thread");
        }
        drop(done_tx);
        drop(pool_rx);
        drop(stop_rx);
        let mut pending = BTreeMap::new();
        let mut want = 0usize;
        let mut result = Ok(());
        'recv: for (k, buf, r) in &done_rx {
            pending.insert(k, (buf, r));
            while let Some((buf, r)) = pending.remove(&want) {
                let blk = Block {
                    buf,
                    pool: pool_tx.clone(),
                };
                result = f(blocks[want], r.map(|()| Arc::new(blk)));
                want += 1;
                if result.is_err() {
                    break 'recv;
                }
            }
            if want == blocks.len() {
                break;
            }
        }
        // No more positions; closing the pool and the stop channel stops
        // the workers once they finish their block.
        next.store(usize::MAX / 2, Ordering::Relaxed);
        drop(stop_tx);
        drop(pool_tx);
        drop(done_rx);
        result
    })
}

fn clone_err(e: &crate::error::Error) -> crate::error::Error {
    use crate::error::Error;
    match e {
        Error::Block {
            path,
            block,
            offset,
            msg,
        } => Error::Block {
            path: path.clone(),
            block: *block,
            offset: *offset,
            msg: msg.clone(),
        },
        other => Error::Other(other.to_string()),
    }
}

/// One piece of a file's data, as `for_each_piece` delivers it.
pub struct Piece<'b> {
    pub ino: u32,
    /// Offset in the file of the first byte.
    pub offset: u64,
    pub len: u64,
    /// The bytes, or why the block holding them could not be read.
    pub data: std::result::Result<&'b [u8], &'b crate::error::Error>,
    /// The bytes come from an all-zero block (stored as nothing).
    pub zero: bool,
    /// No more pieces of this inode follow.
    pub last: bool,
}

/// Walks the given extents in stream order, decoding each needed block once
/// (in parallel) and handing every inode's bytes to `f`, piece by piece.
pub fn for_each_piece(
    archive: &Archive,
    items: Vec<(u32, super::Extent)>,
    threads: usize,
    mut f: impl FnMut(Piece) -> Result<()>,
) -> Result<()> {
    let mut scratch = Vec::new();
    for_each_span(archive, items, threads, 0, |data, spans| {
        for sp in spans {
            let (lo, hi) = (sp.lo, sp.hi);
            let piece = match &data {
                Ok(bytes) => Ok(match bytes.get(lo..hi) {
                    Some(p) => p,
                    None => {
                        // Bytes past a short block's end read as zeros.
                        scratch.clear();
                        scratch.extend_from_slice(bytes.get(lo..).unwrap_or(&[]));
                        scratch.resize(hi - lo, 0);
                        &scratch[..]
                    }
                }),
                Err(e) => Err(e),
            };
            f(Piece {
                ino: sp.ino,
                offset: sp.offset,
                len: sp.len,
                data: piece,
                zero: sp.zero,
                last: sp.last,
            })?;
        }
        Ok(())
    })
}

/// Where one piece of a file lies in a decoded block.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub ino: u32,
    /// Offset in the file of the first byte.
    pub offset: u64,
    pub len: u64,
    /// The piece is `block[lo..hi]`; bytes past a short block's end read
    /// as zeros.
    pub lo: usize,
    pub hi: usize,
    /// The bytes come from an all-zero block (stored as nothing).
    pub zero: bool,
    /// No more pieces of this inode follow.
    pub last: bool,
}

/// As `for_each_piece`, block by block: `f` gets each block needed (as a
/// shared reference it may keep, see `for_each_shared_block`) with the
/// pieces of files it holds, in stream order.
pub fn for_each_span(
    archive: &Archive,
    mut items: Vec<(u32, super::Extent)>,
    threads: usize,
    extra: usize,
    mut f: impl FnMut(Result<Arc<Block>>, &[Span]) -> Result<()>,
) -> Result<()> {
    use std::collections::HashMap;
    let bs = archive.block_size();
    items.retain(|(_, e)| e.len > 0);
    items.sort_by_key(|(ino, e)| (e.stream, *ino));
    let mut remaining: HashMap<u32, u64> = HashMap::new();
    for (ino, e) in &items {
        *remaining.entry(*ino).or_default() += e.len;
    }
    let mut blocks: Vec<u64> = Vec::new();
    for (_, e) in &items {
        let first = e.stream / bs;
        let last = (e.stream + e.len - 1) / bs;
        let from = match blocks.last() {
            Some(&l) if l >= first => l + 1,
            _ => first,
        };
        blocks.extend(from..=last);
    }
    let mut next_item = 0usize;
    let mut active: Vec<usize> = Vec::new();
    let mut spans: Vec<Span> = Vec::new();
    for_each_shared_block(archive, &blocks, threads, extra, |b, data| {
        let bstart = b * bs;
        let bend = bstart + bs;
        while next_item < items.len() && items[next_item].1.stream < bend {
            active.push(next_item);
            next_item += 1;
        }
        let zero = matches!(archive.index.blocks[b as usize].loc, super::BlockLoc::Zero);
        spans.clear();
        let mut k = 0;
        while k < active.len() {
            let (ino, e) = items[active[k]];
            let s = e.stream.max(bstart);
            let t = (e.stream + e.len).min(bend);
            if s < t {
                let rem = remaining.get_mut(&ino).expect("counted");
                *rem -= t - s;
                spans.push(Span {
                    ino,
                    offset: e.offset + (s - e.stream),
                    len: t - s,
                    lo: (s - bstart) as usize,
                    hi: (t - bstart) as usize,
                    zero,
                    last: *rem == 0,
                });
            }
            if e.stream + e.len <= bend {
                active.swap_remove(k);
            } else {
                k += 1;
            }
        }
        f(data, &spans)
    })
}
