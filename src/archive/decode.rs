//! Parallel decoding of a list of blocks, delivered in list order: the
//! snapshot pipeline run in reverse. Workers take the next list position
//! (round-robin, as the patent's threads take the next unit), read, check
//! and decompress; the caller sees each block once, in order, with a
//! bounded number of decoded blocks in memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{bounded, unbounded};

use super::reader::{Archive, new_decompressor};
use crate::error::Result;

pub fn for_each_block(
    archive: &Archive,
    blocks: &[u64],
    threads: usize,
    mut f: impl FnMut(u64, Result<&[u8]>) -> Result<()>,
) -> Result<()> {
    let threads = threads.max(1);
    let slots = 2 * threads + 2;
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(slots);
    for _ in 0..slots {
        pool_tx.send(Vec::new()).unwrap();
    }
    let (done_tx, done_rx) = unbounded::<(usize, Vec<u8>, Result<()>)>();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let pool_rx = pool_rx.clone();
            let done_tx = done_tx.clone();
            let next = &next;
            std::thread::Builder::new()
                .name(format!("hbb-decode-{t}"))
                .spawn_scoped(s, move || {
                    let mut dec = new_decompressor();
                    // Take a buffer first, then a position: positions are
                    // then handed out only as fast as the caller consumes.
                    while let Ok(mut buf) = pool_rx.recv() {
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
        let mut pending = BTreeMap::new();
        let mut want = 0usize;
        let mut result = Ok(());
        'recv: for (k, buf, r) in &done_rx {
            pending.insert(k, (buf, r));
            while let Some((buf, r)) = pending.remove(&want) {
                result = f(
                    blocks[want],
                    r.as_ref().map(|_| &buf[..]).map_err(clone_err),
                );
                want += 1;
                if result.is_err() {
                    break 'recv;
                }
                let _ = pool_tx.send(buf);
            }
            if want == blocks.len() {
                break;
            }
        }
        // Closing the pool stops the workers once they finish their block.
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
    mut items: Vec<(u32, super::Extent)>,
    threads: usize,
    mut f: impl FnMut(Piece) -> Result<()>,
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
    let mut scratch = Vec::new();
    for_each_block(archive, &blocks, threads, |b, data| {
        let bstart = b * bs;
        let bend = bstart + bs;
        while next_item < items.len() && items[next_item].1.stream < bend {
            active.push(next_item);
            next_item += 1;
        }
        let zero = matches!(archive.index.blocks[b as usize].loc, super::BlockLoc::Zero);
        let mut k = 0;
        while k < active.len() {
            let (ino, e) = items[active[k]];
            let s = e.stream.max(bstart);
            let t = (e.stream + e.len).min(bend);
            if s < t {
                let rem = remaining.get_mut(&ino).expect("counted");
                *rem -= t - s;
                let (lo, hi) = ((s - bstart) as usize, (t - bstart) as usize);
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
                    ino,
                    offset: e.offset + (s - e.stream),
                    len: t - s,
                    data: piece,
                    zero,
                    last: *rem == 0,
                })?;
            }
            if e.stream + e.len <= bend {
                active.swap_remove(k);
            } else {
                k += 1;
            }
        }
        Ok(())
    })
}
