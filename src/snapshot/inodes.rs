//! The snapshot's inode table, held encoded until the index is written.
//!
//! A file-mode snapshot keeps one inode per entry of the tree from the
//! walk to the end. As an [`Inode`] that is 104 bytes, and 32 more for a
//! file's boxed extent; here each is its postcard record in one buffer
//! (about 40 bytes for a file of the Linux tree), with what the walk does
//! not know yet — a directory's entries, a file's data — beside it, and
//! the index is encoded from these records as it is written. On a million
//! small files that is ~100 MB less memory.
//!
//! ```text
//! walk ─► push (record: owner, mode, times, xattrs, kind) ─┐
//! walk ─► set_dir (a directory's entries)                  ├─► serialize as Vec<Inode>
//! read pass ─► set_files (each file's data, by inode)      ┘
//! ```

use std::borrow::Cow;
use std::collections::HashMap;

use serde::ser::{Error as _, SerializeSeq};
use serde::{Deserialize, Serialize};

use crate::archive::{Body, Extent, Inode, Time, Xattr};

/// What the walk knows of an inode, kept as its postcard record. Never
/// part of an archive: only this module encodes and decodes it.
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: Time,
    atime: Time,
    ctime: Time,
    xattrs: Cow<'a, [Xattr]>,
    #[serde(borrow)]
    kind: Kind<'a>,
}

#[derive(Serialize, Deserialize)]
enum Kind<'a> {
    /// Its entries are `Inodes::dirs[n]`.
    Dir(u32),
    /// Its size and extents are the read pass's (`Inodes::set_files`).
    File,
    Symlink(#[serde(borrow)] Cow<'a, [u8]>),
    BlockDev(u64),
    CharDev(u64),
    Fifo,
    Socket,
}

/// A regular file whose bytes are one run of the stream, from its offset 0
/// to its end: nearly every file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub ino: u32,
    pub size: u64,
    pub stream: u64,
}

/// Runs in increasing inode order, each kept as three varints: the inode's
/// distance from the previous one, the size, and where it starts relative
/// to where the previous one ended (zigzag: a duplicate file points back).
/// Files read one after the other take 3–6 bytes each instead of 24.
#[derive(Default)]
pub struct Runs {
    buf: Vec<u8>,
    len: usize,
    last_ino: u32,
    last_end: u64,
}

impl Runs {
    /// Appends `r`, whose inode must be above the previous run's.
    pub fn push(&mut self, r: Run) {
        debug_assert!(self.len == 0 || r.ino > self.last_ino);
        // postcard writes u32 and u64 as varints, i64 zigzagged.
        let step = (
            r.ino - self.last_ino,
            r.size,
            r.stream.wrapping_sub(self.last_end) as i64,
        );
        postcard::to_io(&step, &mut self.buf).expect("encoding into a Vec does not fail");
        self.last_ino = r.ino;
        self.last_end = r.stream.wrapping_add(r.size);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Run> + '_ {
        let mut rest = &self.buf[..];
        let (mut ino, mut end) = (0u32, 0u64);
        (0..self.len).map(move |_| {
            let ((step, size, d), more) = postcard::take_from_bytes::<(u32, u64, i64)>(rest)
                .expect("runs this list wrote decode");
            rest = more;
            ino += step;
            let stream = end.wrapping_add(d as u64);
            end = stream.wrapping_add(size);
            Run { ino, size, stream }
        })
    }
}

/// The tree's inodes in `Index::inodes` order. Encodes as `Vec<Inode>`
/// does, once every regular file has its data (`set_files`).
#[derive(Default)]
pub struct Inodes {
    /// The records, back to back.
    recs: Vec<u8>,
    len: u32,
    /// Link counts other than 1, by inode.
    nlinks: HashMap<u32, u32>,
    /// Each directory's run of entries (first, count), by its number
    /// in `Kind::Dir`.
    dirs: Vec<(u32, u32)>,
    /// The regular files' data, each list sorted by inode.
    runs: Runs,
    other: Vec<(u32, u64, Box<[Extent]>)>,
}

impl Inodes {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number the next directory pushed gets (for [`Inodes::set_dir`]).
    pub fn next_dir(&self) -> u32 {
        self.dirs.len() as u32
    }

