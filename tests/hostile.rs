//! Hostile archives: indexes crafted with the format's own writer and none
//! of its checks, then opened, listed, verified and restored. Whatever the
//! archive says: a clear error or a reported skip, never a panic, never a
//! byte written outside DEST, memory bounded by sizes checked first.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use hbb::archive::writer::{ArchiveWriter, Payload, Sink};
use hbb::archive::*;

const BS: u64 = 64 << 10;

fn time() -> Time {
    Time {
        sec: 1_600_000_000,
        nsec: 0,
    }
}

fn inode(body: Body) -> Inode {
    Inode {
        perm: 0o755,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: time(),
        atime: time(),
        ctime: time(),
        xattrs: Box::default(),
        body,
    }
}

fn file(stream: u64, len: u64) -> Inode {
    let mut i = inode(Body::File {
        size: len,
        extents: vec![Extent {
            offset: 0,
            stream,
            len,
        }]
        .into(),
    });
    i.perm = 0o644;
    i
}

fn meta() -> Meta {
    Meta {
        tool: "crafted".into(),
        host: "test".into(),
        source: b"/crafted".to_vec(),
        mode: Mode::File,
        mode_reason: "crafted".into(),
        started_ns: 0,
        finished_ns: 0,
        block_size: BS,
        level: 3,
        threads: 1,
        volume_threshold: 0,
        excludes: Vec::new(),
        one_file_system: false,
        stats: Stats::default(),
        warnings: Vec::new(),
        users: Vec::new(),
        groups: Vec::new(),
    }
}

/// Writes `frames` (raw frame bytes, each with the len and hash given) as
/// blocks 0.., then the index that `edit` makes of a root holding nothing.
fn craft(path: &Path, frames: Vec<(Vec<u8>, u32, [u8; 32])>, edit: impl FnOnce(&mut Index)) {
    craft_with(path, BS, frames, edit)
}

/// As [`craft`], with blocks of `bs` bytes.
fn craft_with(
    path: &Path,
    bs: u64,
    frames: Vec<(Vec<u8>, u32, [u8; 32])>,
    edit: impl FnOnce(&mut Index),
) {
    let mut w = ArchiveWriter::new(Sink::create(path).unwrap(), bs, [7; 16]).unwrap();
    for (i, (frame, len, hash)) in frames.into_iter().enumerate() {
        w.push(i as u64, len, hash, Payload::Frame(frame)).unwrap();
    }
    let blocks = w.take_blocks();
    let mut index = Index {
        meta: Meta {
            block_size: bs,
            ..meta()
        },
        blocks,
        inodes: vec![inode(Body::Dir { first: 0, count: 0 })],
        dirents: Vec::new(),
        sources: Vec::new(),
    };
    edit(&mut index);
    w.finish(&index, &Default::default(), 3).unwrap();
}

/// Rewrites the archive at `path` as a 1.1 writer would have: its index
/// without the frame checks, version 1.1 in the header and footer.
fn drop_frame_checks(path: &Path) {
    rewrite_after_extension(path, 1, |_| Vec::new());
}

