//! The on-disk format of an hbb archive, version 1.1.
//!
//! docs/FORMAT.md is the specification; this module mirrors it, constant for
//! constant. An archive is, front to back:
//!
//! ```text
//! header   HEADER_SIZE bytes: magic, version, block size, archive id, check
//! frames   one independent zstd frame per stored block, in block order
//! index    one zstd frame holding the postcard encoding of `Index`
//! footer   FOOTER_SIZE bytes: magic, version, index offset/lengths/hash, check
//! ```
//!
//! Header and footer are little-endian, fixed-size, and carry a 4-byte check
//! (the first four bytes of the BLAKE3 hash of the bytes before it). The
//! index is encoded with postcard 1.x, whose wire format is specified and
//! stable; the order of struct fields and enum variants below is therefore
//! part of the format: never reorder them, only append in a new minor
//! version (and keep a decoder for each older one).

use serde::{Deserialize, Serialize};

/// First 8 bytes of every archive. Like PNG's signature: a non-ASCII first
/// byte, then the name, then CR LF, ^Z and LF, so that text-mode transfers
/// and truncation to 7 bits are caught at once. Do not modify.
pub const HEADER_MAGIC: [u8; 8] = *b"\x89HBB\r\n\x1a\n";
/// First 8 bytes of the footer (the archive's last FOOTER_SIZE bytes). Do not modify.
pub const FOOTER_MAGIC: [u8; 8] = *b"HBBINDEX";

/// Major version: readers refuse archives with a major version they do not know.
pub const VERSION_MAJOR: u16 = 1;
/// Minor version: additions that older readers of the same major can ignore.
pub const VERSION_MINOR: u16 = 2;

/// Flag bits a reader of this version understands. A writer sets a flag
/// for a feature old readers must not ignore; a reader refuses any flag
/// outside this mask. None are defined in 1.0.
pub const KNOWN_FLAGS: u32 = 0;

pub const HEADER_SIZE: usize = 64;
pub const FOOTER_SIZE: usize = 96;

/// Limits every reader checks before allocating or seeking.
pub const MIN_BLOCK_SIZE: u64 = 4096;
pub const MAX_BLOCK_SIZE: u64 = 1 << 30;
/// Largest decompressed index a reader accepts (4 GiB).
pub const MAX_INDEX_RAW: u64 = 4 << 30;
/// Largest frame a block of `block_size` bytes can compress to (zstd's
/// compress bound, rounded up); readers refuse larger frames.
pub fn max_frame_len(block_size: u64) -> u64 {
    block_size + (block_size >> 7) + (128 << 10)
}

/// Longest name of one directory entry (Linux's NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// Header layout (offsets in bytes).
pub mod header {
    pub const MAGIC: usize = 0; // [u8; 8]
    pub const VERSION_MAJOR: usize = 8; // u16
    pub const VERSION_MINOR: usize = 10; // u16
    pub const FLAGS: usize = 12; // u32, 0 in 1.0
    pub const BLOCK_SIZE: usize = 16; // u64
    pub const ARCHIVE_ID: usize = 24; // [u8; 16]
    pub const RESERVED: usize = 40; // [u8; 20], zero
    pub const CHECK: usize = 60; // u32: blake3(header[0..60])[0..4]
}

/// Footer layout (offsets in bytes from the footer's start).
pub mod footer {
    pub const MAGIC: usize = 0; // [u8; 8]
    pub const VERSION_MAJOR: usize = 8; // u16
    pub const VERSION_MINOR: usize = 10; // u16
    pub const FLAGS: usize = 12; // u32, 0 in 1.0
    pub const INDEX_OFFSET: usize = 16; // u64
    pub const INDEX_CLEN: usize = 24; // u64, compressed length
    pub const INDEX_RLEN: usize = 32; // u64, decompressed length
    pub const ARCHIVE_ID: usize = 40; // [u8; 16], same as the header's
    pub const INDEX_HASH: usize = 56; // [u8; 32]: blake3 of the compressed index
    pub const RESERVED: usize = 88; // u32, zero
    pub const CHECK: usize = 92; // u32: blake3(footer[0..92])[0..4]
}

const _: () = assert!(header::CHECK + 4 == HEADER_SIZE);
const _: () = assert!(footer::CHECK + 4 == FOOTER_SIZE);