    /// Appends `ino` and returns its number. Its link count, a directory's
    /// entries and a file's size and extents are not taken from it: they
    /// are set with [`Inodes::add_link`], [`Inodes::set_dir`] and
    /// [`Inodes::set_files`].
    pub fn push(&mut self, ino: &Inode) -> u32 {
        let id = self.len;
        let kind = match &ino.body {
            Body::Dir { first, count } => {
                self.dirs.push((*first, *count));
                Kind::Dir(self.dirs.len() as u32 - 1)
            }
            Body::File { .. } => Kind::File,
            Body::Symlink { target } => Kind::Symlink(Cow::Borrowed(target)),
            Body::BlockDev { rdev } => Kind::BlockDev(*rdev),
            Body::CharDev { rdev } => Kind::CharDev(*rdev),
            Body::Fifo => Kind::Fifo,
            Body::Socket => Kind::Socket,
        };
        let rec = Record {
            perm: ino.perm,
            uid: ino.uid,
            gid: ino.gid,
            mtime: ino.mtime,
            atime: ino.atime,
            ctime: ino.ctime,
            xattrs: Cow::Borrowed(&ino.xattrs),
            kind,
        };
        postcard::to_io(&rec, &mut self.recs).expect("encoding into a Vec does not fail");
        if ino.nlink != 1 {
            self.nlinks.insert(id, ino.nlink);
        }
        self.len += 1;
        id
    }

    /// One more directory entry names inode `i`.
    pub fn add_link(&mut self, i: u32) {
        *self.nlinks.entry(i).or_insert(1) += 1;
    }

    /// Directory number `dir` owns the entries `first .. first + count`.
    pub fn set_dir(&mut self, dir: u32, first: u32, count: u32) {
        self.dirs[dir as usize] = (first, count);
    }

    /// Gives the regular files their data: `runs` and `other` (size and
    /// extents), each sorted by inode, together naming every regular file
    /// once.
    pub fn set_files(&mut self, runs: Runs, other: Vec<(u32, u64, Box<[Extent]>)>) {
        debug_assert!(other.is_sorted_by_key(|o| o.0));
        self.runs = runs;
        self.other = other;
    }

    /// The records in order, with their inode numbers.
    fn records(&self) -> impl Iterator<Item = Result<(u32, Record<'_>), postcard::Error>> {
        let mut rest = &self.recs[..];
        (0..self.len).map(move |i| {
            let (r, more) = postcard::take_from_bytes::<Record>(rest)?;
            rest = more;
            Ok((i, r))
        })
    }

    /// Drops the inodes `gone` marks, renumbering the others in order and
    /// the entries, link counts and file data that name them; entries
    /// naming a dropped inode go too. The directories' runs of entries are
    /// rebuilt in inode order.
    pub fn drop_marked(&mut self, gone: &[bool], dirents: &mut super::walk::Dirents) {
        let mut map = vec![u32::MAX; self.len as usize];
        let mut next = 0u32;
        for (i, g) in gone.iter().enumerate() {
            if !g {
                map[i] = next;
                next += 1;
            }
        }
        let old = std::mem::take(dirents);
        let mut recs = Vec::with_capacity(self.recs.len());
        let mut dirs = Vec::with_capacity(self.dirs.len());
        for r in self.records() {
            let (i, mut r) = r.expect("records this table wrote decode");
            if gone[i as usize] {
                continue;
            }
            if let Kind::Dir(d) = r.kind {
                let (first, count) = self.dirs[d as usize];
                let nf = dirents.len() as u32;
                for e in first..first + count {
                    let (name, inode) = old.get(e);
                    if !gone[inode as usize] {
                        dirents.push(name, map[inode as usize]);
                    }
                }
                dirs.push((nf, dirents.len() as u32 - nf));
                r.kind = Kind::Dir(dirs.len() as u32 - 1);
            }
            postcard::to_io(&r, &mut recs).expect("encoding into a Vec does not fail");
        }
        self.recs = recs;
        self.dirs = dirs;
        self.len = next;
        self.nlinks = std::mem::take(&mut self.nlinks)
            .into_iter()
            .filter(|&(i, _)| !gone[i as usize])
            .map(|(i, n)| (map[i as usize], n))
            .collect();
        let mut runs = Runs::default();
        for r in self.runs.iter().filter(|r| !gone[r.ino as usize]) {
            runs.push(Run {
                ino: map[r.ino as usize],
                ..r
            });
        }
        self.runs = runs;
        self.other.retain(|o| !gone[o.0 as usize]);
        for o in &mut self.other {
            o.0 = map[o.0 as usize];
        }
    }
}