/// Rewrites the archive at `path` with `minor` as its minor version and,
/// after its index's `Extension`, the bytes `after` makes of its
/// `FrameChecks` (instead of their encoding).
fn rewrite_after_extension(path: &Path, minor: u16, after: impl FnOnce(FrameChecks) -> Vec<u8>) {
    let mut bytes = fs::read(path).unwrap();
    let at = bytes.len() - FOOTER_SIZE;
    let mut f = Footer::decode(&bytes[at..].try_into().unwrap()).unwrap();
    let start = f.index_offset as usize;
    let raw = zstd::stream::decode_all(&bytes[start..at]).unwrap();
    let (index, rest): (Index, &[u8]) = postcard::take_from_bytes(&raw).unwrap();
    let (ext, rest): (Extension, &[u8]) = postcard::take_from_bytes(rest).unwrap();
    let (checks, rest): (FrameChecks, &[u8]) = postcard::take_from_bytes(rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(checks.checks.len(), index.blocks.len());
    let mut plain = postcard::to_stdvec(&index).unwrap();
    plain.extend(postcard::to_stdvec(&ext).unwrap());
    plain.extend(after(checks));
    let comp = zstd::bulk::compress(&plain, 3).unwrap();
    let mut h = Header::decode(&bytes[..HEADER_SIZE].try_into().unwrap()).unwrap();
    h.version_minor = minor;
    bytes[..HEADER_SIZE].copy_from_slice(&h.encode());
    f.version_minor = minor;
    f.index_clen = comp.len() as u64;
    f.index_rlen = plain.len() as u64;
    f.index_hash = *blake3::hash(&comp).as_bytes();
    bytes.truncate(start);
    bytes.extend(&comp);
    bytes.extend(f.encode());
    fs::write(path, &bytes).unwrap();
}

/// The blocks `hbb verify` finds bad in the scene's archive (it must find some).
fn bad_blocks(s: &Scene) -> Vec<u64> {
    let v = hbb(&["verify", "--json", s.a()]);
    assert_eq!(v.status.code(), Some(4), "{}", stderr(&v));
    let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    j["bad_blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["block"].as_u64().unwrap())
        .collect()
}

fn block(data: &[u8]) -> (Vec<u8>, u32, [u8; 32]) {
    (
        zstd::bulk::compress(data, 3).unwrap(),
        data.len() as u32,
        *blake3::hash(data).as_bytes(),
    )
}

/// Root with the given entries (name, inode) and inodes 1...
fn tree(index: &mut Index, entries: &[(&[u8], u32)], inodes: Vec<Inode>) {
    index.inodes.extend(inodes);
    let first = index.dirents.len() as u32;
    for (n, i) in entries {
        index.dirents.push(Dirent {
            name: n.to_vec().into(),
            inode: *i,
        });
    }
    index.inodes[0].body = Body::Dir {
        first,
        count: entries.len() as u32,
    };
}

struct Scene {
    _t: Tmp,
    arc: PathBuf,
    dest: PathBuf,
    outside: PathBuf,
}

fn scene(name: &str) -> Scene {
    let t = Tmp::new(&format!("hostile-{name}"));
    let arc = t.path("evil.hbb");
    let dest = t.path("dest");
    let outside = t.path("outside");
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir_all(&outside).unwrap();
    Scene {
        arc,
        dest,
        outside,
        _t: t,
    }
}

impl Scene {
    fn a(&self) -> &str {
        self.arc.to_str().unwrap()
    }
    fn d(&self) -> &str {
        self.dest.to_str().unwrap()
    }
    #[track_caller]
    fn outside_untouched(&self) {
        let n = fs::read_dir(&self.outside).unwrap().count();
        assert_eq!(n, 0, "something was written outside DEST");
        let parent = self.outside.parent().unwrap();
        let names: Vec<_> = fs::read_dir(parent)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names.len(),
            3,
            "the scene's directory gained entries: {names:?}"
        );
    }
}

/// Every reading command refuses the archive with a message containing `why`.
#[track_caller]
fn refused(s: &Scene, why: &str) {
    for args in [
        vec!["info", s.a()],
        vec!["ls", "-R", s.a()],
        vec!["verify", s.a()],
        vec!["restore", s.a(), s.d()],
    ] {
        let o = hbb(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(why),
            "{args:?}: expected {why:?} in {}",
            stderr(&o)
        );
    }
    s.outside_untouched();
    assert_eq!(fs::read_dir(&s.dest).unwrap().count(), 0);
}

#[test]
fn bad_names_are_refused() {
    let long = vec![b'n'; 300];
    let names: Vec<&[u8]> = vec![b"a/b", b"..", b".", b"", b"x\0y", &long, b"/etc"];
    for (k, name) in names.into_iter().enumerate() {
        let s = scene(&format!("name{k}"));
        craft(&s.arc, vec![block(b"payload")], |ix| {
            tree(ix, &[(name, 1)], vec![file(0, 7)]);
        });
        refused(&s, "invalid entry name");
    }
}

#[test]
fn structural_lies_are_refused() {
    type Edit = Box<dyn Fn(&mut Index)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "cycle",
            "not reachable from the root",
            Box::new(|ix| {
                // root -> a; b <-> c form a loop of their own.
                tree(
                    ix,
                    &[(b"a", 1)],
                    vec![
                        inode(Body::Dir { first: 1, count: 0 }),
                        inode(Body::Dir { first: 1, count: 1 }),
                        inode(Body::Dir { first: 2, count: 1 }),
                    ],
                );
                ix.dirents.push(Dirent {
                    name: b"c".to_vec().into(),
                    inode: 3,
                });
                ix.dirents.push(Dirent {
                    name: b"b".to_vec().into(),
                    inode: 2,
                });
            }),
        ),
        (
            "root-as-child",
            "out of range",
            Box::new(|ix| tree(ix, &[(b"loop", 0)], vec![])),
        ),
        (
            "dir-twice",
            "listed twice",
            Box::new(|ix| {
                tree(
                    ix,
                    &[(b"a", 1), (b"b", 1)],
                    vec![inode(Body::Dir { first: 0, count: 0 })],
                );
            }),
        ),
        (
            "dirent-two-dirs",
            "belongs to two directories",
            Box::new(|ix| {
                tree(
                    ix,
                    &[(b"a", 1)],
                    vec![inode(Body::Dir { first: 0, count: 1 })],
                );
            }),
        ),
        (
            "inode-range",
            "out of range",
            Box::new(|ix| tree(ix, &[(b"a", 99)], vec![])),
        ),
        (
            "dirent-range",
            "out of range",
            Box::new(|ix| {
                ix.inodes[0].body = Body::Dir {
                    first: 5,
                    count: u32::MAX,
                }
            }),
        ),
        (
            "unsorted",
            "not sorted",
            Box::new(|ix| tree(ix, &[(b"b", 1), (b"a", 2)], vec![file(0, 1), file(1, 1)])),
        ),
        (
            "overlap",
            "extent out of range",
            Box::new(|ix| {
                let mut f = file(0, 7);
                f.body = Body::File {
                    size: 7,
                    extents: vec![
                        Extent {
                            offset: 0,
                            stream: 0,
                            len: 5,
                        },
                        Extent {
                            offset: 3,
                            stream: 0,
                            len: 4,
                        },
                    ]
                    .into(),
                };
                tree(ix, &[(b"a", 1)], vec![f]);
            }),
        ),
        (
            "past-the-stream",
            "extent out of range",
            Box::new(|ix| tree(ix, &[(b"a", 1)], vec![file(BS * 1000, 7)])),
        ),
        (
            "overflow",
            "extent out of range",
            Box::new(|ix| {
                let mut f = file(0, 7);
                f.body = Body::File {
                    size: u64::MAX,
                    extents: vec![Extent {
                        offset: u64::MAX - 2,
                        stream: 0,
                        len: 7,
                    }]
                    .into(),
                };
                tree(ix, &[(b"a", 1)], vec![f]);
            }),
        ),
        (
            "beyond-size",
            "extent out of range",
            Box::new(|ix| {
                let mut f = file(0, 7);
                f.body = Body::File {
                    size: 3,
                    extents: vec![Extent {
                        offset: 0,
                        stream: 0,
                        len: 7,
                    }]
                    .into(),
                };
                tree(ix, &[(b"a", 1)], vec![f]);
            }),
        ),
        (
            "into-a-short-block-gap",
            "past the end of block 0",
            Box::new(|ix| tree(ix, &[(b"a", 1)], vec![file(0, 100)])),
        ),
        (
            "block-len",
            "exceeds block size",
            Box::new(|ix| ix.blocks[0].len = BS as u32 + 1),
        ),
        (
            "frame-outside",
            "outside the data area",
            Box::new(|ix| {
                ix.blocks[0].loc = BlockLoc::Frame {
                    offset: 1 << 40,
                    clen: 10,
                }
            }),
        ),
        (
            "frame-huge",
            "larger than any block",
            Box::new(|ix| {
                ix.blocks[0].loc = BlockLoc::Frame {
                    offset: 64,
                    clen: u32::MAX,
                }
            }),
        ),
        (
            "no-root",
            "no root directory",
            Box::new(|ix| ix.inodes[0].body = Body::Fifo),
        ),
        (
            "symlink-nul",
            "invalid symlink target",
            Box::new(|ix| {
                tree(
                    ix,
                    &[(b"l", 1)],
                    vec![inode(Body::Symlink {
                        target: b"a\0b".to_vec().into(),
                    })],
                )
            }),
        ),
    ];
    for (name, why, edit) in cases {
        let s = scene(name);
        craft(&s.arc, vec![block(b"payload")], |ix| edit(ix));
        refused(&s, why);
    }
}

