//! Opens an archive from its end: footer → index → any block, in O(1) seeks.
//!
//! Every number taken from the archive is checked against the file's size
//! and the format's limits before it is used to allocate or to seek; every
//! block is checked against its BLAKE3 hash before its bytes are returned.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::*;
use crate::error::{Error, IoContext, Result};

/// Where an archive's bytes come from: a file, or memory (tests, fuzzing).
pub trait Source: Send + Sync {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl Source for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl Source for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Where `BlockLoc::External` frames are read from (a repository's packs).
pub trait FrameStore: Send + Sync {
    /// Reads the `buf.len()` bytes at `offset` of `source`.
    fn read_frame(
        &self,
        source: &ExternalSource,
        offset: u64,
        buf: &mut [u8],
    ) -> std::io::Result<()>;
}

/// Largest frame buffer a thread keeps between blocks.
const KEEP_FRAME_BUFFER: usize = 64 << 20;

pub struct Archive {
    file: Box<dyn Source>,
    pub path: PathBuf,
    pub header: Header,
    pub footer: Footer,
    pub index: Index,
    /// What format 1.1 adds (default for 1.0 archives).
    pub ext: Extension,
    /// What format 1.2 adds: each block's frame check (empty before 1.2).
    pub checks: Vec<[u8; 16]>,
    /// Check every block's content hash on reading even where its frame
    /// check would do (`hbb verify`, which checks both).
    pub check_content: bool,
    pub file_len: u64,
    store: Option<std::sync::Arc<dyn FrameStore>>,
}

impl Archive {
    pub fn open(path: &Path) -> Result<Archive> {
        use std::os::unix::fs::MetadataExt;
        loop {
            let file = File::open(path).at(path)?;
            let md = file.metadata().at(path)?;
            let mut a = Archive::from_source(Box::new(file), md.len(), path)?;
            if !a.index.sources.is_empty() {
                a.store = crate::repo::store_for(path, &a)?;
                // Read before the readers' lock was taken, a repository
                // snapshot may have been rewritten (or deleted) by a prune
                // since, and the packs its old index names deleted.
                let now = std::fs::metadata(path).ok();
                if a.store.is_some()
                    && now.is_none_or(|n| n.dev() != md.dev() || n.ino() != md.ino())
                {
                    continue;
                }
            }
            return Ok(a);
        }
    }

    /// Reads `External` blocks from `store`.
    pub fn attach_store(&mut self, store: std::sync::Arc<dyn FrameStore>) {
        self.store = Some(store);
    }

    /// Opens an archive held in memory; `name` is used in messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &Path) -> Result<Archive> {
        let len = bytes.len() as u64;
        Archive::from_source(Box::new(bytes), len, name)
    }

    pub fn from_source(file: Box<dyn Source>, file_len: u64, path: &Path) -> Result<Archive> {
        if file_len < (HEADER_SIZE + FOOTER_SIZE) as u64 {
            let mut first = [0u8; 8];
            let magic = file.read_exact_at(&mut first, 0).is_ok() && first == HEADER_MAGIC;
            if magic {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "incomplete archive: only {file_len} bytes, no footer (interrupted snapshot or truncated file)"
                    ),
                ));
            }
            return Err(Error::corrupt(
                path,
                format!("not an hbb archive ({file_len} bytes, too short)"),
            ));
        }
        let mut hb = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut hb, 0).at(path)?;
        let header = Header::decode(&hb).map_err(|m| Error::corrupt(path, m))?;

        let mut fb = [0u8; FOOTER_SIZE];
        let footer_at = file_len - FOOTER_SIZE as u64;
        file.read_exact_at(&mut fb, footer_at).at(path)?;
        let footer = Footer::decode(&fb).map_err(|m| {
            Error::corrupt(path, format!("{m} (footer expected at offset {footer_at})"))
        })?;
        if footer.version_major != VERSION_MAJOR {
            return Err(Error::corrupt(
                path,
                format!(
                    "archive format version {}.{} is not supported by this hbb (it reads {}.x)",
                    footer.version_major, footer.version_minor, VERSION_MAJOR
                ),
            ));
        }
        if footer.archive_id != header.archive_id {
            return Err(Error::corrupt(
                path,
                "footer belongs to another archive (archive ids differ)",
            ));
        }
        let end = footer
            .index_offset
            .checked_add(footer.index_clen)
            .filter(|&e| e == footer_at && footer.index_offset >= HEADER_SIZE as u64);
        if end.is_none() {
            return Err(Error::corrupt(
                path,
                format!(
                    "footer: index at offset {} length {} does not end at the footer ({footer_at})",
                    footer.index_offset, footer.index_clen
                ),
            ));
        }
        if footer.index_rlen > MAX_INDEX_RAW {
            return Err(Error::corrupt(
                path,
                format!(
                    "footer: index of {} bytes exceeds the limit",
                    footer.index_rlen
                ),
            ));
        }
        let mut comp = vec![0u8; footer.index_clen as usize];
        file.read_exact_at(&mut comp, footer.index_offset)
            .at(path)?;
        if *blake3::hash(&comp).as_bytes() != footer.index_hash {
            return Err(Error::corrupt(
                path,
                format!(
                    "index at offset {} is damaged (hash mismatch); the data frames may still be intact",
                    footer.index_offset
                ),
            ));
        }
        // Streamed, so that memory follows the bytes actually produced,
        // never a declared size alone.
        let mut raw = Vec::new();
        let bad_index = |e: std::io::Error| {
            Error::corrupt(
                path,
                format!("index at offset {}: {e}", footer.index_offset),
            )
        };
        {
            use std::io::Read;
            let dec = zstd::stream::read::Decoder::with_buffer(&comp[..]).map_err(bad_index)?;
            dec.take(footer.index_rlen + 1)
                .read_to_end(&mut raw)
                .map_err(bad_index)?;
        }
        // Each copy of the index is let go as soon as the next one is made:
        // the peak memory of opening a large archive is their sum.
        drop(comp);
        if raw.len() as u64 != footer.index_rlen {
            return Err(Error::corrupt(
                path,
                "index: decompressed length differs from the footer's",
            ));
        }
        let (index, rest): (Index, &[u8]) = postcard::take_from_bytes(&raw)
            .map_err(|e| Error::corrupt(path, format!("index does not decode: {e}")))?;
        // 1.1: the extension record follows; anything after it belongs to
        // later minor versions and is ignored.
        let (ext, rest) = if rest.is_empty() {
            (Extension::default(), rest)
        } else {
            postcard::take_from_bytes::<Extension>(rest).map_err(|e| {
                Error::corrupt(path, format!("index extension does not decode: {e}"))
            })?
        };
        // 1.2: the frame checks follow, one per block. Bytes there in an
        // older minor version are some other writer's, and ignored.
        let checks = if rest.is_empty() || footer.version_minor < 2 {
            Vec::new()
        } else {
            match postcard::take_from_bytes::<FrameChecks>(rest) {
                Ok((c, _)) if c.checks.len() == index.blocks.len() => c.checks,
                // Not what a writer makes: every block's content hash is
                // checked instead, which loses nothing.
                Ok((c, _)) => {
                    log::warn!(
                        "{}: index: {} frame checks for {} blocks; ignored, content hashes are checked instead",
                        path.display(),
                        c.checks.len(),
                        index.blocks.len()
                    );
                    Vec::new()
                }
                Err(e) => {
                    log::warn!(
                        "{}: index: frame checks do not decode ({e}); ignored, content hashes are checked instead",
                        path.display()
                    );
                    Vec::new()
                }
            }
        };
        drop(raw);
        let a = Archive {
            file,
            path: path.to_path_buf(),
            header,
            footer,
            index,
            ext,
            checks,
            check_content: false,
            file_len,
            store: None,
        };
        a.validate()?;
        Ok(a)
    }

    /// Structural checks of the index, so that later code can index without
    /// panicking: ranges within bounds, no directory cycles. (A directory
    /// that no entry names is unreachable, hence harmless, and not refused.)
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::corrupt(&self.path, format!("index: {m}")));
        let idx = &self.index;
        let bs = self.header.block_size;
        let data_end = self.footer.index_offset;
        for (k, src) in idx.sources.iter().enumerate() {
            let ok = !src.name.is_empty()
                && src.name[0] != b'/'
                && src.name.split(|&b| b == b'/').all(valid_name);
            if !ok {
                return bad(format!(
                    "external source {k}: invalid name {:?}",
                    String::from_utf8_lossy(&src.name)
                ));
            }
        }
        if let Some(si) = &self.ext.snapshot
            && !si.source_ids.is_empty()
            && si.source_ids.len() != idx.inodes.len()
        {
            return bad("extension: source ids do not match the inodes".into());
        }
        if idx.inodes.is_empty() || !matches!(idx.inodes[0].body, Body::Dir { .. }) {
            return bad("no root directory".into());
        }
        if idx.inodes.len() > u32::MAX as usize - 1 {
            return bad("too many inodes".into());
        }
        for (i, b) in idx.blocks.iter().enumerate() {
            if b.len as u64 > bs {
                return bad(format!(
                    "block {i}: length {} exceeds block size {bs}",
                    b.len
                ));
            }
            match b.loc {
                BlockLoc::Zero => {}
                BlockLoc::Frame { offset, clen } => {
                    if clen as u64 > max_frame_len(bs) {
                        return bad(format!(
                            "block {i}: frame of {clen} bytes is larger than any block compresses to"
                        ));
                    }
                    if offset < HEADER_SIZE as u64 || offset.saturating_add(clen as u64) > data_end
                    {
                        return bad(format!(
                            "block {i}: frame at offset {offset} length {clen} lies outside the data area"
                        ));
                    }
                }
                BlockLoc::External { source, clen, .. } => {
                    if source as usize >= idx.sources.len() {
                        return bad(format!("block {i}: unknown external source {source}"));
                    }
                    if clen as u64 > max_frame_len(bs) {
                        return bad(format!(
                            "block {i}: frame of {clen} bytes is larger than any block compresses to"
                        ));
                    }
                }
            }
        }
        let stream_end = (idx.blocks.len() as u64).saturating_mul(bs);
        // Each inode but the root is reached through exactly the dirents
        // that claim it; directories through exactly one.
        let mut dir_parent = vec![u32::MAX; idx.inodes.len()];
        dir_parent[0] = 0;
        let mut claimed = vec![false; idx.dirents.len()];
        for (i, ino) in idx.inodes.iter().enumerate() {
            match &ino.body {
                Body::Dir { first, count } => {
                    let end = (*first as u64) + (*count as u64);
                    if end > idx.dirents.len() as u64 {
                        return bad(format!("inode {i}: directory entries out of range"));
                    }
                    let ents = &idx.dirents[*first as usize..end as usize];
                    for (k, d) in ents.iter().enumerate() {
                        let slot = *first as usize + k;
                        if claimed[slot] {
                            return bad(format!("dirent {slot} belongs to two directories"));
                        }
                        claimed[slot] = true;
                        if !valid_name(&d.name) {
                            return bad(format!(
                                "inode {i}: invalid entry name {:?}",
                                String::from_utf8_lossy(&d.name)
                            ));
                        }
                        if k > 0 && ents[k - 1].name >= d.name {
                            return bad(format!("inode {i}: entries not sorted or duplicated"));
                        }
                        let c = d.inode as usize;
                        if c == 0 || c >= idx.inodes.len() {
                            return bad(format!("dirent {slot}: inode {c} out of range"));
                        }
                        if matches!(idx.inodes[c].body, Body::Dir { .. }) {
                            if dir_parent[c] != u32::MAX {
                                return bad(format!("directory inode {c} is listed twice"));
                            }
                            dir_parent[c] = i as u32;
                        }
                    }
                }
                Body::File { size, extents } => {
                    let mut prev_end = 0u64;
                    for e in extents {
                        let fend = e.offset.checked_add(e.len);
                        let send = e.stream.checked_add(e.len);
                        match (fend, send) {
                            (Some(f), Some(s))
                                if e.offset >= prev_end && f <= *size && s <= stream_end =>
                            {
                                prev_end = f;
                            }
                            _ => return bad(format!("inode {i}: data extent out of range")),
                        }
                        // Every byte must lie within its block's stored length
                        // (not in the gap after a short block).
                        if e.len > 0 {
                            let (first, last) = (e.stream / bs, (e.stream + e.len - 1) / bs);
                            for b in first..=last {
                                let need = (e.stream + e.len).min((b + 1) * bs) - b * bs;
                                if need > idx.blocks[b as usize].len as u64 {
                                    return bad(format!(
                                        "inode {i}: data extent reaches past the end of block {b}"
                                    ));
                                }
                            }
                        }
                    }
                }
                Body::Symlink { target }
                    if (target.is_empty() || target.len() > 4096 || target.contains(&0)) =>
                {
                    return bad(format!("inode {i}: invalid symlink target"));
                }
                _ => {}
            }
        }
        // Every directory must reach the root by its parents (no cycles, no orphans).
        for start in 1..idx.inodes.len() {
            if dir_parent[start] == u32::MAX {
                continue;
            }
            let mut cur = start;
            let mut steps = 0usize;
            while cur != 0 {
                cur = dir_parent[cur] as usize;
                steps += 1;
                if cur == u32::MAX as usize || steps > idx.inodes.len() {
                    return bad(format!(
                        "directory inode {start} is not reachable from the root"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn block_size(&self) -> u64 {
        self.header.block_size
    }

    pub fn meta(&self) -> &Meta {
        &self.index.meta
    }

    pub fn inode(&self, ino: u32) -> &Inode {
        &self.index.inodes[ino as usize]
    }

    pub fn children(&self, ino: u32) -> &[Dirent] {
        match self.index.inodes[ino as usize].body {
            Body::Dir { first, count } => {
                &self.index.dirents[first as usize..(first + count) as usize]
            }
            _ => &[],
        }
    }

    pub fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        let ents = self.children(dir);
        ents.binary_search_by(|d| d.name[..].cmp(name))
            .ok()
            .map(|k| ents[k].inode)
    }

    /// Resolves a path inside the archive ("a/b", "/a/b", "" or "." = root).
    /// Symlinks are not followed.
    pub fn resolve(&self, path: &[u8]) -> Option<u32> {
        let mut cur = 0u32;
        for comp in path.split(|&b| b == b'/') {
            if comp.is_empty() || comp == b"." {
                continue;
            }
            cur = self.lookup(cur, comp)?;
        }
        Some(cur)
    }

    /// Where block `i`'s frame is, for messages.
    pub fn block_offset(&self, i: u64) -> u64 {
        match self.index.blocks.get(i as usize).map(|b| b.loc) {
            Some(BlockLoc::Frame { offset, .. }) | Some(BlockLoc::External { offset, .. }) => {
                offset
            }
            _ => 0,
        }
    }

    pub(crate) fn block_err(&self, block: u64, msg: impl Into<String>) -> Error {
        Error::Block {
            path: self.path.clone(),
            block,
            offset: self.block_offset(block),
            msg: msg.into(),
        }
    }

    /// The compressed frame of block `i`, as stored (empty for a zero block).
    /// Block `i`'s frame check (format 1.2), all zero if it has none.
    pub fn frame_check_of(&self, i: u64) -> [u8; 16] {
        self.checks.get(i as usize).copied().unwrap_or_default()
    }

    /// Whether [`Partial`] may decode block `i` in parts: it has a frame
    /// check (not every block of a repository snapshot has one), and
    /// `check_content` is off. (One of 128 KiB or less it decodes whole.)
    pub fn decodes_in_parts(&self, i: u64) -> bool {
        self.frame_check_of(i) != [0; 16] && !self.check_content
    }

    /// Block `i`'s entry in the block table.
    fn block(&self, i: u64) -> Result<&Block> {
        self.index
            .blocks
            .get(i as usize)
            .ok_or_else(|| self.block_err(i, "no such block"))
    }

    pub fn read_frame(&self, i: u64) -> Result<Vec<u8>> {
        let mut comp = Vec::new();
        self.read_frame_into(i, &mut comp)?;
        Ok(comp)
    }

    /// Reads block `i`'s frame into `comp` (replacing what it held).
    fn read_frame_into(&self, i: u64, comp: &mut Vec<u8>) -> Result<()> {
        let b = self.block(i)?;
        comp.clear();
        match b.loc {
            BlockLoc::Frame { offset, clen } => {
                comp.resize(clen as usize, 0);
                self.file
                    .read_exact_at(comp, offset)
                    .map_err(|e| self.block_err(i, format!("read failed: {e}")))?;
            }
            BlockLoc::External {
                source,
                offset,
                clen,
            } => {
                let store = self.store.as_ref().ok_or_else(|| {
                    self.block_err(
                        i,
                        "block is held in a repository's packs, and this archive is not inside its repository (REPO/snapshots/NAME.hbb)",
                    )
                })?;
                let src = &self.index.sources[source as usize];
                comp.resize(clen as usize, 0);
                store.read_frame(src, offset, comp).map_err(|e| {
                    self.block_err(
                        i,
                        format!("read failed in {}: {e}", String::from_utf8_lossy(&src.name)),
                    )
                })?;
            }
            BlockLoc::Zero => {}
        }
        Ok(())
    }

    /// Decompresses block `i` into `out` (cleared first) and checks it:
    /// its frame against the frame check where it has one (format 1.2),
    /// else (or also, with `check_content`) its content hash.
    pub fn read_block_into(
        &self,
        i: u64,
        dec: &mut zstd::bulk::Decompressor<'static>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let b = self.block(i)?;
        out.clear();
        match b.loc {
            BlockLoc::Zero => {
                out.resize(b.len as usize, 0);
                Ok(())
            }
            BlockLoc::Frame { .. } | BlockLoc::External { .. } => COMP.with_borrow_mut(|comp| {
                self.read_frame_into(i, comp)?;
                let r = self.decode_frame(i, comp, dec, out);
                if comp.capacity() > KEEP_FRAME_BUFFER {
                    *comp = Vec::new();
                }
                r
            }),
        }
    }

    /// Decompresses `frame`, read for block `i`, into `out` (cleared
    /// first) with the checks of [`Archive::read_block_into`].
    pub fn decode_frame(
        &self,
        i: u64,
        frame: &[u8],
        dec: &mut zstd::bulk::Decompressor<'static>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let b = self.block(i)?;
        out.clear();
        let checked = self.check_frame(i, frame)?;
        out.reserve(b.len as usize);
        let n = dec
            .decompress_to_buffer(frame, out)
            .map_err(|e| self.block_err(i, format!("frame does not decompress: {e}")))?;
        if n != b.len as usize {
            return Err(self.block_err(
                i,
                format!("frame decompresses to {n} bytes, the index says {}", b.len),
            ));
        }
        // A frame that matches its check decodes to what the writer
        // compressed: its content hash need not be computed.
        if !checked || self.check_content {
            self.check_content_hash(i, out)?;
        }
        Ok(())
    }

    /// Checks `frame`, read for block `i`, against its frame check: true
    /// if it has one (and matches), false if it has none.
    fn check_frame(&self, i: u64, frame: &[u8]) -> Result<bool> {
        let check = self.frame_check_of(i);
        if check == [0; 16] {
            return Ok(false);
        }
        if frame_check(frame) != check {
            return Err(self.block_err(i, "frame check mismatch (damaged frame)"));
        }
        Ok(true)
    }

    /// Checks `data`, decoded for block `i`, against its content hash.
    fn check_content_hash(&self, i: u64, data: &[u8]) -> Result<()> {
        if *blake3::hash(data).as_bytes() != self.block(i)?.hash {
            return Err(self.block_err(i, "content hash mismatch (damaged block)"));
        }
        Ok(())
    }

    pub fn read_block(
        &self,
        i: u64,
        dec: &mut zstd::bulk::Decompressor<'static>,
    ) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.read_block_into(i, dec, &mut v)?;
        Ok(v)
    }

    /// Path of every inode (the first name found), for reports.
    pub fn paths(&self) -> Vec<Vec<u8>> {
        let mut paths = vec![Vec::new(); self.index.inodes.len()];
        let mut stack = vec![0u32];
        let mut seen = vec![false; self.index.inodes.len()];
        seen[0] = true;
        while let Some(dir) = stack.pop() {
            for d in self.children(dir) {
                if seen[d.inode as usize] {
                    continue;
                }
                seen[d.inode as usize] = true;
                let mut p = paths[dir as usize].clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&d.name);
                paths[d.inode as usize] = p;
                if matches!(self.index.inodes[d.inode as usize].body, Body::Dir { .. }) {
                    stack.push(d.inode);
                }
            }
        }
        paths
    }

    /// The inodes whose data touch each block: `(block, inode)` pairs.
    pub fn block_users(&self) -> Vec<Vec<u32>> {
        let bs = self.block_size();
        let mut users = vec![Vec::new(); self.index.blocks.len()];
        for (i, ino) in self.index.inodes.iter().enumerate() {
            if let Body::File { extents, .. } = &ino.body {
                for e in extents {
                    if e.len == 0 {
                        continue;
                    }
                    let first = e.stream / bs;
                    let last = (e.stream + e.len - 1) / bs;
                    for b in first..=last {
                        if let Some(u) = users.get_mut(b as usize)
                            && u.last() != Some(&(i as u32))
                        {
                            u.push(i as u32);
                        }
                    }
                }
            }
        }
        users
    }
}

/// A name a directory entry may have: not empty, not `.` or `..`, no `/`
/// and no NUL, at most MAX_NAME_LEN bytes.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && name.len() <= MAX_NAME_LEN
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

/// A zstd context that decodes straight into the caller's buffer (zstd's
/// stable output buffer), with no window of its own.
struct StepDecoder(zstd::zstd_safe::DCtx<'static>);

impl StepDecoder {
    fn new() -> Self {
        let mut ctx = zstd::zstd_safe::DCtx::create();
        ctx.set_parameter(zstd::zstd_safe::DParameter::StableOutBuffer(true))
            .expect("zstd stable output buffer");
        StepDecoder(ctx)
    }
}

/// The largest zstd frame header (RFC 8878 §3.1.1.1): the first piece a
/// [`Partial`] feeds its decoder.
const FRAME_HEADER_MAX: usize = 18;

/// The most a zstd block decodes to (RFC 8878 §3.1.1.2.4).
const ZSTD_BLOCK_MAX: usize = 128 << 10;

/// What a zstd decoding context holds besides the buffers it is given
/// (about 100 KiB, and an input buffer of up to a block), for
/// [`Partial::cost`].
const DCTX_COST: usize = 256 << 10;

fn zstd_error(what: &str, code: zstd::zstd_safe::ErrorCode) -> String {
    format!("{what}: {}", zstd::zstd_safe::get_error_name(code))
}

thread_local! {
    // One frame buffer per thread, reused: a fresh one per block costs its
    // pages' faults on every read of a mount.
    static COMP: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A block decoded in parts: as far as a read needs, and on from there
/// when a later read needs more, a zstd block at a time, straight into its
/// buffer. Only a block whose frame has a check (format 1.2) is: a frame
/// that matches its check is what the writer compressed, so its first
/// bytes are good before its last are decoded. A block without one (or
/// read with `check_content`) is decoded whole at once: its content hash
/// needs all of it.
///
/// A random 4 KiB read needs a block up to a point on average in its
/// middle: it is answered in half the time of a whole block's decode, and
/// the rest is decoded only if something reads it.
pub struct Partial {
    dec: StepDecoder,
    /// Block number, its index length, whether it may be decoded in parts,
    /// and whether its content hash is checked once it is whole.
    block: u64,
    len: usize,
    parts: bool,
    hashed: bool,
    /// Its frame, and how much of it was fed to the decoder.
    frame: Vec<u8>,
    at: usize,
    /// What the decoder asked to be fed next.
    hint: usize,
    /// Decoded so far. zstd writes on into this very buffer: it must not
    /// move (see [`Partial::lend`]).
    out: Vec<u8>,
    /// `out` was not given back as it was: start over on the next advance.
    lost: bool,
    whole: bool,
}

impl Default for Partial {
    fn default() -> Self {
        Self::new()
    }
}

impl Partial {
    pub fn new() -> Self {
        Partial {
            dec: StepDecoder::new(),
            block: 0,
            len: 0,
            parts: false,
            hashed: false,
            frame: Vec::new(),
            at: 0,
            hint: 0,
            out: Vec::new(),
            lost: false,
            whole: true,
        }
    }

    /// Starts on block `i` of `archive`, into `buf` (its pages touched
    /// already, if the caller cares): reads its frame and checks it against
    /// its frame check. Nothing is decoded yet.
    pub fn start(&mut self, archive: &Archive, i: u64, buf: Vec<u8>) -> Result<()> {
        let b = archive.block(i)?;
        self.block = i;
        self.len = b.len as usize;
        self.out = buf;
        self.out.clear();
        self.at = 0;
        self.hint = FRAME_HEADER_MAX;
        self.lost = false;
        self.whole = false;
        if let BlockLoc::Zero = b.loc {
            self.out.resize(self.len, 0);
            self.frame.clear();
            self.whole = true;
            return Ok(());
        }
        archive.read_frame_into(i, &mut self.frame)?;
        archive.check_frame(i, &self.frame)?;
        // Decoded in parts only where the frame check stands for the
        // content hash; otherwise the content is hashed once whole.
        self.hashed = !archive.decodes_in_parts(i);
        // A frame of one zstd block (a block of 128 KiB or less) is fed
        // whole: zstd then decodes it in one pass.
        self.parts = !self.hashed && self.len > ZSTD_BLOCK_MAX;
        self.restart(archive)
    }

    fn restart(&mut self, archive: &Archive) -> Result<()> {
        if self.lost {
            self.out = Vec::new();
            self.lost = false;
        }
        self.out.clear();
        self.out.reserve_exact(self.len);
        self.at = 0;
        self.hint = FRAME_HEADER_MAX;
        self.dec
            .0
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(|e| archive.block_err(self.block, zstd_error("cannot start decoding", e)))?;
        Ok(())
    }

    /// Bytes decoded so far.
    pub fn decoded(&self) -> usize {
        self.out.len()
    }

    /// Bytes held: the buffer, the frame and the decoder.
    pub fn cost(&self) -> usize {
        self.out.capacity() + self.frame.capacity() + DCTX_COST
    }

    /// Lets go of the last block's buffer, and of a frame buffer larger
    /// than a 1 MiB block's: what is kept for the next block is the
    /// decoder.
    pub fn release(&mut self) {
        self.out = Vec::new();
        self.whole = true;
        if self.frame.capacity() > (1 << 20) + (1 << 13) {
            self.frame = Vec::new();
        }
    }

    /// Decodes on until `need` bytes are decoded, or all of the block
    /// (always all, for a block not decoded in parts); true once it is whole
    /// and checked. `archive` is the one given to `start`.
    pub fn advance(&mut self, archive: &Archive, need: usize) -> Result<bool> {
        if self.whole {
            return Ok(true);
        }
        if self.lost {
            self.restart(archive)?;
        }
        let need = if self.parts { need } else { usize::MAX };
        let err = |m: String| archive.block_err(self.block, m);
        while self.out.len() < need {
            let frame = &self.frame[..];
            let step = if need == usize::MAX {
                frame.len() - self.at
            } else {
                self.hint.min(frame.len() - self.at)
            };
            let mut input = zstd::zstd_safe::InBuffer::around(&frame[self.at..self.at + step]);
            let before = self.out.len();
            let mut output = zstd::zstd_safe::OutBuffer::around_pos(&mut self.out, before);
            self.hint = self
                .dec
                .0
                .decompress_stream(&mut output, &mut input)
                .map_err(|e| err(zstd_error("frame does not decompress", e)))?;
            self.at += input.pos();
            if self.hint == 0 {
                self.finish(archive)?;
                return Ok(true);
            }
            if self.at == frame.len() {
                return Err(err("frame is cut short".into()));
            }
            if input.pos() == 0 && self.out.len() == before {
                return Err(err(if self.out.len() == self.out.capacity() {
                    format!(
                        "frame decompresses to more than the index's {} bytes",
                        self.len
                    )
                } else {
                    "frame does not decompress".into()
                }));
            }
        }
        Ok(false)
    }

    fn finish(&mut self, archive: &Archive) -> Result<()> {
        let err = |m: String| archive.block_err(self.block, m);
        if self.at != self.frame.len() {
            return Err(err(format!(
                "{} bytes after the end of its frame",
                self.frame.len() - self.at
            )));
        }
        if self.out.len() != self.len {
            return Err(err(format!(
                "frame decompresses to {} bytes, the index says {}",
                self.out.len(),
                self.len
            )));
        }
        if self.hashed {
            archive.check_content_hash(self.block, &self.out)?;
        }
        self.whole = true;
        if self.frame.capacity() > KEEP_FRAME_BUFFER {
            self.frame = Vec::new();
        }
        Ok(())
    }

    /// Hands the bytes decoded so far to `f`, shared, as a block of the
    /// mount's cache (shorter than its index length until it is whole).
    /// They are taken back when `f` returns: should `f` keep them, the
    /// next [`advance`](Self::advance) starts over, in a new buffer.
    pub fn lend(&mut self, f: impl FnOnce(Arc<Vec<u8>>)) {
        let part = Arc::new(std::mem::take(&mut self.out));
        f(part.clone());
        match Arc::try_unwrap(part) {
            Ok(v) => self.out = v,
            Err(_) => self.lost = true,
        }
    }

    /// The whole block, once [`advance`](Self::advance) returned true.
    pub fn take(&mut self) -> Vec<u8> {
        debug_assert!(self.whole);
        std::mem::take(&mut self.out)
    }
}

pub fn new_decompressor() -> zstd::bulk::Decompressor<'static> {
    zstd::bulk::Decompressor::new().expect("zstd decompression context")
}