impl Serialize for Inodes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len as usize))?;
        let mut runs = self.runs.iter().peekable();
        let mut other = self.other.iter().peekable();
        for r in self.records() {
            let (i, r) = r.map_err(S::Error::custom)?;
            let body = match r.kind {
                Kind::Dir(d) => {
                    let (first, count) = self.dirs[d as usize];
                    Body::Dir { first, count }
                }
                Kind::File => {
                    if let Some(run) = runs.next_if(|run| run.ino == i) {
                        Body::File {
                            size: run.size,
                            extents: Box::new([Extent {
                                offset: 0,
                                stream: run.stream,
                                len: run.size,
                            }]),
                        }
                    } else if let Some((_, size, extents)) = other.next_if(|o| o.0 == i) {
                        Body::File {
                            size: *size,
                            extents: extents.clone(),
                        }
                    } else {
                        return Err(S::Error::custom(format!(
                            "internal error: regular file {i} has no data"
                        )));
                    }
                }
                Kind::Symlink(target) => Body::Symlink {
                    target: target.into_owned().into(),
                },
                Kind::BlockDev(rdev) => Body::BlockDev { rdev },
                Kind::CharDev(rdev) => Body::CharDev { rdev },
                Kind::Fifo => Body::Fifo,
                Kind::Socket => Body::Socket,
            };
            seq.serialize_element(&Inode {
                perm: r.perm,
                uid: r.uid,
                gid: r.gid,
                nlink: self.nlinks.get(&i).copied().unwrap_or(1),
                mtime: r.mtime,
                atime: r.atime,
                ctime: r.ctime,
                xattrs: r.xattrs.into_owned().into(),
                body,
            })?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::walk::Dirents;

    fn inode(perm: u32, body: Body) -> Inode {
        Inode {
            perm,
            uid: 1000 + perm,
            gid: 7,
            nlink: 1,
            mtime: Time {
                sec: 1_700_000_000 + perm as i64,
                nsec: 999_999_999,
            },
            atime: Time { sec: -5, nsec: 0 },
            ctime: Time {
                sec: i64::MAX,
                nsec: 1,
            },
            xattrs: if perm.is_multiple_of(2) {
                Box::default()
            } else {
                vec![Xattr {
                    name: b"user.x".to_vec(),
                    value: vec![0xff; 300],
                }]
                .into()
            },
            body,
        }
    }

    fn file(size: u64, stream: u64) -> Body {
        Body::File {
            size,
            extents: Box::new([Extent {
                offset: 0,
                stream,
                len: size,
            }]),
        }
    }

    /// A tree with every kind of inode, as `Vec<Inode>` and as `Inodes`.
    fn both() -> (Vec<Inode>, Inodes) {
        let sparse = Body::File {
            size: 1 << 20,
            extents: Box::new([
                Extent {
                    offset: 4096,
                    stream: 10,
                    len: 100,
                },
                Extent {
                    offset: 9000,
                    stream: 500,
                    len: 7,
                },
            ]),
        };
        let plain = vec![
            inode(0o755, Body::Dir { first: 0, count: 3 }),
            inode(0o644, file(10, 0)),
            inode(0o600, Body::Dir { first: 3, count: 0 }),
            inode(
                0o777,
                Body::Symlink {
                    target: b"\xffnot/utf-8"[..].into(),
                },
            ),
            inode(0o640, sparse.clone()),
            inode(0o660, Body::BlockDev { rdev: 0x0801 }),
            inode(0o620, Body::CharDev { rdev: u64::MAX }),
            inode(0o644, Body::Fifo),
            inode(0o755, Body::Socket),
            inode(0o4755, file(0, 0)),
            inode(0o644, file(5, 10)),
        ];
        let mut packed = Inodes::default();
        for ino in &plain {
            let blank = match ino.body {
                // What the walk knows: not a directory's entries yet, nor
                // a file's data.
                Body::Dir { .. } => Body::Dir { first: 0, count: 0 },
                Body::File { .. } => Body::File {
                    size: 0,
                    extents: Box::default(),
                },
                ref b => b.clone(),
            };
            packed.push(&Inode {
                body: blank,
                ..ino.clone()
            });
        }
        packed.set_dir(0, 0, 3);
        packed.set_dir(1, 3, 0);
        packed.set_files(
            runs(&[FIRST_RUN, LAST_RUN]),
            vec![
                (4, 1 << 20, sparse_extents(&sparse)),
                (9, 0, Box::default()),
            ],
        );
        let mut plain = plain;
        plain[9].body = Body::File {
            size: 0,
            extents: Box::default(),
        };
        (plain, packed)
    }

    const FIRST_RUN: Run = Run {
        ino: 1,
        size: 10,
        stream: 0,
    };
    const LAST_RUN: Run = Run {
        ino: 10,
        size: 5,
        stream: 10,
    };

    fn runs(rs: &[Run]) -> Runs {
        let mut out = Runs::default();
        for &r in rs {
            out.push(r);
        }
        out
    }

    #[test]
    fn runs_come_back_as_pushed() {
        let rs = [
            Run {
                ino: 0,
                size: 0,
                stream: 0,
            },
            Run {
                ino: 3,
                size: 700,
                stream: 0,
            },
            // Packed right after the previous one.
            Run {
                ino: 4,
                size: 1 << 40,
                stream: 700,
            },
            // A duplicate: back to an earlier file's bytes.
            Run {
                ino: 5,
                size: 700,
                stream: 0,
            },
            // A large file, on a block boundary further on.
            Run {
                ino: u32::MAX,
                size: u64::MAX / 4,
                stream: u64::MAX / 2,
            },
        ];
        let packed = runs(&rs);
        assert_eq!(packed.len(), rs.len());
        assert_eq!(packed.iter().collect::<Vec<_>>(), rs);
        // 3 bytes for the empty file, 4 for the next (its size takes 2).
        assert_eq!(runs(&rs[..2]).buf.len(), 3 + 4);
    }

    fn sparse_extents(b: &Body) -> Box<[Extent]> {
        match b {
            Body::File { extents, .. } => extents.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn packed_inodes_encode_as_a_vec_of_inode() {
        let (mut plain, mut packed) = both();
        packed.add_link(10);
        packed.add_link(10);
        plain[10].nlink = 3;
        assert_eq!(packed.len(), plain.len());
        let enc = postcard::to_stdvec(&packed).unwrap();
        assert_eq!(enc, postcard::to_stdvec(&plain).unwrap());
        assert_eq!(postcard::from_bytes::<Vec<Inode>>(&enc).unwrap(), plain);
        // Encoding twice (the index's size is counted first) gives the same.
        assert_eq!(postcard::to_stdvec(&packed).unwrap(), enc);
    }

    #[test]
    fn a_file_without_data_is_an_error_not_a_wrong_file() {
        let (_, mut packed) = both();
        packed.runs = runs(&[FIRST_RUN]);
        assert!(postcard::to_stdvec(&packed).is_err());
    }

    #[test]
    fn dropping_inodes_renumbers_entries_links_and_data() {
        let (plain, mut packed) = both();
        let mut dirents = Dirents::default();
        for (name, ino) in [(&b"a"[..], 1), (b"b", 10), (b"c", 4)] {
            dirents.push(name, ino);
        }
        packed.add_link(10);
        // Drop file 1 (an entry of the root) and the fifo (no entry).
        let mut gone = vec![false; plain.len()];
        gone[1] = true;
        gone[7] = true;
        packed.drop_marked(&gone, &mut dirents);
        let want: Vec<Inode> = plain
            .iter()
            .enumerate()
            .filter(|(i, _)| !gone[*i])
            .map(|(i, ino)| {
                let mut ino = ino.clone();
                match i {
                    0 => ino.body = Body::Dir { first: 0, count: 2 },
                    2 => ino.body = Body::Dir { first: 2, count: 0 },
                    10 => ino.nlink = 2,
                    _ => {}
                }
                ino
            })
            .collect();
        assert_eq!(packed.len(), 9);
        assert_eq!(
            postcard::to_stdvec(&packed).unwrap(),
            postcard::to_stdvec(&want).unwrap()
        );
        // b (was 10, now 8) and c (was 4, now 3), in that order.
        assert_eq!(dirents.len(), 2);
        assert_eq!(dirents.get(0), (&b"b"[..], 8));
        assert_eq!(dirents.get(1), (&b"c"[..], 3));
    }
}