#[test]
fn planted_symlinks_in_dest_are_never_followed() {
    let s = scene("planted");
    craft(&s.arc, vec![block(b"secret")], |ix| {
        tree(
            ix,
            &[(b"evil", 1), (b"top", 3)],
            vec![
                inode(Body::Dir { first: 2, count: 1 }),
                file(0, 6),
                file(0, 6),
            ],
        );
        ix.dirents.push(Dirent {
            name: b"x".to_vec().into(),
            inode: 2,
        });
    });
    // DEST/evil -> outside, DEST/top -> outside/top: restore must not write through them.
    std::os::unix::fs::symlink(&s.outside, s.dest.join("evil")).unwrap();
    std::os::unix::fs::symlink(s.outside.join("top"), s.dest.join("top")).unwrap();
    let o = hbb(&["restore", s.a(), s.d()]);
    assert_fails(&o, 3, "exists");
    s.outside_untouched();
    let o = hbb(&["restore", "--overwrite", s.a(), s.d()]);
    assert_ok(&o);
    s.outside_untouched();
    assert!(s.dest.join("evil").symlink_metadata().unwrap().is_dir());
    assert_eq!(fs::read(s.dest.join("evil/x")).unwrap(), b"secret");
    assert_eq!(fs::read(s.dest.join("top")).unwrap(), b"secret");
}