/// The first four bytes of the BLAKE3 hash of `bytes`, as a little-endian u32.
pub fn check32(bytes: &[u8]) -> u32 {
    let h = blake3::hash(bytes);
    u32::from_le_bytes(h.as_bytes()[..4].try_into().unwrap())
}

/// A frame's check (1.2): the first 16 bytes of the BLAKE3 hash of its
/// compressed bytes. Checked before the frame is decoded, in place of the
/// block's content hash, which costs a pass over the decoded block, six
/// times as many bytes (`FrameChecks`). All zero means "none".
pub fn frame_check(frame: &[u8]) -> [u8; 16] {
    blake3::hash(frame).as_bytes()[..16].try_into().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version_major: u16,
    pub version_minor: u16,
    pub flags: u32,
    pub block_size: u64,
    pub archive_id: [u8; 16],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[header::MAGIC..header::MAGIC + 8].copy_from_slice(&HEADER_MAGIC);
        b[header::VERSION_MAJOR..][..2].copy_from_slice(&self.version_major.to_le_bytes());
        b[header::VERSION_MINOR..][..2].copy_from_slice(&self.version_minor.to_le_bytes());
        b[header::FLAGS..][..4].copy_from_slice(&self.flags.to_le_bytes());
        b[header::BLOCK_SIZE..][..8].copy_from_slice(&self.block_size.to_le_bytes());
        b[header::ARCHIVE_ID..][..16].copy_from_slice(&self.archive_id);
        let c = check32(&b[..header::CHECK]);
        b[header::CHECK..][..4].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes a header; the error says what is wrong, for the caller to
    /// wrap with the archive's path.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Header, String> {
        if b[..8] != HEADER_MAGIC {
            return Err("not an hbb archive (no hbb magic at offset 0)".into());
        }
        let stored = le_u32(b, header::CHECK);
        if stored != check32(&b[..header::CHECK]) {
            return Err("header check mismatch at offset 0 (damaged header)".into());
        }
        let h = Header {
            version_major: le_u16(b, header::VERSION_MAJOR),
            version_minor: le_u16(b, header::VERSION_MINOR),
            flags: le_u32(b, header::FLAGS),
            block_size: le_u64(b, header::BLOCK_SIZE),
            archive_id: b[header::ARCHIVE_ID..][..16].try_into().unwrap(),
        };
        if h.version_major != VERSION_MAJOR {
            return Err(format!(
                "archive format version {}.{} is not supported by this hbb (it reads {}.x)",
                h.version_major, h.version_minor, VERSION_MAJOR
            ));
        }
        if h.flags & !KNOWN_FLAGS != 0 {
            return Err(format!(
                "archive uses format features this hbb does not know (header flags {:#x})",
                h.flags
            ));
        }
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&h.block_size) {
            return Err(format!("header: block size {} out of range", h.block_size));
        }
        Ok(h)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub version_major: u16,
    pub version_minor: u16,
    pub flags: u32,
    pub index_offset: u64,
    pub index_clen: u64,
    pub index_rlen: u64,
    pub archive_id: [u8; 16],
    pub index_hash: [u8; 32],
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[footer::MAGIC..][..8].copy_from_slice(&FOOTER_MAGIC);
        b[footer::VERSION_MAJOR..][..2].copy_from_slice(&self.version_major.to_le_bytes());
        b[footer::VERSION_MINOR..][..2].copy_from_slice(&self.version_minor.to_le_bytes());
        b[footer::FLAGS..][..4].copy_from_slice(&self.flags.to_le_bytes());
        b[footer::INDEX_OFFSET..][..8].copy_from_slice(&self.index_offset.to_le_bytes());
        b[footer::INDEX_CLEN..][..8].copy_from_slice(&self.index_clen.to_le_bytes());
        b[footer::INDEX_RLEN..][..8].copy_from_slice(&self.index_rlen.to_le_bytes());
        b[footer::ARCHIVE_ID..][..16].copy_from_slice(&self.archive_id);
        b[footer::INDEX_HASH..][..32].copy_from_slice(&self.index_hash);
        let c = check32(&b[..footer::CHECK]);
        b[footer::CHECK..][..4].copy_from_slice(&c.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; FOOTER_SIZE]) -> Result<Footer, String> {
        if b[..8] != FOOTER_MAGIC {
            return Err(
                "no footer: the archive is incomplete (interrupted snapshot or truncated file)"
                    .into(),
            );
        }
        if le_u32(b, footer::CHECK) != check32(&b[..footer::CHECK]) {
            return Err("footer check mismatch (damaged footer)".into());
        }
        let flags = le_u32(b, footer::FLAGS);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(format!(
                "archive uses format features this hbb does not know (footer flags {flags:#x})"
            ));
        }
        Ok(Footer {
            version_major: le_u16(b, footer::VERSION_MAJOR),
            version_minor: le_u16(b, footer::VERSION_MINOR),
            flags: le_u32(b, footer::FLAGS),
            index_offset: le_u64(b, footer::INDEX_OFFSET),
            index_clen: le_u64(b, footer::INDEX_CLEN),
            index_rlen: le_u64(b, footer::INDEX_RLEN),
            archive_id: b[footer::ARCHIVE_ID..][..16].try_into().unwrap(),
            index_hash: b[footer::INDEX_HASH..][..32].try_into().unwrap(),
        })
    }
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

