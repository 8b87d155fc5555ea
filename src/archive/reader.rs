//! Opens an archive from its end: footer → index → any block, in O(1) seeks.
//!
//! Every number taken from the archive is checked against the file's size
//! and the format's limits before it is used to allocate or to seek; every
//! block is checked against its BLAKE3 hash before its bytes are returned.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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

    /// As [`Archive::read_block_into`], but when block `i`'s frame has a
    /// check (format 1.2) `out` is handed to `early` as soon as it holds the
    /// block's first `need` bytes, before the rest is decoded: a frame that
    /// matches its check is what the writer compressed, so its first bytes
    /// are good before its last are decoded. A random read needs a few KiB
    /// of a block, on average from its middle: it is answered in half the
    /// time of a whole block's decode. Without a check, or with
    /// `check_content`, the content hash needs the whole block, and `early`
    /// is not called.
    ///
    /// `early` may take `out`'s buffer, and share it read-only meanwhile,
    /// but must put that same buffer back: the decoder writes on into it.
    /// If it does not, the block is decoded again from its start.
    pub fn read_block_early(
        &self,
        i: u64,
        need: usize,
        dec: &mut StepDecoder,
        out: &mut Vec<u8>,
        early: Early<'_>,
    ) -> Result<()> {
        let b = self.block(i)?;
        out.clear();
        if let BlockLoc::Zero = b.loc {
            out.resize(b.len as usize, 0);
            return Ok(());
        }
        COMP.with_borrow_mut(|comp| {
            self.read_frame_into(i, comp)?;
            let r = self.decode_frame_early(i, comp, need, dec, out, early);
            if comp.capacity() > KEEP_FRAME_BUFFER {
                *comp = Vec::new();
            }
            r
        })
    }

    fn decode_frame_early(
        &self,
        i: u64,
        frame: &[u8],
        need: usize,
        dec: &mut StepDecoder,
        out: &mut Vec<u8>,
        early: Early<'_>,
    ) -> Result<()> {
        let b = self.block(i)?;
        let len = b.len as usize;
        let check = Some(self.frame_check_of(i)).filter(|c| *c != [0; 16]);
        if let Some(c) = check
            && frame_check(frame) != c
        {
            return Err(self.block_err(i, "frame check mismatch (damaged frame)"));
        }
        let early = (check.is_some() && !self.check_content && need < len).then_some(early);
        step_decode(frame, len, need, dec, out, early).map_err(|m| self.block_err(i, m))?;
        if (check.is_none() || self.check_content) && *blake3::hash(out).as_bytes() != b.hash {
            return Err(self.block_err(i, "content hash mismatch (damaged block)"));
        }
        Ok(())
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
        let check = Some(self.frame_check_of(i)).filter(|c| *c != [0; 16]);
        if let Some(c) = check
            && frame_check(frame) != c
        {
            return Err(self.block_err(i, "frame check mismatch (damaged frame)"));
        }
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
        if (check.is_none() || self.check_content) && *blake3::hash(out).as_bytes() != b.hash {
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

/// A zstd context for [`Archive::read_block_early`]: it decodes straight
/// into the caller's buffer (zstd's stable output buffer), a zstd block at
/// a time, with no window of its own.
pub struct StepDecoder(zstd::zstd_safe::DCtx<'static>);

impl StepDecoder {
    pub fn new() -> Self {
        let mut ctx = zstd::zstd_safe::DCtx::create();
        ctx.set_parameter(zstd::zstd_safe::DParameter::StableOutBuffer(true))
            .expect("zstd stable output buffer");
        StepDecoder(ctx)
    }
}

impl Default for StepDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The largest zstd frame header (RFC 8878 §3.1.1.1): the first piece a
/// [`StepDecoder`] is fed.
const FRAME_HEADER_MAX: usize = 18;

fn zstd_error(what: &str, code: zstd::zstd_safe::ErrorCode) -> String {
    format!("{what}: {}", zstd::zstd_safe::get_error_name(code))
}

thread_local! {
    // One frame buffer per thread, reused: a fresh one per block costs its
    // pages' faults on every read of a mount.
    static COMP: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What [`Archive::read_block_early`] hands a block's first bytes to.
pub type Early<'a> = &'a mut dyn FnMut(&mut Vec<u8>);

/// Decodes the zstd frame `frame` into `out` (cleared first), which must
/// then hold exactly `len` bytes. With `early`, the frame is fed a zstd
/// block at a time, and `out` is handed to `early` as soon as it holds
/// `need` bytes (see [`Archive::read_block_early`]). Errors say what is
/// wrong with the frame.
fn step_decode(
    frame: &[u8],
    len: usize,
    need: usize,
    dec: &mut StepDecoder,
    out: &mut Vec<u8>,
    mut early: Option<Early<'_>>,
) -> std::result::Result<(), String> {
    let used = 'attempt: loop {
        out.clear();
        out.reserve_exact(len);
        let ctx = &mut dec.0;
        ctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(|e| zstd_error("cannot start decoding", e))?;
        let mut at = 0;
        // While `early` waits, each step is fed the next piece of the
        // frame (a header, then a zstd block at a time: the hint zstd
        // returns is its size); otherwise the whole frame at once.
        let mut hint = FRAME_HEADER_MAX;
        loop {
            let step = match early {
                Some(_) => hint.min(frame.len() - at),
                None => frame.len() - at,
            };
            let mut input = zstd::zstd_safe::InBuffer::around(&frame[at..at + step]);
            let before = out.len();
            let mut output = zstd::zstd_safe::OutBuffer::around_pos(out, before);
            hint = ctx
                .decompress_stream(&mut output, &mut input)
                .map_err(|e| zstd_error("frame does not decompress", e))?;
            at += input.pos();
            if hint == 0 {
                break 'attempt at;
            }
            if out.len() >= need
                && let Some(f) = early.take()
            {
                let (ptr, cap) = (out.as_ptr(), out.capacity());
                f(out);
                if out.as_ptr() != ptr || out.capacity() != cap {
                    // Not the buffer zstd writes on into: start over.
                    continue 'attempt;
                }
            }
            if at == frame.len() {
                return Err("frame is cut short".into());
            }
            if input.pos() == 0 && out.len() == before {
                return Err(if out.len() == out.capacity() {
                    format!("frame decompresses to more than the index's {len} bytes")
                } else {
                    "frame does not decompress".into()
                });
            }
        }
    };
    if used != frame.len() {
        return Err(format!(
            "{} bytes after the end of its frame",
            frame.len() - used
        ));
    }
    if out.len() != len {
        return Err(format!(
            "frame decompresses to {} bytes, the index says {len}",
            out.len()
        ));
    }
    Ok(())
}

pub fn new_decompressor() -> zstd::bulk::Decompressor<'static> {
    zstd::bulk::Decompressor::new().expect("zstd decompression context")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Vec<u8> {
        (0..1usize << 20)
            .map(|i| (i % 251 + i / 3001 + (i * i) % 7) as u8)
            .collect()
    }

    fn decode(
        frame: &[u8],
        len: usize,
        need: usize,
        early: Option<Early<'_>>,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut out = Vec::new();
        step_decode(frame, len, need, &mut StepDecoder::new(), &mut out, early)?;
        Ok(out)
    }

    #[test]
    fn step_decode_hands_out_a_prefix_then_the_whole_frame() {
        let d = data();
        let mut with_checksum = zstd::bulk::Compressor::new(3).unwrap();
        with_checksum.include_checksum(true).unwrap();
        for frame in [
            zstd::bulk::compress(&d, 3).unwrap(),
            with_checksum.compress(&d).unwrap(),
        ] {
            assert_eq!(decode(&frame, d.len(), 0, None).unwrap(), d);
            let mut seen = Vec::new();
            let got = decode(
                &frame,
                d.len(),
                5000,
                Some(&mut |out: &mut Vec<u8>| seen.push(out.clone())),
            )
            .unwrap();
            assert_eq!(got, d);
            assert_eq!(seen.len(), 1);
            assert!(seen[0].len() >= 5000 && seen[0].len() < d.len());
            assert_eq!(seen[0][..], d[..seen[0].len()]);
            // A buffer not given back: decoded again from the start.
            let mut calls = 0;
            let got = decode(
                &frame,
                d.len(),
                5000,
                Some(&mut |out: &mut Vec<u8>| {
                    calls += 1;
                    std::mem::take(out);
                }),
            )
            .unwrap();
            assert_eq!((got == d, calls), (true, 1));
        }
    }

    #[test]
    fn step_decode_refuses_bad_frames_without_panicking() {
        let d = data();
        let frame = zstd::bulk::compress(&d, 3).unwrap();
        let n = d.len();
        let mut twice = frame.clone();
        twice.extend_from_slice(&frame);
        let mut trailing = frame.clone();
        trailing.extend_from_slice(&[0; 5]);
        let cases: Vec<(&str, Vec<u8>, usize, &str)> = vec![
            ("cut", frame[..frame.len() / 2].to_vec(), n, "cut short"),
            ("empty", Vec::new(), n, "cut short"),
            ("trailing", trailing, n, "5 bytes after the end"),
            ("twice", twice, n, "after the end"),
            ("longer", frame.clone(), n - 1, "decompress"),
            ("shorter", frame.clone(), n + 1, "the index says"),
            ("garbage", vec![0x5a; 4096], n, "does not decompress"),
        ];
        for (what, f, len, why) in cases {
            for need in [usize::MAX, 100] {
                let mut nop = |_: &mut Vec<u8>| {};
                let early = (need != usize::MAX).then_some(&mut nop as Early<'_>);
                let e = decode(&f, len, need, early).unwrap_err();
                assert!(e.contains(why), "{what}, need {need}: {e}");
            }
        }
        // Any one byte changed: an error or other bytes, never a panic.
        for at in (0..frame.len()).step_by(frame.len() / 97) {
            let mut f = frame.clone();
            f[at] ^= 0x40;
            let _ = decode(&f, n, 100, Some(&mut |_: &mut Vec<u8>| {}));
        }
    }
}