#[test]
fn a_restored_symlink_is_not_followed_by_a_later_restore() {
    let s = scene("twostep");
    // First archive: "a" is a symlink to the outside directory.
    let first = s.arc.with_file_name("first.hbb");
    craft(&first, vec![], |ix| {
        tree(
            ix,
            &[(b"a", 1)],
            vec![inode(Body::Symlink {
                target: s.outside.as_os_str().as_encoded_bytes().to_vec().into(),
            })],
        );
    });
    assert_ok(&hbb(&["restore", first.to_str().unwrap(), s.d()]));
    // Second: "a" is a directory holding "x".
    craft(&s.arc, vec![block(b"through")], |ix| {
        tree(
            ix,
            &[(b"a", 1)],
            vec![inode(Body::Dir { first: 1, count: 1 }), file(0, 7)],
        );
        ix.dirents.push(Dirent {
            name: b"x".to_vec().into(),
            inode: 2,
        });
    });
    let o = hbb(&["restore", s.a(), s.d()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_ok(&hbb(&["restore", "--overwrite", s.a(), s.d()]));
    assert_eq!(
        fs::read_dir(&s.outside).unwrap().count(),
        0,
        "written through a symlink"
    );
    assert_eq!(fs::read(s.dest.join("a/x")).unwrap(), b"through");
    fs::remove_file(&first).unwrap();
    s.outside_untouched();
}

#[test]
fn lying_frames_cost_only_their_files() {
    let s = scene("frames");
    let good = block(b"good data");
    // Declares 5 bytes, decompresses to 9.
    let mut short = block(b"liar data");
    short.1 = 5;
    // A bomb: 60 MB of zeros in one small frame, declared as 100 bytes.
    let bomb_raw = vec![0u8; 60 << 20];
    let bomb = (zstd::bulk::compress(&bomb_raw, 19).unwrap(), 100, [1; 32]);
    // Right length, wrong hash.
    let mut wrong = block(b"tampered!");
    wrong.2 = [9; 32];
    craft(&s.arc, vec![good, short, bomb, wrong], |ix| {
        tree(
            ix,
            &[(b"bomb", 3), (b"good", 1), (b"liar", 2), (b"wrong", 4)],
            vec![file(0, 9), file(BS, 5), file(2 * BS, 100), file(3 * BS, 9)],
        );
    });
    assert_eq!(bad_blocks(&s), [1, 2, 3]);
    let o = hbb(&["restore", s.a(), s.d()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(fs::read(s.dest.join("good")).unwrap(), b"good data");
    for f in ["liar", "bomb"] {
        assert!(!s.dest.join(f).exists(), "{f} restored from a bad block");
        assert!(stderr(&o).contains(f), "{}", stderr(&o));
    }
    // Reading trusts a frame that matches its frame check (format 1.2)
    // and leaves the content hash to verify, above: what the frame holds.
    assert_eq!(fs::read(s.dest.join("wrong")).unwrap(), b"tampered!");
    s.outside_untouched();

    // The same archive without its frame checks (as 1.0 and 1.1 wrote
    // them): reading checks every content hash, and the lie costs its file.
    let s = scene("frames-1.1");
    let mut wrong = block(b"tampered!");
    wrong.2 = [9; 32];
    craft(&s.arc, vec![block(b"good data"), wrong], |ix| {
        tree(
            ix,
            &[(b"good", 1), (b"wrong", 2)],
            vec![file(0, 9), file(BS, 9)],
        );
    });
    drop_frame_checks(&s.arc);
    let o = hbb(&["restore", s.a(), s.d()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(fs::read(s.dest.join("good")).unwrap(), b"good data");
    assert!(!s.dest.join("wrong").exists(), "restored from a bad block");
    assert!(
        stderr(&o).contains("content hash mismatch"),
        "{}",
        stderr(&o)
    );
    s.outside_untouched();
}

#[test]
fn many_tiny_blocks_and_huge_declared_index() {
    let s = scene("tiny");
    // 200,000 one-byte blocks all sharing one frame.
    craft(&s.arc, vec![block(b"z")], |ix| {
        let b = ix.blocks[0].clone();
        ix.blocks = vec![b; 200_000];
        tree(ix, &[(b"f", 1)], vec![file(BS * 199_999, 1)]);
    });
    assert_ok(&hbb(&["verify", s.a()]));
    assert_ok(&hbb(&["restore", s.a(), s.d()]));
    assert_eq!(fs::read(s.dest.join("f")).unwrap(), b"z");

    // A footer that declares a 1 TiB index: refused before allocating it.
    let s2 = scene("bigindex");
    craft(&s2.arc, vec![], |_| {});
    let mut bytes = fs::read(&s2.arc).unwrap();
    let at = bytes.len() - FOOTER_SIZE;
    let mut f: [u8; FOOTER_SIZE] = bytes[at..].try_into().unwrap();
    f[footer::INDEX_RLEN..footer::INDEX_RLEN + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let c = check32(&f[..footer::CHECK]);
    f[footer::CHECK..footer::CHECK + 4].copy_from_slice(&c.to_le_bytes());
    bytes[at..].copy_from_slice(&f);
    fs::write(&s2.arc, &bytes).unwrap();
    refused(&s2, "exceeds the limit");
}

#[test]
fn devices_and_setid_bits_only_for_root() {
    let s = scene("devices");
    craft(&s.arc, vec![block(b"#!/bin/sh\n")], |ix| {
        let mut suid = file(0, 10);
        suid.perm = 0o4755;
        tree(
            ix,
            &[(b"dev", 1), (b"prog", 2)],
            vec![
                inode(Body::CharDev {
                    rdev: rustix::fs::makedev(1, 3),
                }),
                suid,
            ],
        );
    });
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(s.dest.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&s.dest, fs::Permissions::from_mode(0o777)).unwrap();
    let o = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin(),
            "restore",
            s.a(),
            s.d(),
        ])
        .output()
        .unwrap();
    assert_fails(&o, 3, "device node not restored");
    assert!(!s.dest.join("dev").exists());
    let mode = fs::metadata(s.dest.join("prog"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "set-id bit kept for a non-root user");
    // As root, both come back.
    let d2 = s.dest.with_file_name("dest-root");
    assert_ok(&hbb(&["restore", s.a(), d2.to_str().unwrap()]));
    assert_eq!(
        fs::metadata(d2.join("prog")).unwrap().permissions().mode() & 0o7777,
        0o4755
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(d2.join("dev"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    fs::remove_dir_all(&d2).unwrap();
}

#[test]
fn other_formats_and_future_versions() {
    let s = scene("future");
    craft(&s.arc, vec![], |_| {});
    let mut bytes = fs::read(&s.arc).unwrap();
    let mut h: [u8; HEADER_SIZE] = bytes[..HEADER_SIZE].try_into().unwrap();
    h[header::VERSION_MAJOR..header::VERSION_MAJOR + 2].copy_from_slice(&2u16.to_le_bytes());
    let c = check32(&h[..header::CHECK]);
    h[header::CHECK..header::CHECK + 4].copy_from_slice(&c.to_le_bytes());
    bytes[..HEADER_SIZE].copy_from_slice(&h);
    fs::write(&s.arc, &bytes).unwrap();
    refused(&s, &format!("version 2.{VERSION_MINOR} is not supported"));
    // A flag this version does not know: refused, not ignored.
    let s3 = scene("flags");
    craft(&s3.arc, vec![], |_| {});
    let mut bytes = fs::read(&s3.arc).unwrap();
    let mut h: [u8; HEADER_SIZE] = bytes[..HEADER_SIZE].try_into().unwrap();
    h[header::FLAGS..header::FLAGS + 4].copy_from_slice(&1u32.to_le_bytes());
    let c = check32(&h[..header::CHECK]);
    h[header::CHECK..header::CHECK + 4].copy_from_slice(&c.to_le_bytes());
    bytes[..HEADER_SIZE].copy_from_slice(&h);
    fs::write(&s3.arc, &bytes).unwrap();
    refused(&s3, "format features this hbb does not know");
    // A zstd file is not an archive.
    let s2 = scene("zstdfile");
    fs::write(&s2.arc, zstd::bulk::compress(&[1u8; 100_000], 3).unwrap()).unwrap();
    refused(&s2, "not an hbb archive");
}

/// Frame checks that lie, or that are not frame checks at all: reads
/// refuse only the frames whose check fails, verify finds every block
/// whose check fails even where blocks share a frame, and bytes that do
/// not decode as checks, or that follow the extension of a 1.1 archive,
/// are ignored for content hashes.
#[test]
fn lying_or_garbled_frame_checks() {
    // Two blocks with the same bytes share one frame, and its check.
    let build = |name: &str| {
        let s = scene(name);
        craft(
            &s.arc,
            vec![block(b"same data"), block(b"same data")],
            |ix| {
                tree(ix, &[(b"a", 1), (b"b", 2)], vec![file(0, 9), file(BS, 9)]);
            },
        );
        s
    };
    let s = build("checks-lie");
    rewrite_after_extension(&s.arc, VERSION_MINOR, |mut c| {
        assert_eq!(c.checks[0], c.checks[1]);
        assert_ne!(c.checks[0], [0; 16]);
        c.checks[1] = [5; 16];
        postcard::to_stdvec(&c).unwrap()
    });
    assert_eq!(bad_blocks(&s), [1]);
    let o = hbb(&["restore", s.a(), s.d()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(fs::read(s.dest.join("a")).unwrap(), b"same data");
    assert!(!s.dest.join("b").exists());
    assert!(
        stderr(&o).contains("frame check mismatch"),
        "{}",
        stderr(&o)
    );
    s.outside_untouched();

    // Checks that are all wrong, after the extension of an archive that
    // says it is 1.1: not frame checks, ignored.
    let s = build("checks-in-1.1");
    rewrite_after_extension(&s.arc, 1, |c| {
        let n = c.checks.len();
        postcard::to_stdvec(&FrameChecks {
            checks: vec![[7; 16]; n],
        })
        .unwrap()
    });
    assert_ok(&hbb(&["verify", s.a()]));
    assert_ok(&hbb(&["restore", s.a(), s.d()]));
    assert_eq!(fs::read(s.dest.join("b")).unwrap(), b"same data");

    // A 1.2 archive whose checks do not decode (a count past the bytes):
    // ignored with a warning, content hashes checked.
    let s = build("checks-garbled");
    rewrite_after_extension(&s.arc, VERSION_MINOR, |_| vec![0xff, 0xff, 0x03]);
    let o = hbb(&["restore", s.a(), s.d()]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("frame checks do not decode"),
        "{}",
        stderr(&o)
    );
    assert_eq!(fs::read(s.dest.join("b")).unwrap(), b"same data");
}

#[test]
fn frames_that_match_their_checks_but_lie_when_decoded_in_part() {
    // 1 MiB blocks: frames of several zstd blocks, which a mount decodes
    // only as far as a read needs (`Partial`). Every frame matches its
    // frame check (the writer computes them), so only decoding finds what
    // is wrong: the first part may be handed out, the rest never is.
    let d: Vec<u8> = (0..1usize << 20)
        .map(|i| (i % 251 + i / 3001 + (i * i) % 7) as u8)
        .collect();
    let n = d.len() as u32;
    let good = zstd::bulk::compress(&d, 3).unwrap();
    let hash = *blake3::hash(&d).as_bytes();
    let cat = |a: &[u8], b: &[u8]| [a, b].concat();
    let cases: Vec<(Vec<u8>, u32, &str)> = vec![
        (good[..good.len() / 2].to_vec(), n, "cut short"),
        (Vec::new(), n, "cut short"),
        (cat(&good, &[0; 5]), n, "5 bytes after the end of its frame"),
        (cat(&good, &good), n, "after the end of its frame"),
        (good.clone(), n - 1, "decompress"),
        (
            zstd::bulk::compress(&d[..d.len() / 2], 3).unwrap(),
            n,
            "decompresses to 524288 bytes, the index says 1048576",
        ),
        (vec![0x5a; 4096], n, "does not decompress"),
    ];
    let s = scene("partial");
    let mut frames = vec![(good.clone(), n, hash)];
    // Other hashes, or the writer would store one frame for all.
    frames.extend(
        cases
            .iter()
            .enumerate()
            .map(|(k, (f, len, _))| (f.clone(), *len, [k as u8; 32])),
    );
    craft_with(&s.arc, 1 << 20, frames, |_| {});
    let a = Archive::open(&s.arc).unwrap();
    let mut p = Partial::new();
    // The good one, in parts.
    p.start(&a, 0, Vec::new()).unwrap();
    assert!(!p.advance(&a, 100).unwrap());
    assert!(p.decoded() >= 100 && p.decoded() < d.len());
    assert!(!p.advance(&a, 300_000).unwrap());
    assert!(p.decoded() >= 300_000);
    assert!(p.advance(&a, usize::MAX).unwrap());
    assert_eq!(p.take(), d);
    for (k, (_, _, why)) in cases.iter().enumerate() {
        let i = k as u64 + 1;
        for need in [100, usize::MAX] {
            p.start(&a, i, Vec::new()).unwrap();
            let e = match p.advance(&a, need) {
                Ok(false) => p.advance(&a, usize::MAX),
                r => r,
            }
            .map(|_| p.decoded())
            .expect_err(&format!("block {i}, need {need}"))
            .to_string();
            assert!(
                e.contains(why) && e.contains(&format!("block {i}")),
                "block {i}, need {need}: {e}"
            );
        }
    }
    // A small block (one zstd block, decoded whole) whose content hash
    // lies: its frame check vouches for it, as for a large one; only
    // `check_content` (verify) looks at the hash.
    let s = scene("partial-small");
    let small = zstd::bulk::compress(&d[..1000], 3).unwrap();
    craft_with(&s.arc, 1 << 20, vec![(small, 1000, [9; 32])], |_| {});
    let mut a = Archive::open(&s.arc).unwrap();
    p.start(&a, 0, Vec::new()).unwrap();
    assert!(p.advance(&a, 10).unwrap());
    assert_eq!(p.take(), d[..1000]);
    a.check_content = true;
    p.start(&a, 0, Vec::new()).unwrap();
    let e = p.advance(&a, 10).unwrap_err().to_string();
    assert!(e.contains("content hash mismatch"), "{e}");

    // Any one byte of the good frame changed, its check rewritten to
    // match: an error or other bytes, never a panic.
    for at in (0..good.len()).step_by(good.len() / 97) {
        let s = scene("partial-flip");
        let mut f = good.clone();
        f[at] ^= 0x40;
        craft_with(&s.arc, 1 << 20, vec![(f, n, hash)], |_| {});
        let a = Archive::open(&s.arc).unwrap();
        p.start(&a, 0, Vec::new()).unwrap();
        let _ = p.advance(&a, 100).and_then(|_| p.advance(&a, usize::MAX));
    }
}