// ---------------------------------------------------------------------------
// The index (postcard-encoded, then one zstd frame). Field order is format.

/// Everything an archive knows besides the data frames.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Index {
    pub meta: Meta,
    /// Logical block `i` covers stream bytes `[i*block_size, i*block_size+len)`.
    pub blocks: Vec<Block>,
    /// Inode 0 is the root directory. FUSE inode number = index + 1.
    pub inodes: Vec<Inode>,
    /// Directory entries; each directory owns a contiguous run, sorted by name.
    pub dirents: Vec<Dirent>,
    /// Places that hold frames outside this archive (`BlockLoc::External`).
    /// Empty in archives written by hbb 0.1.
    pub sources: Vec<ExternalSource>,
}

/// An [`Index`] to encode, borrowing its parts, with the inodes and the
/// directory entries in any form that encodes as `Vec<Inode>` and
/// `Vec<Dirent>` do: what a snapshot writes without first building an
/// `Index`. The fields are `Index`'s, in its order, so the encoding is the
/// same.
#[derive(Serialize)]
pub struct IndexOut<'a, I: Serialize, D: Serialize> {
    pub meta: &'a Meta,
    pub blocks: &'a [Block],
    pub inodes: &'a I,
    pub dirents: &'a D,
    pub sources: &'a [ExternalSource],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Block {
    /// Decompressed length (≤ block size; shorter blocks end early).
    pub len: u32,
    /// BLAKE3 of the decompressed bytes (all zero for `BlockLoc::Zero`).
    pub hash: [u8; 32],
    pub loc: BlockLoc,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum BlockLoc {
    /// `len` zero bytes, stored as nothing.
    Zero,
    /// A zstd frame in this archive. Identical blocks share one frame.
    Frame { offset: u64, clen: u32 },
    /// A frame held elsewhere: `Index::sources[source]` at `offset`.
    External { source: u32, offset: u64, clen: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExternalSource {
    pub archive_id: [u8; 16],
    pub name: Vec<u8>,
}

// In memory, the index's variable-length fields are boxed slices (16
// bytes, no spare capacity) rather than Vecs (24): a mount holds one Inode
// and one Dirent per entry, and a snapshot one Inode per entry. Serde
// encodes a boxed slice exactly as a Vec, so the format is unchanged
// (tests::in_memory_layout_keeps_the_encoding).

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dirent {
    pub name: Box<[u8]>,
    pub inode: u32,
}

/// Packed to 12 bytes (an Inode has three): fields are read by value.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[repr(C, packed(4))]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inode {
    /// Permission bits, setuid/setgid/sticky included (`st_mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Directory entries in this archive that name this inode.
    pub nlink: u32,
    pub mtime: Time,
    pub atime: Time,
    pub ctime: Time,
    pub xattrs: Box<[Xattr]>,
    pub body: Body,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Body {
    /// Dirents `first .. first+count`.
    Dir {
        first: u32,
        count: u32,
    },
    /// `size` bytes; the extents, sorted and disjoint, hold the data; the
    /// rest are holes (zeros).
    File {
        size: u64,
        extents: Box<[Extent]>,
    },
    Symlink {
        target: Box<[u8]>,
    },
    BlockDev {
        rdev: u64,
    },
    CharDev {
        rdev: u64,
    },
    Fifo,
    Socket,
}

/// `len` bytes of a file at `offset` are the stream's bytes at `stream`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub stream: u64,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Mode {
    File,
    Volume,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdName {
    pub id: u32,
    pub name: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Stats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
    pub hardlinks: u64,
    /// Bytes of file or volume data read from the source.
    pub bytes_read: u64,
    /// Bytes in frames of this archive (compressed).
    pub bytes_stored: u64,
    pub blocks: u64,
    pub zero_blocks: u64,
    pub dup_blocks: u64,
    pub dup_files: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// "hbb 0.1.0"
    pub tool: String,
    pub host: String,
    /// The source as given, made absolute.
    pub source: Vec<u8>,
    pub mode: Mode,
    /// Why that mode: the auto rule's decision, or "--mode file".
    pub mode_reason: String,
    /// Unix time of the start and end, in ns (both pinned by SOURCE_DATE_EPOCH).
    pub started_ns: i64,
    pub finished_ns: i64,
    pub block_size: u64,
    pub level: i32,
    pub threads: u32,
    pub volume_threshold: u64,
    pub excludes: Vec<String>,
    pub one_file_system: bool,
    pub stats: Stats,
    /// Problems met while reading the source (path: reason). Non-empty
    /// means the snapshot is incomplete.
    pub warnings: Vec<String>,
    /// Names of the owners seen, for restoring by name.
    pub users: Vec<IdName>,
    pub groups: Vec<IdName>,
}

// ---------------------------------------------------------------------------
// 1.1: the extension record, encoded with postcard right after the `Index`
// inside the same index frame. 1.0 readers stop decoding after `Index` and
// never see it; a 1.1 reader takes an index that ends after `Index` (every
// 1.0 archive) as carrying `Extension::default()`.

/// What 1.1 adds to an archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Extension {
    /// Set in snapshots that live in a repository; `None` in archive files.
    pub snapshot: Option<SnapshotInfo>,
}

/// 1.2: encoded right after the [`Extension`] inside the index frame.
/// A 1.1 reader ignores it; a 1.2 reader takes an index without it as
/// having no frame checks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct FrameChecks {
    /// Per logical block (`Index::blocks` order): its frame's
    /// [`frame_check`], or all zero where there is no frame or the writer
    /// did not see it (a block compressed by a remote agent, or found in
    /// an earlier snapshot): such a block's content hash is checked instead.
    pub checks: Vec<[u8; 16]>,
}

