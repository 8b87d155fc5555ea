//! Writes an archive front to back: header, frames in block order, index,
//! footer. Never seeks, so the output may be a pipe or a tape.
//!
//! A file target is written under a temporary name in the same directory
//! (`.NAME.hbb-partial-PID`) and renamed to its name only after the footer
//! is written and fsynced: a crash never leaves a file at the target path
//! that opens as a complete archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::format::*;
use crate::error::{Error, IoContext, Result};
use crate::repo::pack::{PackId, PackWriter};

/// The archive's write buffer. Small frames and the header, index and
/// footer pieces gather in it; a frame this size or larger goes straight to
/// the file (`BufWriter` passes large writes through), so a bigger buffer
/// would only add a block's worth of memory to a snapshot without saving
/// a system call worth counting.
const WRITE_BUFFER: usize = 64 << 10;

/// Where the archive goes.
pub enum Sink {
    File {
        tmp: PathBuf,
        dest: PathBuf,
        out: BufWriter<File>,
        committed: bool,
        /// Bytes handed to `out`.
        written: u64,
        /// Offset up to which the kernel was asked to start writing back.
        kicked: u64,
    },
    Stdout(BufWriter<io::Stdout>),
}

impl Sink {
    /// `-` means standard output.
    pub fn create(dest: &Path) -> Result<Sink> {
        if dest == Path::new("-") {
            return Ok(Sink::Stdout(BufWriter::with_capacity(
                WRITE_BUFFER,
                io::stdout(),
            )));
        }
        let name = dest
            .file_name()
            .ok_or_else(|| Error::Other(format!("{}: not a file name", dest.display())))?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmpname = std::ffi::OsString::from(".");
        tmpname.push(name);
        tmpname.push(format!(".hbb-partial-{}", std::process::id()));
        let tmp = dir.join(tmpname);
        remove_stale_partials(&dir, name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at(&tmp)?;
        interrupt::remove_on_signal(&tmp);
        Ok(Sink::File {
            tmp,
            dest: dest.to_path_buf(),
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            committed: false,
            written: 0,
            kicked: 0,
        })
    }

    fn path(&self) -> &Path {
        match self {
            Sink::File { dest, .. } => dest,
            Sink::Stdout(_) => Path::new("<stdout>"),
        }
    }

    /// Flushes, fsyncs and gives the archive its name.
    pub fn commit(&mut self) -> Result<()> {
        match self {
            Sink::Stdout(out) => out.flush().at("<stdout>"),
            Sink::File {
                tmp,
                dest,
                out,
                committed,
                ..
            } => {
                out.flush().at(&*tmp)?;
                out.get_ref().sync_all().at(&*tmp)?;
                std::fs::rename(&*tmp, &*dest).at(&*dest)?;
                interrupt::clear();
                if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty())
                    && let Ok(d) = File::open(dir)
                {
                    let _ = d.sync_all();
                }
                *committed = true;
                Ok(())
            }
        }
    }
}

