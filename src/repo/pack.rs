//! Pack files: the frames of a repository, many blocks to a file.
//!
//! ```text
//! header   32 bytes: "HBBPACK\n", version 1.0 (u16, u16), flags (u32, 0), pack id (16)
//! frames   zstd frames, one per block, exactly as in an archive
//! trailer  one zstd frame: postcard Vec<PackEntry> (hash, length, offset, frame length)
//! footer   32 bytes: "HBBPKEND", trailer offset (u64), trailer length (u64),
//!          entry count (u32), check (u32: blake3(footer[0..28])[0..4])
//! ```
//!
//! A pack is written under `tmp/` and renamed into `data/XX/ID.pack` only
//! once complete and fsynced, so every pack under `data/` is whole. The
//! trailer repeats what the snapshots' indexes say about its frames; it lets
//! a snapshot that was interrupted after some packs were sealed be resumed
//! without storing those blocks again, and `hbb repo check` read a pack alone.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::archive::format::{ExternalSource, check32};
use crate::archive::reader::FrameStore;
use crate::error::{Error, IoContext, Result};

pub const PACK_MAGIC: [u8; 8] = *b"HBBPACK\n";
pub const PACK_END_MAGIC: [u8; 8] = *b"HBBPKEND";
pub const PACK_HEADER: usize = 32;
pub const PACK_FOOTER: usize = 32;
/// A pack is sealed once it holds this many bytes of frames.
pub const PACK_TARGET: u64 = 64 << 20;

pub type PackId = [u8; 16];

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackEntry {
    pub hash: [u8; 32],
    pub len: u32,
    pub offset: u64,
    pub clen: u32,
}

pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex16(s: &str) -> Option<PackId> {
    if s.len() != 32
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

/// `data/XX/ID.pack`, relative to the repository.
pub fn rel_path(id: &PackId) -> String {
    let h = hex(id);
    format!("data/{}/{h}.pack", &h[..2])
}

/// The pack id a source name stands for, if it is a pack's name at all.
pub fn id_of_name(name: &[u8]) -> Option<PackId> {
    let s = std::str::from_utf8(name).ok()?;
    let rest = s.strip_prefix("data/")?;
    let (dir, file) = rest.split_once('/')?;
    let id = parse_hex16(file.strip_suffix(".pack")?)?;
    (dir == &hex(&id)[..2]).then_some(id)
}

fn header(id: &PackId) -> [u8; PACK_HEADER] {
    let mut h = [0u8; PACK_HEADER];
    h[..8].copy_from_slice(&PACK_MAGIC);
    h[8..10].copy_from_slice(&1u16.to_le_bytes());
    h[10..12].copy_from_slice(&0u16.to_le_bytes());
    h[16..32].copy_from_slice(id);
    h
}

fn footer(trailer_offset: u64, trailer_len: u64, count: u32) -> [u8; PACK_FOOTER] {
    let mut f = [0u8; PACK_FOOTER];
    f[..8].copy_from_slice(&PACK_END_MAGIC);
    f[8..16].copy_from_slice(&trailer_offset.to_le_bytes());
    f[16..24].copy_from_slice(&trailer_len.to_le_bytes());
    f[24..28].copy_from_slice(&count.to_le_bytes());
    let c = check32(&f[..28]);
    f[28..32].copy_from_slice(&c.to_le_bytes());
    f
}

struct Open {
    id: PackId,
    tmp: PathBuf,
    out: BufWriter<File>,
    pos: u64,
    entries: Vec<PackEntry>,
}

/// Appends frames to packs, sealing one and starting the next every
/// `PACK_TARGET` bytes.
pub struct PackWriter {
    root: PathBuf,
    cur: Option<Open>,
    sealed: Vec<PackId>,
    pub bytes: u64,
    /// A write failed: the open pack was thrown away (a partial frame
    /// would shift every later offset), and nothing more is taken.
    failed: bool,
}

impl PackWriter {
    pub fn new(root: &Path) -> PackWriter {
        PackWriter {
            root: root.to_path_buf(),
            cur: None,
            sealed: Vec::new(),
            bytes: 0,
            failed: false,
        }
    }

    fn check(&self) -> Result<()> {
        if self.failed {
            return Err(Error::Other(
                "an earlier write to a pack failed; this writer stores nothing more".into(),
            ));
        }
        Ok(())
    }

    /// Throws the open pack away after a failed write.
    fn fail(&mut self, e: Error) -> Error {
        self.failed = true;
        if let Some(o) = self.cur.take() {
            let _ = std::fs::remove_file(&o.tmp);
        }
        e
    }

    /// Stores one frame; returns the pack and offset it went to.
    pub fn add(&mut self, hash: [u8; 32], len: u32, frame: &[u8]) -> Result<(PackId, u64)> {
        self.check()?;
        self.add_inner(hash, len, frame).map_err(|e| self.fail(e))
    }

    fn add_inner(&mut self, hash: [u8; 32], len: u32, frame: &[u8]) -> Result<(PackId, u64)> {
        if self.cur.is_none() {
            let id = crate::sys::random_id();
            let tmp =
                self.root
                    .join("tmp")
                    .join(format!("{}.pack.{}", hex(&id), std::process::id()));
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .at(&tmp)?;
            let mut out = BufWriter::with_capacity(1 << 20, f);
            out.write_all(&header(&id)).at(&tmp)?;
            self.cur = Some(Open {
                id,
                tmp,
                out,
                pos: PACK_HEADER as u64,
                entries: Vec::new(),
            });
        }
        let o = self.cur.as_mut().unwrap();
        let offset = o.pos;
        o.out.write_all(frame).at(&o.tmp)?;
        o.pos += frame.len() as u64;
        o.entries.push(PackEntry {
            hash,
            len,
            offset,
            clen: frame.len() as u32,
        });
        self.bytes += frame.len() as u64;
        let id = o.id;
        if o.pos >= PACK_TARGET {
            self.seal()?;
        }
        Ok((id, offset))
    }

    fn seal(&mut self) -> Result<()> {
        self.check()?;
        let tmp = self.cur.as_ref().map(|o| o.tmp.clone());
        self.seal_inner().map_err(|e| {
            if let Some(t) = tmp {
                let _ = std::fs::remove_file(t);
            }
            self.fail(e)
        })
    }

    fn seal_inner(&mut self) -> Result<()> {
        let Some(mut o) = self.cur.take() else {
            return Ok(());
        };
        let raw = postcard::to_stdvec(&o.entries)
            .map_err(|e| Error::Other(format!("encoding a pack trailer: {e}")))?;
        let mut c =
            zstd::bulk::Compressor::new(3).map_err(|e| Error::Other(format!("zstd: {e}")))?;
        let _ = c.include_checksum(true);
        let trailer = c
            .compress(&raw)
            .map_err(|e| Error::Other(format!("compressing a pack trailer: {e}")))?;
        o.out.write_all(&trailer).at(&o.tmp)?;
        o.out
            .write_all(&footer(o.pos, trailer.len() as u64, o.entries.len() as u32))
            .at(&o.tmp)?;
        o.out.flush().at(&o.tmp)?;
        o.out.get_ref().sync_all().at(&o.tmp)?;
        let dest = self.root.join(rel_path(&o.id));
        let dir = dest.parent().unwrap();
        std::fs::create_dir_all(dir).at(dir)?;
        std::fs::rename(&o.tmp, &dest).at(&dest)?;
        crate::repo::fsync_dir(dir)?;
        self.sealed.push(o.id);
        Ok(())
    }

    /// Seals the open pack; every pack written is then durable under `data/`.
    pub fn finish(&mut self) -> Result<Vec<PackId>> {
        self.seal()?;
        Ok(std::mem::take(&mut self.sealed))
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        if let Some(o) = self.cur.take() {
            let _ = std::fs::remove_file(&o.tmp);
        }
    }
}

/// Reads a whole pack's trailer (checked) — for resuming, checks, gc.
pub fn read_trailer(path: &Path) -> Result<(PackId, Vec<PackEntry>)> {
    let f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    let bad = |m: &str| Error::corrupt(path, format!("pack: {m}"));
    if len < (PACK_HEADER + PACK_FOOTER) as u64 {
        return Err(bad("too short"));
    }
    let mut h = [0u8; PACK_HEADER];
    f.read_exact_at(&mut h, 0).at(path)?;
    if h[..8] != PACK_MAGIC || h[8..10] != 1u16.to_le_bytes() {
        return Err(bad("not an hbb pack (or an unknown pack version)"));
    }
    let id: PackId = h[16..32].try_into().unwrap();
    let mut ft = [0u8; PACK_FOOTER];
    f.read_exact_at(&mut ft, len - PACK_FOOTER as u64)
        .at(path)?;
    if ft[..8] != PACK_END_MAGIC
        || u32::from_le_bytes(ft[28..32].try_into().unwrap()) != check32(&ft[..28])
    {
        return Err(bad("no valid footer (incomplete or damaged)"));
    }
    let toff = u64::from_le_bytes(ft[8..16].try_into().unwrap());
    let tlen = u64::from_le_bytes(ft[16..24].try_into().unwrap());
    let count = u32::from_le_bytes(ft[24..28].try_into().unwrap());
    if toff < PACK_HEADER as u64 || toff.checked_add(tlen) != Some(len - PACK_FOOTER as u64) {
        return Err(bad("trailer out of range"));
    }
    let mut comp = vec![0u8; tlen as usize];
    f.read_exact_at(&mut comp, toff).at(path)?;
    // Every frame takes at least 9 bytes of the pack: a count the pack
    // cannot hold is refused before anything is allocated for it.
    if count as u64 > toff / 9 {
        return Err(bad("trailer claims more entries than the pack can hold"));
    }
    let limit = (count as usize).saturating_mul(64).saturating_add(64);
    let raw = zstd::bulk::decompress(&comp, limit)
        .map_err(|e| bad(&format!("trailer does not decompress: {e}")))?;
    let entries: Vec<PackEntry> =
        postcard::from_bytes(&raw).map_err(|e| bad(&format!("trailer does not decode: {e}")))?;
    if entries.len() != count as usize
        || entries.iter().any(|e| {
            e.offset < PACK_HEADER as u64
                || e.offset
                    .checked_add(e.clen as u64)
                    .is_none_or(|end| end > toff)
        })
    {
        return Err(bad("trailer entries out of range"));
    }
    Ok((id, entries))
}

/// Reads frames from a repository's packs, for archives with `External` blocks.
pub struct PackStore {
    root: PathBuf,
    open: Mutex<HashMap<PackId, Arc<File>>>,
    /// A shared lock on `readers.lock`, held while any snapshot of the
    /// repository is open: gc deletes packs only under the exclusive lock.
    _readers: Option<File>,
}

impl PackStore {
    pub fn new(root: &Path, readers: Option<File>) -> PackStore {
        PackStore {
            root: root.to_path_buf(),
            open: Mutex::new(HashMap::new()),
            _readers: readers,
        }
    }

    fn file(&self, src: &ExternalSource) -> std::io::Result<Arc<File>> {
        let id = id_of_name(&src.name)
            .filter(|id| *id == src.archive_id)
            .ok_or_else(|| std::io::Error::other("not a pack of this repository"))?;
        if let Some(f) = self.open.lock().unwrap().get(&id) {
            return Ok(f.clone());
        }
        let path = self.root.join(rel_path(&id));
        let f = File::open(&path)?;
        let mut h = [0u8; PACK_HEADER];
        f.read_exact_at(&mut h, 0)?;
        if h[..8] != PACK_MAGIC || h[16..32] != id {
            return Err(std::io::Error::other(
                "pack header does not match its name (damaged or misplaced pack)",
            ));
        }
        let f = Arc::new(f);
        self.open.lock().unwrap().insert(id, f.clone());
        Ok(f)
    }
}

impl FrameStore for PackStore {
    fn read_frame(
        &self,
        source: &ExternalSource,
        offset: u64,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        if offset < PACK_HEADER as u64 {
            return Err(std::io::Error::other("frame offset inside the pack header"));
        }
        self.file(source)?.read_exact_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pack with a valid footer whose trailer holds `entries` and whose
    /// footer says `count`.
    fn crafted(dir: &Path, entries: &[PackEntry], count: u32) -> PathBuf {
        let mut b = header(&[7; 16]).to_vec();
        b.extend_from_slice(&[0u8; 100]);
        let toff = b.len() as u64;
        let raw = postcard::to_stdvec(entries).unwrap();
        let t = zstd::bulk::compress(&raw, 3).unwrap();
        b.extend_from_slice(&t);
        b.extend_from_slice(&footer(toff, t.len() as u64, count));
        let p = dir.join(format!("crafted-{count}.pack"));
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn a_trailer_entry_past_u64_is_refused_not_panicked_on() {
        let dir = std::env::temp_dir().join(format!("hbb-pack-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let huge = PackEntry {
            hash: [1; 32],
            len: 10,
            offset: u64::MAX - 5,
            clen: 100,
        };
        assert!(read_trailer(&crafted(&dir, &[huge], 1)).is_err());
        let one = PackEntry {
            offset: PACK_HEADER as u64,
            ..huge
        };
        assert!(read_trailer(&crafted(&dir, &[one], 1)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