/// A repository snapshot's own facts, kept in the snapshot so that the
/// repository's catalog can be rebuilt from the snapshots alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SnapshotInfo {
    /// The repository's id (its `hbb-repo` file); guards against a snapshot
    /// file copied into another repository.
    pub repo_id: [u8; 16],
    /// The snapshot's name in the repository (its file is `snapshots/NAME.hbb`).
    pub name: String,
    pub tags: Vec<String>,
    /// The job that made it, or empty.
    pub job: String,
    /// The snapshot of the same source this one was made against, or empty.
    pub parent: String,
    /// Regular files taken from the parent unread (same size, mtime, ctime, inode).
    pub reused_files: u64,
    /// Per inode (same order as `Index::inodes`): the source file's device
    /// and inode number, for the next snapshot's unchanged-file test; zero
    /// where unknown.
    pub source_ids: Vec<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // The index's types as they were before their in-memory layout was
    // made compact (Vecs, an unpacked Time): the encoding must not have
    // moved by a byte.
    #[derive(Serialize)]
    struct WideTime {
        sec: i64,
        nsec: u32,
    }
    #[derive(Serialize)]
    struct WideXattr {
        name: Vec<u8>,
        value: Vec<u8>,
    }
    #[derive(Serialize)]
    enum WideBody {
        Dir { first: u32, count: u32 },
        File { size: u64, extents: Vec<Extent> },
        Symlink { target: Vec<u8> },
        BlockDev { rdev: u64 },
        CharDev { rdev: u64 },
        Fifo,
        Socket,
    }
    #[derive(Serialize)]
    struct WideInode {
        perm: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        mtime: WideTime,
        atime: WideTime,
        ctime: WideTime,
        xattrs: Vec<WideXattr>,
        body: WideBody,
    }
    #[derive(Serialize)]
    struct WideDirent {
        name: Vec<u8>,
        inode: u32,
    }

    #[test]
    fn in_memory_layout_keeps_the_encoding() {
        let t = |sec, nsec| (Time { sec, nsec }, WideTime { sec, nsec });
        let ext = vec![
            Extent {
                offset: 0,
                stream: 1 << 40,
                len: 4096,
            },
            Extent {
                offset: 1 << 33,
                stream: 7,
                len: u64::MAX >> 1,
            },
        ];
        let bodies = [
            (
                Body::Dir {
                    first: 3,
                    count: 70_000,
                },
                WideBody::Dir {
                    first: 3,
                    count: 70_000,
                },
            ),
            (
                Body::File {
                    size: u64::MAX,
                    extents: ext.clone().into(),
                },
                WideBody::File {
                    size: u64::MAX,
                    extents: ext,
                },
            ),
            (
                Body::File {
                    size: 0,
                    extents: Box::default(),
                },
                WideBody::File {
                    size: 0,
                    extents: Vec::new(),
                },
            ),
            (
                Body::Symlink {
                    target: b"../a b\xff".to_vec().into(),
                },
                WideBody::Symlink {
                    target: b"../a b\xff".to_vec(),
                },
            ),
            (
                Body::BlockDev { rdev: 0x0803 },
                WideBody::BlockDev { rdev: 0x0803 },
            ),
            (
                Body::CharDev { rdev: u64::MAX },
                WideBody::CharDev { rdev: u64::MAX },
            ),
            (Body::Fifo, WideBody::Fifo),
            (Body::Socket, WideBody::Socket),
        ];
        for (i, (body, wide_body)) in bodies.into_iter().enumerate() {
            let (m, wm) = t(-1, 999_999_999);
            let (a, wa) = t(i64::MAX, 0);
            let (c, wc) = t(1_700_000_000 + i as i64, 12345);
            let xattrs: Vec<Xattr> = (0..i % 3)
                .map(|k| Xattr {
                    name: format!("user.k{k}").into_bytes(),
                    value: vec![k as u8; k * 5],
                })
                .collect();
            let wide_xattrs = xattrs
                .iter()
                .map(|x| WideXattr {
                    name: x.name.clone(),
                    value: x.value.clone(),
                })
                .collect();
            let inode = Inode {
                perm: 0o4755,
                uid: 1000,
                gid: u32::MAX,
                nlink: 2,
                mtime: m,
                atime: a,
                ctime: c,
                xattrs: xattrs.into(),
                body,
            };
            let wide = WideInode {
                perm: 0o4755,
                uid: 1000,
                gid: u32::MAX,
                nlink: 2,
                mtime: wm,
                atime: wa,
                ctime: wc,
                xattrs: wide_xattrs,
                body: wide_body,
            };
            let bytes = postcard::to_stdvec(&inode).unwrap();
            assert_eq!(
                bytes,
                postcard::to_stdvec(&wide).unwrap(),
                "body variant {i}"
            );
            assert_eq!(
                postcard::from_bytes::<Inode>(&bytes).unwrap(),
                inode,
                "body variant {i}"
            );
        }
        let d = Dirent {
            name: b"name\x01"[..].into(),
            inode: 77,
        };
        let bytes = postcard::to_stdvec(&d).unwrap();
        let wide = WideDirent {
            name: b"name\x01".to_vec(),
            inode: 77,
        };
        assert_eq!(bytes, postcard::to_stdvec(&wide).unwrap());
        assert_eq!(postcard::from_bytes::<Dirent>(&bytes).unwrap(), d);
    }

    #[test]
    fn index_records_stay_compact() {
        // What a mount and a snapshot hold per entry; a field added to
        // Inode or Dirent should be a choice, not an accident.
        assert!(std::mem::size_of::<Time>() <= 12);
        assert!(
            std::mem::size_of::<Inode>() <= 104,
            "{}",
            std::mem::size_of::<Inode>()
        );
        assert!(
            std::mem::size_of::<Dirent>() <= 24,
            "{}",
            std::mem::size_of::<Dirent>()
        );
    }
}
