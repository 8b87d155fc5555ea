//! `hbb mount` over real FUSE: file-mode trees compared with their source
//! (stat and xattrs, `diff -r`, `rsync -c`, `cp -a`), a volume archive of an
//! ext4 image loop-mounted from the mount, many readers at once, a damaged
//! block, the error messages, signals and `hbb umount`.
//!
//! Needs root, /dev/fuse, and the tools of the Debian packages fuse3, rsync,
//! e2fsprogs (plus util-linux, coreutils, diffutils). Every mount is undone
//! in Drop (`fusermount3 -u -z`, then `umount -l`), also when a test fails.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hbb::archive::{Archive, BlockLoc, Body};

// ---------------------------------------------------------------------------
// Harness

impl Mounted {
    /// Mounts in the background; returns once `hbb mount` has exited 0.
    #[track_caller]
    fn new(archive: &Path, mp: &Path, extra: &[&str]) -> Mounted {
        fs::create_dir_all(mp).unwrap();
        let mut args = vec!["mount", archive.to_str().unwrap(), mp.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = hbb(&args);
        let m = Mounted(mp.to_path_buf());
        assert_ok(&o);
        assert!(is_mounted(mp), "hbb mount returned but nothing is mounted");
        m
    }

    /// A guard for a mount made some other way (foreground, or expected to fail).
    fn guard(mp: &Path) -> Mounted {
        Mounted(mp.to_path_buf())
    }
}

#[track_caller]
fn snapshot(src: &Path, arc: &Path, extra: &[&str]) {
    let mut args = vec!["snapshot", "-q", "--block-size", "64K"];
    args.extend_from_slice(extra);
    args.push(src.to_str().unwrap());
    args.push(arc.to_str().unwrap());
    assert_ok(&hbb(&args));
}

fn require_root() {
    assert!(
        hbb::sys::is_root(),
        "the mount tests need root (mknod, chown, loop devices)"
    );
}

/// `hbb mount -f` as a child whose stderr goes to `log`.
fn spawn_foreground(arc: &Path, mp: &Path, log: &Path, extra: &[&str]) -> Child {
    fs::create_dir_all(mp).unwrap();
    Command::new(bin())
        .args(["mount", "-f"])
        .arg(arc)
        .arg(mp)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: sends a signal to a process of ours.
    unsafe { libc::kill(pid, sig) };
}

/// Every kind of entry, plus what stresses a FUSE layer: files spanning many
/// blocks, holes inside blocks, a directory too big for one readdir reply,
/// a time before 1970, a device number of more than 8 bits of minor.
fn make_tree(root: &Path) {
    make_every_kind(root);
    write_pattern(&root.join("big.bin"), 2_500_000, 7);
    fs::create_dir(root.join("many")).unwrap();
    for i in 0..400 {
        fs::write(
            root.join(format!("many/entry-with-a-longish-name-{i:04}")),
            i.to_string(),
        )
        .unwrap();
    }
    // Small data pieces far apart, and one block holding two of them.
    let f = fs::File::create(root.join("holes")).unwrap();
    f.set_len(5_000_000).unwrap();
    for off in [0u64, 8192, 1_000_000, 1_004_096, 4_999_000] {
        f.write_all_at(&pattern(1000, off), off).unwrap();
    }
    drop(f);
    fs::hard_link(root.join("big.bin"), root.join("many/big-link")).unwrap();
    fs::hard_link(root.join("big.bin"), root.join("dir/big-link2")).unwrap();
    std::os::unix::fs::symlink("dir/sub", root.join("link-to-dir")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("wide-dev"),
        rustix::fs::FileType::CharacterDevice,
        0o600.into(),
        rustix::fs::makedev(200, 70_000),
    )
    .unwrap();
    let old = root.join("before-1970");
    fs::write(&old, b"old\n").unwrap();
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: -86_400,
            tv_nsec: 5,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: -1000,
            tv_nsec: 123_456_789,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, &old, &ts, rustix::fs::AtFlags::empty()).unwrap();
    rustix::fs::chown(
        root.join("many"),
        Some(rustix::fs::Uid::from_raw(4_000_000)),
        Some(rustix::fs::Gid::from_raw(7)),
    )
    .unwrap();
    let c = std::ffi::CString::new("user.big").unwrap();
    rustix::fs::lsetxattr(
        root.join("big.bin"),
        c.as_c_str(),
        &pattern(3000, 9),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

/// Directory link counts and hard-link identity, both ways.
#[track_caller]
fn compare_links(src: &Path, mnt: &Path) {
    let mut src_to_mnt: HashMap<u64, u64> = HashMap::new();
    let mut mnt_to_src: HashMap<u64, u64> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let (a, b) = (src.join(&rel), mnt.join(&rel));
        let (ma, mb) = (
            fs::symlink_metadata(&a).unwrap(),
            fs::symlink_metadata(&b).unwrap(),
        );
        assert_eq!(ma.nlink(), mb.nlink(), "{}: nlink", rel.display());
        assert_eq!(*src_to_mnt.entry(ma.ino()).or_insert(mb.ino()), mb.ino());
        assert_eq!(*mnt_to_src.entry(mb.ino()).or_insert(ma.ino()), ma.ino());
        if ma.is_dir() {
            for e in fs::read_dir(&a).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    assert_eq!(fs::metadata(mnt).unwrap().ino(), 1, "the root is inode 1");
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn file_archive_mounts_as_its_tree() {
    require_root();
    let t = Tmp::new("mount-tree");
    let (src, arc, mp) = (t.path("src"), t.path("a.hbb"), t.path("mnt"));
    make_tree(&src);
    snapshot(&src, &arc, &["--mode", "file"]);
    let _m = Mounted::new(&arc, &mp, &[]);
    // Metadata first: reading the source later may move its atimes.
    compare_trees(&src, &mp);
    compare_links(&src, &mp);
    assert_eq!(mount_type(&mp).as_deref(), Some("fuse"));
    diff_r(&src, &mp);
    let o = run(
        "rsync",
        &[
            "-aHX".as_ref(),
            "-c".as_ref(),
            "-n".as_ref(),
            "--numeric-ids".as_ref(),
            "--itemize-changes".as_ref(),
            format!("{}/", mp.display()).as_ref(),
            format!("{}/", src.display()).as_ref(),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "",
        "rsync from the mount to the source has something to do"
    );
    // Holes are holes to SEEK_DATA/SEEK_HOLE too.
    let f = fs::File::open(mp.join("holes")).unwrap();
    let seek = |off: i64, whence: i32| {
        use std::os::fd::AsRawFd;
        // SAFETY: lseek on an open descriptor.
        unsafe { libc::lseek(f.as_raw_fd(), off, whence) }
    };
    assert_eq!(seek(0, libc::SEEK_HOLE), 4096);
    assert_eq!(seek(20_000, libc::SEEK_DATA), 1_000_000 / 4096 * 4096);
    // statfs: read-only, counts the entries.
    let st = rustix::fs::statvfs(&mp).unwrap();
    assert!(st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
    assert!(st.f_files > 400);
    // Writing is refused.
    let e = fs::OpenOptions::new()
        .write(true)
        .open(mp.join("plain.txt"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        fs::create_dir(mp.join("new")).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
}

#[test]
fn cp_restores_a_file_and_the_whole_tree() {
    require_root();
    let t = Tmp::new("mount-cp");
    let (src, arc, mp, out) = (t.path("src"), t.path("a.hbb"), t.path("mnt"), t.path("out"));
    make_tree(&src);
    snapshot(&src, &arc, &[]);
    let _m = Mounted::new(
        &arc,
        &mp,
        &[
            "--cache",
            "1M",
            "--threads",
            "2",
            "-o",
            "allow_other,noexec",
        ],
    );
    let line = mount_line(&mp).unwrap();
    for o in [
        "ro,",
        "nosuid",
        "nodev",
        "noexec",
        "allow_other",
        "default_permissions",
    ] {
        assert!(line.contains(o), "{o} missing from {line}");
    }
    // Everything, with owners, modes, times, links, xattrs and holes
    // (compared before anything reads the source and moves its atimes).
    run("cp", &["-a".as_ref(), mp.as_os_str(), out.as_os_str()]);
    compare_trees(&src, &out);
    diff_r(&src, &out);
    // One file, as docs/MOUNT.md shows it.
    let one = t.path("one");
    run("cp", &[mp.join("big.bin").as_os_str(), one.as_os_str()]);
    cmp(&src.join("big.bin"), &one);
}

#[test]
fn volume_archive_is_a_loop_mountable_image() {
    require_root();
    let t = Tmp::new("mount-volume");
    let (tree, img, arc) = (t.path("tree"), t.path("disk.img"), t.path("v.hbb"));
    let (mp, lmp) = (t.path("mnt"), t.path("inner"));
    fs::create_dir_all(tree.join("docs/deeper")).unwrap();
    write_pattern(&tree.join("docs/report.txt"), 700_000, 3);
    write_pattern(&tree.join("docs/deeper/data.bin"), 3_000_000, 4);
    fs::write(tree.join("small"), b"tiny\n").unwrap();
    std::os::unix::fs::symlink("docs/report.txt", tree.join("shortcut")).unwrap();
    fs::hard_link(tree.join("small"), tree.join("docs/small-again")).unwrap();
    mkfs_ext4(&img, 32, &tree);
    snapshot(&img, &arc, &[]);
    let _m = Mounted::new(&arc, &mp, &[]);
    let names: Vec<_> = fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("disk.img")]);
    let inside = mp.join("disk.img");
    assert_eq!(
        fs::metadata(&inside).unwrap().len(),
        fs::metadata(&img).unwrap().len()
    );
    cmp(&img, &inside);
    fs::create_dir(&lmp).unwrap();
    let _l = LoopMount::new(&inside, &lmp, true);
    let o = Command::new("diff")
        .args(["-r", "--no-dereference", "-x", "lost+found"])
        .arg(&tree)
        .arg(&lmp)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "diff -r tree inner: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn sixteen_readers_at_random_offsets_get_the_right_bytes() {
    require_root();
    let t = Tmp::new("mount-parallel");
    let (src, arc, mp) = (t.path("src"), t.path("a.hbb"), t.path("mnt"));
    fs::create_dir(&src).unwrap();
    write_pattern(&src.join("a"), 6_000_000, 11);
    write_pattern(&src.join("b"), 3_000_000, 12);
    write_pattern(&src.join("c"), 1_000_001, 13);
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(8_000_000).unwrap();
    for off in [100_000u64, 2_000_000, 2_050_000, 7_990_000] {
        f.write_all_at(&pattern(9000, off), off).unwrap();
    }
    drop(f);
    snapshot(&src, &arc, &[]);
    // A small cache: evictions and concurrent misses all the time.
    let _m = Mounted::new(&arc, &mp, &["--cache", "1M", "--threads", "4"]);
    let names = ["a", "b", "c", "sparse"];
    let want: Arc<Vec<Vec<u8>>> = Arc::new(
        names
            .iter()
            .map(|n| fs::read(src.join(n)).unwrap())
            .collect(),
    );
    let hs: Vec<_> = (0..16u64)
        .map(|t| {
            let want = want.clone();
            let mp = mp.clone();
            std::thread::spawn(move || {
                // Half the readers bypass the page cache, so that every one
                // of their reads reaches the filesystem.
                let files: Vec<fs::File> = names
                    .iter()
                    .map(|n| {
                        let mut o = fs::OpenOptions::new();
                        o.read(true);
                        if t % 2 == 0 {
                            o.custom_flags(libc::O_DIRECT);
                        }
                        o.open(mp.join(n)).unwrap()
                    })
                    .collect();
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for i in 0..200 {
                    let k = (next() % names.len() as u64) as usize;
                    let size = want[k].len() as u64;
                    let off = next() % (size + 1000);
                    let len = 1 + (next() % 300_000) as usize;
                    let mut buf = vec![0u8; len];
                    let mut got = 0;
                    while got < len {
                        let n = files[k].read_at(&mut buf[got..], off + got as u64).unwrap();
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    let lo = off.min(size) as usize;
                    let hi = (off + len as u64).min(size) as usize;
                    assert_eq!(got, hi - lo, "reader {t} read {i}: {} at {off}", names[k]);
                    assert!(
                        buf[..got] == want[k][lo..hi],
                        "reader {t} read {i}: wrong bytes in {} at {off} len {len}",
                        names[k]
                    );
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn damaged_block_is_eio_for_its_file_only_and_logged() {
    require_root();
    let t = Tmp::new("mount-damaged");
    let (src, arc, mp, log) = (t.path("src"), t.path("a.hbb"), t.path("mnt"), t.path("log"));
    fs::create_dir(&src).unwrap();
    write_pattern(&src.join("a"), 300_000, 21);
    write_pattern(&src.join("victim"), 1_000_000, 22);
    write_pattern(&src.join("z"), 300_000, 23);
    snapshot(&src, &arc, &["--mode", "file"]);
    // Damage the frame of the block holding victim's byte 600 000.
    let a = Archive::open(&arc).unwrap();
    let ino = a.resolve(b"victim").unwrap();
    let Body::File { extents, .. } = &a.inode(ino).body else {
        panic!("victim is not a file")
    };
    let e = extents.iter().find(|e| e.offset <= 600_000).unwrap();
    let block = (e.stream + 600_000 - e.offset) / a.block_size();
    let BlockLoc::Frame { offset, clen } = a.index.blocks[block as usize].loc else {
        panic!("block {block} has no frame")
    };
    drop(a);
    flip_byte(&arc, offset + u64::from(clen) / 2);

    let mut child = spawn_foreground(&arc, &mp, &log, &["--threads", "3"]);
    let _g = Mounted::guard(&mp);
    wait_until("mount -f ready", 20, || is_mounted(&mp));
    // The whole file: EIO, not ENOENT; it is still there.
    let err = fs::read(mp.join("victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(fs::metadata(mp.join("victim")).unwrap().len(), 1_000_000);
    // Its first bytes, far from the damage, still read.
    let f = fs::File::open(mp.join("victim")).unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, pattern(1_000_000, 22)[..4096]);
    // Other files read in full, again and again.
    for _ in 0..2 {
        cmp(&src.join("a"), &mp.join("a"));
        cmp(&src.join("z"), &mp.join("z"));
    }
    assert!(fs::read(mp.join("victim")).is_err());
    // SIGTERM: clean unmount, exit 0 (nothing open: not busy).
    drop(f);
    kill(child.id() as i32, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "hbb mount -f after SIGTERM: {status}");
    assert!(!is_mounted(&mp));
    let mut text = String::new();
    fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        text.contains("/victim (inode")
            && text.contains(&format!("block {block} (archive offset {offset})")),
        "the log does not name the file and the block:\n{text}"
    );
    assert_eq!(
        text.matches("read error").count(),
        1,
        "one line per damaged block and file:\n{text}"
    );
}

/// The line `hbb mount` logs when it unmounts, with its cache counts.
fn unmount_line(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap();
    text.lines()
        .find(|l| l.contains("unmounted; cache:"))
        .unwrap_or_else(|| panic!("no unmount line in the log:\n{text}"))
        .to_string()
}

/// The number of blocks the unmount line of `log` says were read ahead.
fn read_ahead_blocks(log: &Path) -> u64 {
    let line = unmount_line(log);
    let (before, _) = line
        .split_once(" read ahead;")
        .unwrap_or_else(|| panic!("no read-ahead count in {line:?}"));
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Mounts `arc` in the foreground, reads `file` at each `(offset, len)` of
/// `reads` in turn with the kernel's own read-ahead off (POSIX_FADV_RANDOM,
/// so the mount sees these reads and no others), checks the bytes against
/// `want`, unmounts (SIGTERM) and returns how many blocks the mount read
/// ahead.
fn blocks_read_ahead(
    t: &Tmp,
    arc: &Path,
    file: &str,
    want: &[u8],
    reads: impl IntoIterator<Item = (u64, usize)>,
) -> u64 {
    let (mp, log) = (t.path("mnt"), t.path("log"));
    let mut child = spawn_foreground(arc, &mp, &log, &[]);
    let g = Mounted::guard(&mp);
    wait_until("mount -f ready", 20, || is_mounted(&mp));
    let f = fs::File::open(mp.join(file)).unwrap();
    // SAFETY: advice on a file descriptor we own.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(r, 0);
    let mut buf = Vec::new();
    for (off, len) in reads {
        buf.resize(len, 0);
        f.read_exact_at(&mut buf, off).unwrap();
        let at = off as usize;
        assert!(buf == want[at..at + len], "bytes at {off}");
    }
    drop(f);
    kill(child.id() as i32, libc::SIGTERM);
    assert!(child.wait().unwrap().success());
    drop(g);
    read_ahead_blocks(&log)
}

#[test]
fn random_or_backward_reads_read_nothing_ahead_and_a_stream_does() {
    require_root();
    let t = Tmp::new("mount-readahead");
    let (src, arc) = (t.path("src"), t.path("a.hbb"));
    fs::create_dir(&src).unwrap();
    let size = 12_000_000u64;
    write_pattern(&src.join("big"), size as usize, 5);
    let want = pattern(size as usize, 5);
    snapshot(&src, &arc, &[]);
    let chunk = 64 << 10;
    // 4 KiB reads in shuffled order inside 128 KiB windows far apart, as a
    // database or the benchmark's cached reads make them: each window's
    // blocks are decoded, and no more (the first rule took any read within
    // 1 MiB of the last for a stream, and decoded the next blocks for
    // nothing).
    let shuffled = (1..6u64).flat_map(|w| {
        let base = w * 2_000_000 / 4096 * 4096;
        let mut order: Vec<u64> = (0..32).collect();
        order.sort_by_key(|i| (i * 13 + w * 7) % 32);
        order.into_iter().map(move |i| (base + i * 4096, 4096))
    });
    assert_eq!(blocks_read_ahead(&t, &arc, "big", &want, shuffled), 0);
    // Nor does a file read backwards, 64 KiB at a time: what lies ahead of
    // such a run was read already.
    let backwards = (4_000_000 / chunk..=11_000_000 / chunk)
        .rev()
        .map(|k| (k * chunk, chunk as usize));
    assert_eq!(blocks_read_ahead(&t, &arc, "big", &want, backwards), 0);
    // A stream from the middle of the file still gets read-ahead.
    let forwards = (4_000_000 / chunk..size / chunk).map(|k| (k * chunk, chunk as usize));
    assert!(blocks_read_ahead(&t, &arc, "big", &want, forwards) > 0);
}

/// The number of files the unmount line of `log` says were pushed ahead.
fn pushed_files(log: &Path) -> u64 {
    let line = unmount_line(log);
    let (_, after) = line
        .split_once("read ahead; ")
        .unwrap_or_else(|| panic!("no push counts in {line:?}"));
    after.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn reading_a_tree_in_order_pushes_files_ahead_never_wrong_bytes() {
    require_root();
    let t = Tmp::new("mount-push");
    let (src, arc, mp, log) = (t.path("src"), t.path("a.hbb"), t.path("mnt"), t.path("log"));
    // Directories of small files (several to a 64 KiB block), each with a
    // subdirectory in the middle of its names, as tar and cp -r meet them.
    let mut n = 0u64;
    for d in 0..6 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(dir.join("m-sub")).unwrap();
        for i in 0..150 {
            let len = 300 + (i * 997 + d * 31) % 9000;
            write_pattern(&dir.join(format!("f{i:03}")), len, n);
            write_pattern(&dir.join(format!("m-sub/g{i:03}")), len / 2 + 1, n + 7);
            n += 2;
        }
        write_pattern(&dir.join("large"), 700_000, n);
        fs::write(dir.join("empty"), b"").unwrap();
    }
    snapshot(&src, &arc, &["--mode", "file"]);
    // One block of small files in d3 damaged.
    let a = Archive::open(&arc).unwrap();
    let ino = a.resolve(b"d3/f070").unwrap();
    let Body::File { extents, .. } = &a.inode(ino).body else {
        panic!("not a file")
    };
    let block = extents[0].stream / a.block_size();
    let in_block = |name: &[u8]| {
        let Body::File { extents, .. } = &a.inode(a.resolve(name).unwrap()).body else {
            return false;
        };
        extents.iter().any(|e| {
            e.stream / a.block_size() <= block && block <= (e.stream + e.len - 1) / a.block_size()
        })
    };
    let damaged: Vec<String> = (0..150)
        .map(|i| format!("d3/f{i:03}"))
        .filter(|p| in_block(p.as_bytes()))
        .collect();
    assert!(damaged.len() >= 3, "{damaged:?}");
    let BlockLoc::Frame { offset, clen } = a.index.blocks[block as usize].loc else {
        panic!("block {block} has no frame")
    };
    drop(a);
    flip_byte(&arc, offset + u64::from(clen) / 2);

    let mut child = spawn_foreground(&arc, &mp, &log, &["--threads", "2"]);
    let _g = Mounted::guard(&mp);
    wait_until("mount -f ready", 20, || is_mounted(&mp));
    // tar reads every file in directory order (and says which it could not).
    let out = t.path("out");
    fs::create_dir(&out).unwrap();
    let o = Command::new("bash")
        .arg("-c")
        .arg("tar -cf - -C \"$1\" . 2>\"$3\" | tar -xf - -C \"$2\"")
        .args(["-", mp.to_str().unwrap(), out.to_str().unwrap()])
        .arg(t.path("tar.err"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let errs = fs::read_to_string(t.path("tar.err")).unwrap();
    for p in &damaged {
        assert!(
            errs.contains(p.as_str()),
            "tar did not fail on {p}:\n{errs}"
        );
        // Never some other bytes: the damaged files stay an I/O error.
        let e = fs::read(mp.join(p)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{p}: {e}");
    }
    // Everything else is exactly the source, read through the kernel's
    // cache as the pushes left it.
    for p in &damaged {
        fs::remove_file(src.join(p)).unwrap();
        let _ = fs::remove_file(out.join(p));
    }
    diff_r(&src, &out);
    kill(child.id() as i32, libc::SIGTERM);
    assert!(child.wait().unwrap().success());
    let pushed = pushed_files(&log);
    // 1800 small files: most were in the kernel's cache before tar asked.
    assert!(
        pushed >= 900,
        "only {pushed} files pushed ahead:\n{}",
        fs::read_to_string(&log).unwrap()
    );

    // A reader of one file now and then pushes nothing.
    let log2 = t.path("log2");
    let mut child = spawn_foreground(&arc, &mp, &log2, &[]);
    wait_until("mount -f ready", 20, || is_mounted(&mp));
    for p in ["d0/f010", "d5/f100", "d1/f020"] {
        cmp(&src.join(p), &mp.join(p));
    }
    kill(child.id() as i32, libc::SIGTERM);
    assert!(child.wait().unwrap().success());
    assert_eq!(pushed_files(&log2), 0);
}

#[test]
fn a_reader_entering_a_directory_finds_its_files_pushed() {
    require_root();
    let t = Tmp::new("mount-push-dirs");
    let (src, arc, mp, log) = (t.path("src"), t.path("a.hbb"), t.path("mnt"), t.path("log"));
    // Many directories of four small files: a push stops at the end of
    // each (the kernel holds the next one's inodes only once it is listed),
    // and goes on when tar lists the next. Without that, tar itself asks
    // for each directory's first file: at most 3 of 4 would be pushed.
    let dirs = 250u64;
    for d in 0..dirs {
        let dir = src.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..4 {
            write_pattern(
                &dir.join(format!("f{i}")),
                (200 + (d * 131 + i * 17) % 3000) as usize,
                d * 4 + i,
            );
        }
    }
    snapshot(&src, &arc, &["--mode", "file"]);
    let mut child = spawn_foreground(&arc, &mp, &log, &["--threads", "2"]);
    let _g = Mounted::guard(&mp);
    wait_until("mount -f ready", 20, || is_mounted(&mp));
    let out = t.path("out");
    fs::create_dir(&out).unwrap();
    let o = Command::new("bash")
        .arg("-c")
        .arg("tar -cf - -C \"$1\" . | tar -xf - -C \"$2\"")
        .args(["-", mp.to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    diff_r(&src, &out);
    kill(child.id() as i32, libc::SIGTERM);
    assert!(child.wait().unwrap().success());
    let pushed = pushed_files(&log);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        pushed * 100 >= dirs * 4 * 85,
        "only {pushed} of {} files pushed ahead:\n{text}",
        dirs * 4
    );
    assert!(
        !text.contains(" 0 went on at a directory listing"),
        "no push went on at a listing:\n{text}"
    );
}

#[test]
fn mount_errors_say_why() {
    require_root();
    let t = Tmp::new("mount-errors");
    let (src, arc) = (t.path("src"), t.path("a.hbb"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data\n").unwrap();
    snapshot(&src, &arc, &[]);
    let a = arc.to_str().unwrap();
    let fails = |args: &[&str], want: &str| {
        let o = hbb(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
    };
    let missing = t.path("nowhere");
    fails(&["mount", a, missing.to_str().unwrap()], "does not exist");
    let file = t.path("file");
    fs::write(&file, b"x").unwrap();
    fails(&["mount", a, file.to_str().unwrap()], "not a directory");
    let mp = t.path("mnt");
    fs::create_dir(&mp).unwrap();
    fails(
        &["mount", file.to_str().unwrap(), mp.to_str().unwrap()],
        "not an hbb archive",
    );
    fails(
        &[
            "mount",
            t.path("no.hbb").to_str().unwrap(),
            mp.to_str().unwrap(),
        ],
        "No such file",
    );
    fails(&["mount", a, mp.to_str().unwrap(), "-o", "rw"], "read-only");
    assert!(!is_mounted(&mp));
    {
        let _m = Mounted::new(&arc, &mp, &[]);
        fails(&["mount", a, mp.to_str().unwrap()], "busy");
        // Busy for umount too, while a file is open there.
        let f = fs::File::open(mp.join("f")).unwrap();
        fails(&["umount", mp.to_str().unwrap()], "busy");
        assert!(is_mounted(&mp));
        // --lazy detaches now; the open file still reads.
        assert_ok(&hbb(&["umount", "--lazy", mp.to_str().unwrap()]));
        assert!(!is_mounted(&mp));
        let mut s = String::new();
        (&f).read_to_string(&mut s).unwrap();
        assert_eq!(s, "data\n");
        drop(f);
        wait_until("the daemon exits", 10, || {
            mount_daemons("mount", &mp).is_empty()
        });
    }
    fails(&["umount", mp.to_str().unwrap()], "not mounted");
    // Without /dev/fuse (a private /dev in a mount namespace).
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /dev && exec "$0" mount "$1" "$2""#)
        .arg(bin())
        .arg(&arc)
        .arg(&mp)
        .output()
        .unwrap();
    assert_fails(&o, 1, "/dev/fuse does not exist");
}

#[test]
fn signals_and_umount_leave_nothing_behind() {
    require_root();
    let t = Tmp::new("mount-signals");
    let (src, arc) = (t.path("src"), t.path("a.hbb"));
    fs::create_dir(&src).unwrap();
    write_pattern(&src.join("f"), 100_000, 31);
    snapshot(&src, &arc, &[]);

    // Foreground, SIGINT (Ctrl-C).
    let (mp, log) = (t.path("fg"), t.path("fg.log"));
    let mut child = spawn_foreground(&arc, &mp, &log, &[]);
    let _g = Mounted::guard(&mp);
    wait_until("mount -f ready", 20, || is_mounted(&mp));
    cmp(&src.join("f"), &mp.join("f"));
    kill(child.id() as i32, libc::SIGINT);
    assert!(child.wait().unwrap().success());
    assert!(!is_mounted(&mp));
    fs::metadata(&mp).unwrap();

    // Background, SIGTERM to the daemon.
    let mp = t.path("bg");
    let _m = Mounted::new(&arc, &mp, &[]);
    cmp(&src.join("f"), &mp.join("f"));
    let pids = mount_daemons("mount", &mp);
    assert_eq!(pids.len(), 1, "one daemon serves the mount: {pids:?}");
    kill(pids[0], libc::SIGTERM);
    wait_until("SIGTERM unmounts", 10, || !is_mounted(&mp));
    wait_until("the daemon exits", 10, || {
        mount_daemons("mount", &mp).is_empty()
    });
    // Not a dead "Transport endpoint is not connected" mount: a directory.
    assert!(fs::metadata(&mp).unwrap().is_dir());

    // Background, then hbb umount; mounting again works.
    for _ in 0..2 {
        let m = Mounted::new(&arc, &mp, &[]);
        cmp(&src.join("f"), &mp.join("f"));
        assert_ok(&hbb(&["umount", mp.to_str().unwrap()]));
        assert!(!is_mounted(&mp));
        wait_until("the daemon exits", 10, || {
            mount_daemons("mount", &mp).is_empty()
        });
        drop(m);
    }
    // In quick succession: a daemon on its way out never touches the next
    // mount at the same place (its device number may be the same).
    for i in 0..10 {
        let m = Mounted::new(&arc, &mp, &[]);
        let got = fs::read(mp.join("f")).unwrap_or_else(|e| panic!("round {i}: {e}"));
        assert_eq!(got.len(), 100_000);
        assert_ok(&hbb(&["umount", mp.to_str().unwrap()]));
        drop(m);
    }
    wait_until("the daemons exit", 10, || {
        mount_daemons("mount", &mp).is_empty()
    });
    assert!(!is_mounted(&mp));
}

/// Resident memory of a process, in bytes.
fn rss(pid: i32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// 64 readers over random files and offsets for HBB_LOAD_SECS seconds
/// (default 15; scripts/load.sh runs it for minutes): every byte checked,
/// the daemon's memory within the cache bound, no deadlock, and a clean
/// unmount afterwards.
#[test]
fn sixty_four_readers_under_load() {
    require_root();
    let secs: u64 = std::env::var("HBB_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let t = Tmp::new("mount-load");
    let (src, arc, mp) = (t.path("src"), t.path("a.hbb"), t.path("mnt"));
    fs::create_dir(&src).unwrap();
    let mut names = Vec::new();
    for i in 0..40u64 {
        let size = [100, 40_000, 300_000, 1_000_000, 4_000_000][i as usize % 5] + i as usize * 777;
        let n = format!("f{i:02}");
        write_pattern(&src.join(&n), size, 1000 + i);
        names.push(n);
    }
    snapshot(&src, &arc, &[]);
    let cache: u64 = 8 << 20;
    let m = Mounted::new(&arc, &mp, &["--cache", "8M", "--threads", "4"]);
    let pid = mount_daemons("mount", &mp)[0];
    let want: Arc<Vec<Vec<u8>>> = Arc::new(
        names
            .iter()
            .map(|n| fs::read(src.join(n)).unwrap())
            .collect(),
    );
    let names = Arc::new(names);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hs: Vec<_> = (0..64u64)
        .map(|t| {
            let (want, names, mp, reads) = (want.clone(), names.clone(), mp.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (t * 7919 + 1);
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                while Instant::now() < deadline {
                    let k = (next() % names.len() as u64) as usize;
                    let mut o = fs::OpenOptions::new();
                    o.read(true);
                    if t % 2 == 0 {
                        o.custom_flags(libc::O_DIRECT);
                    }
                    let f = o.open(mp.join(&names[k])).unwrap();
                    let size = want[k].len() as u64;
                    for _ in 0..8 {
                        let off = next() % size;
                        let len = 1 + (next() % 200_000) as usize;
                        let mut buf = vec![0u8; len];
                        let mut got = 0;
                        while got < len {
                            let n = f.read_at(&mut buf[got..], off + got as u64).unwrap();
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                        let hi = (off + len as u64).min(size) as usize;
                        assert!(
                            buf[..got] == want[k][off as usize..hi],
                            "reader {t}: wrong bytes in {} at {off}",
                            names[k]
                        );
                        reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // The daemon's memory while the readers run.
    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    for h in hs {
        h.join().unwrap();
    }
    assert!(
        reads.load(std::sync::atomic::Ordering::Relaxed) > 1000,
        "too few reads: a stall?"
    );
    // The cache, plus the index, the threads' stacks and the allocator's slack.
    assert!(
        peak < cache + (64 << 20),
        "mount process peaked at {peak} bytes with an 8 MiB cache"
    );
    eprintln!(
        "load: {} reads in {secs}s, daemon peak RSS {} MiB",
        reads.load(std::sync::atomic::Ordering::Relaxed),
        peak >> 20
    );
    assert_ok(&hbb(&["umount", mp.to_str().unwrap()]));
    wait_until("the daemon exits", 10, || {
        mount_daemons("mount", &mp).is_empty()
    });
    assert!(!is_mounted(&mp));
    drop(m);
}

#[test]
fn a_killed_daemon_leaves_a_mount_that_hbb_umount_cleans() {
    require_root();
    let t = Tmp::new("mount-killed");
    let (src, arc, mp) = (t.path("src"), t.path("a.hbb"), t.path("mnt"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("x"), b"still here\n").unwrap();
    snapshot(&src, &arc, &[]);
    let m = Mounted::new(&arc, &mp, &[]);
    let pids = mount_daemons("mount", &mp);
    assert_eq!(pids.len(), 1);
    kill(pids[0], libc::SIGKILL);
    wait_until("the daemon dies", 10, || {
        mount_daemons("mount", &mp).is_empty()
    });
    // "Transport endpoint is not connected" (or, for a request caught in
    // flight, "Software caused connection abort").
    let e = fs::metadata(&mp).unwrap_err();
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
        ),
        "{e}"
    );
    assert_ok(&hbb(&["umount", mp.to_str().unwrap()]));
    assert!(!is_mounted(&mp));
    assert!(fs::metadata(&mp).unwrap().is_dir());
    // And the mountpoint takes a new mount.
    drop(m);
    let _m2 = Mounted::new(&arc, &mp, &[]);
    assert_eq!(fs::read(mp.join("x")).unwrap(), b"still here\n");
}