/// How far the archive's writeback is started ahead of the final fsync.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Asks the kernel to start writing back what reached the archive file since
/// the last time, every [`WRITEBACK_STEP`] bytes. Left alone, the kernel
/// writes nothing back until its dirty limits or the commit's fsync (an
/// archive of a few hundred MB then waits at the end for all of it, with
/// the cores idle); started early, writeback overlaps compression and the
/// fsync finds little left to do. Best effort: fsync remains the guarantee.
fn start_writeback(out: &BufWriter<File>, written: u64, kicked: &mut u64) {
    let in_file = written - out.buffer().len() as u64;
    if in_file < *kicked + WRITEBACK_STEP {
        return;
    }
    // SAFETY: sync_file_range only reads its integer arguments.
    let _ = unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(out.get_ref()),
            *kicked as libc::off64_t,
            (in_file - *kicked) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    *kicked = in_file;
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::File {
                out,
                written,
                kicked,
                ..
            } => {
                let n = out.write(buf)?;
                *written += n as u64;
                start_writeback(out, *written, kicked);
                Ok(n)
            }
            Sink::Stdout(out) => out.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sink::File {
                out,
                written,
                kicked,
                ..
            } => {
                out.write_all(buf)?;
                *written += buf.len() as u64;
                start_writeback(out, *written, kicked);
                Ok(())
            }
            Sink::Stdout(out) => out.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::File { out, .. } => out.flush(),
            Sink::Stdout(out) => out.flush(),
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP remove the partial file before exiting, as
/// Drop would. (SIGKILL cannot be caught: the partial file then stays,
/// named as such, and does not open as an archive: it has no footer.)
mod interrupt {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicPtr, Ordering};

    static PARTIAL: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

    extern "C" fn on_signal(sig: libc::c_int) {
        let p = PARTIAL.swap(std::ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: unlink and _exit are async-signal-safe; `p` is a leaked,
        // NUL-terminated string or null.
        unsafe {
            if !p.is_null() {
                libc::unlink(p);
            }
            libc::_exit(128 + sig);
        }
    }

    pub fn remove_on_signal(path: &Path) {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            return;
        };
        let old = PARTIAL.swap(c.into_raw(), Ordering::SeqCst);
        if !old.is_null() {
            drop(unsafe { CString::from_raw(old) });
        }
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installs a handler that only calls async-signal-safe functions.
            unsafe {
                libc::signal(sig, on_signal as *const () as libc::sighandler_t);
            }
        }
    }

    pub fn clear() {
        let old = PARTIAL.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !old.is_null() {
            drop(unsafe { CString::from_raw(old) });
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::File { tmp, committed, .. } = self
            && !*committed
        {
            interrupt::clear();
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Removes `.NAME.hbb-partial-PID` files left by snapshots that were
/// killed (their process no longer exists).
fn remove_stale_partials(dir: &Path, name: &std::ffi::OsStr) {
    use std::os::unix::ffi::OsStrExt;
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(name.as_bytes());
    prefix.extend_from_slice(b".hbb-partial-");
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name();
        let Some(pid) = n.as_bytes().strip_prefix(&prefix[..]) else {
            continue;
        };
        let Some(pid) = std::str::from_utf8(pid)
            .ok()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What a compression worker made of one block.
pub enum Payload {
    Zero,
    /// A block whose hash the writer had already stored when the worker looked.
    Known,
    Frame(Vec<u8>),
    /// A block to store uncompressed to the sink, which compresses it
    /// (a remote repository with `--compress-on agent`).
    Raw(Vec<u8>),
}

/// Where a stored frame is: in this archive, or in a repository's pack.
#[derive(Debug, Clone, Copy)]
pub enum FrameLoc {
    Here {
        offset: u64,
        clen: u32,
    },
    Pack {
        pack: PackId,
        offset: u64,
        clen: u32,
    },
    /// Sent to a remote repository, whose answer gives where (see `FrameSink::settle`).
    Pending {
        ticket: u32,
    },
}

/// Where a repository snapshot's new frames go: a local `PackWriter`, or
/// a remote repository (`remote::client`), which answers later.
pub trait FrameSink: Send {
    /// Stores one block: `data` is its zstd frame, or with `raw` the block
    /// itself, for the sink to compress. Returns where it went, or
    /// `FrameLoc::Pending` with the next ticket (0, 1, 2, …).
    fn store(&mut self, hash: [u8; 32], len: u32, data: &[u8], raw: bool) -> Result<FrameLoc>;
    /// Waits until everything stored so far is stored; the location of
    /// each ticket given so far, by ticket.
    fn settle(&mut self) -> Result<Vec<FrameLoc>>;
    /// Seals: every frame stored is durable when this returns.
    fn finish(&mut self) -> Result<()>;
}

impl FrameSink for PackWriter {
    fn store(&mut self, hash: [u8; 32], len: u32, data: &[u8], raw: bool) -> Result<FrameLoc> {
        if raw {
            return Err(Error::Other(
                "internal error: an uncompressed block sent to a local pack".into(),
            ));
        }
        let (pack, offset) = self.add(hash, len, data)?;
        Ok(FrameLoc::Pack {
            pack,
            offset,
            clen: data.len() as u32,
        })
    }
    fn settle(&mut self) -> Result<Vec<FrameLoc>> {
        Ok(Vec::new())
    }
    fn finish(&mut self) -> Result<()> {
        PackWriter::finish(self).map(|_| ())
    }
}

/// Frames go to a repository's packs instead of the archive file.
struct Packs {
    writer: Box<dyn FrameSink>,
    sources: Vec<ExternalSource>,
    source_of: HashMap<PackId, u32>,
    /// Blocks whose location is a ticket still: (block index, ticket).
    fixups: Vec<(u64, u32)>,
    /// Tickets of blocks sent uncompressed.
    raw_tickets: std::collections::HashSet<u32>,
}

pub struct ArchiveWriter {
    sink: Sink,
    pos: u64,
    header: Header,
    blocks: Vec<Block>,
    /// Each stored frame by its block's hash: where, and its frame check
    /// (zero if unknown).
    frames: HashMap<[u8; 32], (FrameLoc, [u8; 16])>,
    /// Each block's frame check (1.2), in block order.
    checks: Vec<[u8; 16]>,
    packs: Option<Packs>,
    /// Pack mode: the frames this writer stored (hash, block length, where).
    new_frames: Vec<([u8; 32], u32, FrameLoc)>,
    pub stored_bytes: u64,
    pub zero_blocks: u64,
    pub dup_blocks: u64,
}

impl ArchiveWriter {
    pub fn new(mut sink: Sink, block_size: u64, archive_id: [u8; 16]) -> Result<Self> {
        let header = Header {
            version_major: VERSION_MAJOR,
            version_minor: VERSION_MINOR,
            flags: 0,
            block_size,
            archive_id,
        };
        sink.write_all(&header.encode()).at(sink.path())?;
        Ok(ArchiveWriter {
            sink,
            pos: HEADER_SIZE as u64,
            header,
            blocks: Vec::new(),
            frames: HashMap::new(),
            checks: Vec::new(),
            packs: None,
            new_frames: Vec::new(),
            stored_bytes: 0,
            zero_blocks: 0,
            dup_blocks: 0,
        })
    }

    /// Sends frames to `packs` instead of the archive; `known` are the
    /// blocks the repository already holds (stored again by reference only).
    pub fn into_packs(
        mut self,
        packs: Box<dyn FrameSink>,
        known: HashMap<[u8; 32], FrameLoc>,
    ) -> ArchiveWriter {
        // Their frame checks are not known here: the content hash is
        // checked for them on reading.
        self.frames = known
            .into_iter()
            .map(|(h, at)| (h, (at, [0; 16])))
            .collect();
        self.packs = Some(Packs {
            writer: packs,
            sources: Vec::new(),
            source_of: HashMap::new(),
            fixups: Vec::new(),
            raw_tickets: Default::default(),
        });
        self
    }

    /// Waits for the frames sent to a remote repository and puts their
    /// locations into the block list. Call before `take_blocks`.
    pub fn settle(&mut self) -> Result<()> {
        let Some(p) = &mut self.packs else {
            return Ok(());
        };
        let locs = p.writer.settle()?;
        let fixups = std::mem::take(&mut p.fixups);
        let real = |at: FrameLoc| -> Result<FrameLoc> {
            match at {
                FrameLoc::Pending { ticket } => locs
                    .get(ticket as usize)
                    .copied()
                    .filter(|l| !matches!(l, FrameLoc::Pending { .. }))
                    .ok_or_else(|| {
                        Error::Other(format!(
                            "internal error: no location for stored frame {ticket}"
                        ))
                    }),
                other => Ok(other),
            }
        };
        for (_, _, at) in self.new_frames.iter_mut() {
            if let FrameLoc::Pending { ticket } = *at {
                *at = real(*at)?;
                // Sent raw, its compressed size is known only now.
                if let FrameLoc::Pack { clen, .. } = at
                    && p.raw_tickets.remove(&ticket)
                {
                    self.stored_bytes += *clen as u64;
                }
            }
        }
        for (at, _) in self.frames.values_mut() {
            *at = real(*at)?;
        }
        for (block, ticket) in fixups {
            let at = real(FrameLoc::Pending { ticket })?;
            let loc = self.block_loc(block, at);
            self.blocks[block as usize].loc = loc;
        }
        Ok(())
    }

    /// Hashes of the frames already stored (or known to the repository).
    pub fn known_hashes(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.frames.keys()
    }

    pub fn block_size(&self) -> u64 {
        self.header.block_size
    }

    /// The index entry for block `block` stored at `at` (a pending one is
    /// noted, and filled in by `settle`).
    fn block_loc(&mut self, block: u64, at: FrameLoc) -> BlockLoc {
        match at {
            FrameLoc::Pending { ticket } => {
                let p = self
                    .packs
                    .as_mut()
                    .expect("pending locations only in pack mode");
                p.fixups.push((block, ticket));
                // A placeholder until `settle`: never written as such.
                BlockLoc::Frame { offset: 0, clen: 0 }
            }
            FrameLoc::Here { offset, clen } => BlockLoc::Frame { offset, clen },
            FrameLoc::Pack { pack, offset, clen } => {
                let p = self
                    .packs
                    .as_mut()
                    .expect("pack locations only in pack mode");
                let source = *p.source_of.entry(pack).or_insert_with(|| {
                    p.sources.push(ExternalSource {
                        archive_id: pack,
                        name: crate::repo::pack::rel_path(&pack).into_bytes(),
                    });
                    (p.sources.len() - 1) as u32
                });
                BlockLoc::External {
                    source,
                    offset,
                    clen,
                }
            }
        }
    }

    /// Appends a block already stored in a pack (an unchanged file's block
    /// taken from an earlier snapshot, with its frame check there, zero if
    /// none); returns its index.
    pub fn push_stored(
        &mut self,
        len: u32,
        hash: [u8; 32],
        at: Option<FrameLoc>,
        check: [u8; 16],
    ) -> u64 {
        let loc = match at {
            None => BlockLoc::Zero,
            Some(at) => {
                self.frames.entry(hash).or_insert((at, check));
                self.block_loc(self.blocks.len() as u64, at)
            }
        };
        self.blocks.push(Block { len, hash, loc });
        self.checks.push(if at.is_some() { check } else { [0; 16] });
        (self.blocks.len() - 1) as u64
    }

    /// Whether a frame with this hash is already stored.
    pub fn has(&self, hash: &[u8; 32]) -> bool {
        self.frames.contains_key(hash)
    }

    /// Appends logical block `index` (must be the next one; skipped indexes
    /// become empty zero blocks).
    pub fn push(&mut self, index: u64, len: u32, hash: [u8; 32], payload: Payload) -> Result<()> {
        while (self.blocks.len() as u64) < index {
            self.blocks.push(Block {
                len: 0,
                hash: [0; 32],
                loc: BlockLoc::Zero,
            });
            self.checks.push([0; 16]);
        }
        debug_assert_eq!(self.blocks.len() as u64, index);
        let zero = matches!(payload, Payload::Zero);
        let is_raw = matches!(payload, Payload::Raw(_));
        let mut check = [0; 16];
        let loc = match payload {
            Payload::Zero => {
                self.zero_blocks += 1;
                BlockLoc::Zero
            }
            Payload::Known | Payload::Frame(_) | Payload::Raw(_)
                if self.frames.contains_key(&hash) =>
            {
                self.dup_blocks += 1;
                let (at, c) = self.frames[&hash];
                check = c;
                self.block_loc(index, at)
            }
            Payload::Known => {
                return Err(Error::Other(format!(
                    "internal error: block {index} marked known but not stored"
                )));
            }
            Payload::Frame(data) | Payload::Raw(data) => {
                let at = match &mut self.packs {
                    Some(p) => {
                        let at = p.writer.store(hash, len, &data, is_raw)?;
                        if let (true, FrameLoc::Pending { ticket }) = (is_raw, at) {
                            p.raw_tickets.insert(ticket);
                        }
                        at
                    }
                    None if is_raw => {
                        return Err(Error::Other(format!(
                            "internal error: block {index} uncompressed for an archive file"
                        )));
                    }
                    None => {
                        let offset = self.pos;
                        self.sink.write_all(&data).at(self.sink.path())?;
                        self.pos += data.len() as u64;
                        FrameLoc::Here {
                            offset,
                            clen: data.len() as u32,
                        }
                    }
                };
                if !is_raw {
                    self.stored_bytes += data.len() as u64;
                    check = frame_check(&data);
                }
                self.frames.insert(hash, (at, check));
                if self.packs.is_some() {
                    self.new_frames.push((hash, len, at));
                }
                self.block_loc(index, at)
            }
        };
        self.blocks.push(Block {
            len,
            hash: if zero { [0; 32] } else { hash },
            loc,
        });
        self.checks.push(check);
        Ok(())
    }

    pub fn take_blocks(&mut self) -> Vec<Block> {
        std::mem::take(&mut self.blocks)
    }

    /// The frames stored by this writer, as opposed to found already stored.
    pub fn take_new_frames(&mut self) -> Vec<([u8; 32], u32, FrameLoc)> {
        std::mem::take(&mut self.new_frames)
    }

    /// The external sources the blocks refer to (pack mode), for `Index::sources`.
    pub fn take_sources(&mut self) -> Vec<ExternalSource> {
        self.packs
            .as_mut()
            .map(|p| std::mem::take(&mut p.sources))
            .unwrap_or_default()
    }

    /// Writes the index (with the 1.1 extension record and the 1.2 frame
    /// checks) and the footer, then commits the sink. In pack mode the packs are sealed and durable
    /// before the archive that refers to them gets its name.
    pub fn finish<I: serde::Serialize>(
        mut self,
        index: &I,
        ext: &Extension,
        level: i32,
    ) -> Result<()> {
        if let Some(p) = &mut self.packs {
            if !p.fixups.is_empty() {
                return Err(Error::Other(
                    "internal error: the archive finished before its frames were settled".into(),
                ));
            }
            p.writer.finish()?;
            crate::repo::fault_point("snapshot-packs-sealed");
        }
        // The index is encoded and compressed as it is written, not built
        // whole in memory first (for a million files its encoding alone is
        // ~40 MB). Its length is counted first, without allocating, so that
        // the frame says its content size as a one-shot frame would.
        let enc_err =
            |what: &str, e: postcard::Error| Error::Other(format!("encoding {what}: {e}"));
        let rlen = postcard::experimental::serialized_size(index)
            .map_err(|e| enc_err("the index", e))?
            + postcard::experimental::serialized_size(ext)
                .map_err(|e| enc_err("the index extension", e))?;
        let checks = FrameChecks {
            checks: std::mem::take(&mut self.checks),
        };
        let rlen = rlen
            + postcard::experimental::serialized_size(&checks)
                .map_err(|e| enc_err("the frame checks", e))?;
        let path = self.sink.path().to_path_buf();
        let mut out = Tally {
            inner: &mut self.sink,
            len: 0,
            hash: blake3::Hasher::new(),
        };
        let written: io::Result<()> = (|| {
            let mut z = zstd::stream::Encoder::new(&mut out, level)?;
            z.include_contentsize(true)?;
            z.include_checksum(false)?;
            z.set_pledged_src_size(Some(rlen as u64))?;
            // postcard writes a field at a time: batch them for zstd.
            let mut buf = BufWriter::with_capacity(1 << 16, z);
            postcard::to_io(index, &mut buf).map_err(io::Error::other)?;
            postcard::to_io(ext, &mut buf).map_err(io::Error::other)?;
            postcard::to_io(&checks, &mut buf).map_err(io::Error::other)?;
            buf.into_inner().map_err(|e| e.into_error())?.finish()?;
            Ok(())
        })();
        written.at(&path)?;
        let footer = Footer {
            version_major: VERSION_MAJOR,
            version_minor: VERSION_MINOR,
            flags: 0,
            index_offset: self.pos,
            index_clen: out.len,
            index_rlen: rlen as u64,
            archive_id: self.header.archive_id,
            index_hash: *out.hash.finalize().as_bytes(),
        };
        self.sink.write_all(&footer.encode()).at(&path)?;
        self.sink.commit()
    }
}

/// A writer that passes bytes on, counting and hashing them.
struct Tally<'a, W: Write> {
    inner: &'a mut W,
    len: u64,
    hash: blake3::Hasher,
}

impl<W: Write> Write for Tally<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.len += n as u64;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
