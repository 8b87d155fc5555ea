//! One FUSE mount showing many archives (`hbb mount-archives`, the test
//! entry point that `hbb mount REPO MNT` will replace): each archive a
//! directory of the mount's root, browsable as a one-archive mount is
//! (stat, xattrs, links, holes, `diff -r`), disjoint inode numbers, one
//! cache and one pool of workers for all, archives opened only when looked
//! into, a damaged or vanished archive failing alone with EIO.
//!
//! Needs root and /dev/fuse (fuse3's tools for the cleanup). Every mount is
//! undone in Drop, also when a test fails.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

// ---------------------------------------------------------------------------
// Harness

impl Mounted {
    /// `hbb mount-archives MP ARCHIVES... EXTRA...` in the background;
    /// returns once it has exited 0.
    #[track_caller]
    fn new(mp: &Path, archives: &[PathBuf], extra: &[&str]) -> Mounted {
        fs::create_dir_all(mp).unwrap();
        let mut c = Command::new(bin());
        c.arg("mount-archives").arg(mp).args(archives).args(extra);
        let o = c.output().unwrap();
        let m = Mounted(mp.to_path_buf());
        assert_ok(&o);
        assert!(is_mounted(mp), "hbb returned but nothing is mounted");
        m
    }

    /// `hbb mount-archives -f` as a child logging to `log`, once mounted.
    fn foreground(mp: &Path, archives: &[PathBuf], log: &Path) -> (Mounted, Child) {
        fs::create_dir_all(mp).unwrap();
        let child = Command::new(bin())
            .args(["mount-archives", "-f"])
            .arg(mp)
            .args(archives)
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let m = Mounted(mp.to_path_buf());
        wait_until("mount -f ready", 20, || is_mounted(mp));
        (m, child)
    }
}

/// The files a process has open, by path.
fn open_files(pid: i32) -> Vec<PathBuf> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| fs::read_link(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The archives (`*.hbb`) a process has open, by file name.
fn open_archives(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = open_files(pid)
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .filter(|n| n.contains(".hbb"))
        .collect();
    v.sort();
    v
}

/// Names of a process's threads.
fn thread_names(pid: i32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

#[track_caller]
fn snapshot(src: &Path, arc: &Path) {
    assert_ok(&hbb(&[
        "snapshot",
        "-q",
        "--block-size",
        "64K",
        src.to_str().unwrap(),
        arc.to_str().unwrap(),
    ]));
}

/// Sets a file's mtime to `secs` after the epoch.
fn set_mtime(p: &Path, secs: u64) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

fn mtime(m: &fs::Metadata) -> SystemTime {
    m.modified().unwrap()
}

fn require_root() {
    assert!(
        hbb::sys::is_root(),
        "the mount tests need root (mknod, chown, FUSE)"
    );
}

fn names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> Option<i32> {
    r.unwrap_err().raw_os_error()
}

/// The entries of a directory, or why not (opendir succeeds on a directory
/// whose archive cannot be opened: its first readdir fails).
fn list(dir: &Path) -> std::io::Result<Vec<fs::DirEntry>> {
    fs::read_dir(dir)?.collect()
}

/// `ls -1afi DIR`: inode numbers of the directory's entries as readdir
/// gives them, "." and ".." included.
fn listed_inos(dir: &Path) -> HashMap<String, u64> {
    let o = Command::new("ls").arg("-1afi").arg(dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (ino, name) = l.trim().split_once(' ')?;
            Some((name.to_string(), ino.parse().ok()?))
        })
        .collect()
}

/// The three source trees: every kind of entry, a variation of it, and
/// something else (many names, a big file, holes).
fn make_sources(t: &Tmp) -> Vec<PathBuf> {
    let a = t.path("src/alpha");
    make_every_kind(&a);
    let b = t.path("src/beta");
    make_every_kind(&b);
    write_pattern(&b.join("dir/sub/notes.txt"), 7_000, 99);
    fs::remove_file(b.join("empty")).unwrap();
    write_pattern(&b.join("only-in-beta.bin"), 1_500_000, 5);
    fs::set_permissions(b.join("emptydir"), fs::Permissions::from_mode(0o1777)).unwrap();
    let c = t.path("src/gamma");
    fs::create_dir_all(c.join("many")).unwrap();
    for i in 0..300 {
        fs::write(c.join(format!("many/name-{i:04}")), i.to_string()).unwrap();
    }
    write_pattern(&c.join("big.bin"), 2_000_000, 77);
    fs::hard_link(c.join("big.bin"), c.join("many/big-link")).unwrap();
    let f = fs::File::create(c.join("holes")).unwrap();
    f.set_len(4_000_000).unwrap();
    for off in [0u64, 1_000_000, 3_999_000] {
        f.write_all_at(&pattern(1000, off), off).unwrap();
    }
    drop(f);
    std::os::unix::fs::symlink("many/name-0001", c.join("link")).unwrap();
    vec![a, b, c]
}

/// Snapshots each source into `arcs/NAME.hbb` (NAME its directory's name),
/// the archives dated 1 000 000 s apart.
fn make_archives(t: &Tmp, srcs: &[PathBuf]) -> Vec<PathBuf> {
    fs::create_dir_all(t.path("arcs")).unwrap();
    srcs.iter()
        .enumerate()
        .map(|(k, src)| {
            let name = src.file_name().unwrap().to_str().unwrap();
            let arc = t.path(&format!("arcs/{name}.hbb"));
            snapshot(src, &arc);
            set_mtime(&arc, 1_700_000_000 + k as u64 * 1_000_000);
            arc
        })
        .collect()
}

/// The tree under `src` against the one under `mnt`, entry `arc`'s
/// directory, with compare_trees. That directory is made up (mode 0500,
/// the mounting user's, dated by the archive's file), so the source's root
/// is given the same mode and time first: its own are not shown. Then
/// link counts and hard-link identity, both ways.
#[track_caller]
fn compare_entry(src: &Path, mnt: &Path, arc: &Path) {
    fs::set_permissions(src, fs::Permissions::from_mode(0o500)).unwrap();
    let when = mtime(&fs::metadata(arc).unwrap());
    fs::File::open(src).unwrap().set_modified(when).unwrap();
    compare_trees(src, mnt);
    let mut to_mnt: HashMap<u64, u64> = HashMap::new();
    let mut to_src: HashMap<u64, u64> = HashMap::new();
    let mut stack: Vec<PathBuf> = fs::read_dir(src)
        .unwrap()
        .map(|e| PathBuf::from(e.unwrap().file_name()))
        .collect();
    while let Some(rel) = stack.pop() {
        let (ma, mb) = (
            fs::symlink_metadata(src.join(&rel)).unwrap(),
            fs::symlink_metadata(mnt.join(&rel)).unwrap(),
        );
        assert_eq!(ma.nlink(), mb.nlink(), "{}: nlink", rel.display());
        assert_eq!(*to_mnt.entry(ma.ino()).or_insert(mb.ino()), mb.ino());
        assert_eq!(*to_src.entry(mb.ino()).or_insert(ma.ino()), ma.ino());
        if ma.is_dir() {
            for e in fs::read_dir(src.join(&rel)).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
}

/// Every inode number under `dir` (itself included).
fn all_inos(dir: &Path, out: &mut HashSet<u64>) {
    let m = fs::symlink_metadata(dir).unwrap();
    out.insert(m.ino());
    if m.is_dir() {
        for e in fs::read_dir(dir).unwrap() {
            all_inos(&e.unwrap().path(), out);
        }
    }
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn three_archives_mount_as_three_directories() {
    require_root();
    let t = Tmp::new("many-tree");
    let srcs = make_sources(&t);
    let arcs = make_archives(&t, &srcs);
    let mp = t.path("mnt");
    let m = Mounted::new(&mp, &arcs, &[]);
    let line = mount_line(&mp).unwrap();
    assert!(line.contains(" - fuse archives "), "{line}");
    assert_eq!(names(&mp), ["alpha", "beta", "gamma"]);

    // Metadata first: reading the sources later may move their atimes.
    for ((src, name), arc) in srcs.iter().zip(["alpha", "beta", "gamma"]).zip(&arcs) {
        compare_entry(src, &mp.join(name), arc);
    }
    for (src, name) in srcs.iter().zip(["alpha", "beta", "gamma"]) {
        diff_r(src, &mp.join(name));
    }

    // The top directory: inode 1, r-x for all, the mounting user's, one
    // link per entry's "..", dated by the newest archive.
    let top = fs::metadata(&mp).unwrap();
    assert_eq!(top.ino(), 1);
    assert!(top.is_dir());
    assert_eq!(top.mode() & 0o7777, 0o555);
    assert_eq!((top.uid(), top.gid()), (0, 0));
    assert_eq!(top.nlink(), 2 + 3);
    let newest = fs::metadata(&arcs[2]).unwrap();
    assert_eq!(mtime(&top), mtime(&newest));
    assert!(hbb::sys::read_xattrs(&mp).unwrap().is_empty());
    // Each entry's directory: its own inode range, the archive's time.
    for (k, (name, arc)) in ["alpha", "beta", "gamma"].iter().zip(&arcs).enumerate() {
        let d = fs::metadata(mp.join(name)).unwrap();
        assert!(d.is_dir(), "{name}");
        assert_eq!(d.ino(), ((k as u64 + 1) << 32) | 1, "{name}");
        assert_eq!(d.mode() & 0o7777, 0o500, "{name}");
        assert_eq!(mtime(&d), mtime(&fs::metadata(arc).unwrap()), "{name}");
        assert_eq!(d.ctime(), d.mtime(), "{name}");
        // ".." of an entry's root is the top directory, "." itself; ".."
        // of a directory in it is the entry's directory.
        let listed = listed_inos(&mp.join(name));
        assert_eq!(listed["."], d.ino(), "{name}");
        assert_eq!(listed[".."], 1, "{name}");
        let sub = if k == 2 { "many" } else { "dir" };
        assert_eq!(listed_inos(&mp.join(name).join(sub))[".."], d.ino());
        assert_eq!(fs::metadata(mp.join(name).join("..")).unwrap().ino(), 1);
    }
    let listed = listed_inos(&mp);
    // (".." of the mount's root is the directory it is mounted on.)
    assert_eq!(listed["."], 1);
    assert_eq!(listed["beta"], 2 << 32 | 1);

    // Inode numbers: disjoint across entries, each in its entry's range.
    let mut seen: HashSet<u64> = HashSet::new();
    for (k, name) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let mut inos = HashSet::new();
        all_inos(&mp.join(name), &mut inos);
        assert!(inos.len() > 10, "{name}: {}", inos.len());
        assert!(inos.iter().all(|i| i >> 32 == k as u64 + 1), "{name}");
        assert!(seen.is_disjoint(&inos), "{name} shares inode numbers");
        seen.extend(inos);
    }

    // Holes answer SEEK_DATA/SEEK_HOLE inside an entry.
    let f = fs::File::open(mp.join("alpha/sparse")).unwrap();
    let seek = |off: i64, whence: i32| {
        use std::os::fd::AsRawFd;
        // SAFETY: lseek on an open descriptor.
        unsafe { libc::lseek(f.as_raw_fd(), off, whence) }
    };
    assert_eq!(seek(0, libc::SEEK_HOLE), 0);
    assert_eq!(seek(0, libc::SEEK_DATA), 3 << 20);
    drop(f);
    // Symlinks and xattrs (compare_trees saw them too).
    assert_eq!(
        fs::read_link(mp.join("gamma/link")).unwrap(),
        Path::new("many/name-0001")
    );
    assert_eq!(
        fs::read(mp.join("gamma/link")).unwrap(),
        fs::read(srcs[2].join("many/name-0001")).unwrap()
    );
    let x = hbb::sys::read_xattrs(&mp.join("beta/plain.txt")).unwrap();
    assert!(
        x.iter()
            .any(|x| x.name == b"user.comment" && x.value == b"important"),
        "{x:?}"
    );
    // statfs: read-only everywhere; in an entry, its archive's numbers.
    for p in [mp.clone(), mp.join("gamma"), mp.join("gamma/many")] {
        let st = rustix::fs::statvfs(&p).unwrap();
        assert!(st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
    }
    let gamma = rustix::fs::statvfs(mp.join("gamma/many")).unwrap();
    assert!(gamma.f_files > 300, "{}", gamma.f_files);
    assert!(gamma.f_blocks * gamma.f_frsize >= 2_000_000);
    let top = rustix::fs::statvfs(&mp).unwrap();
    assert!(top.f_files > gamma.f_files && top.f_blocks > gamma.f_blocks);
    // Nothing can be written, at the top or inside.
    let e = fs::OpenOptions::new()
        .write(true)
        .open(mp.join("alpha/plain.txt"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(errno(fs::create_dir(mp.join("new"))), Some(libc::EROFS));
    assert_eq!(
        errno(fs::create_dir(mp.join("beta/new"))),
        Some(libc::EROFS)
    );
    assert_eq!(errno(fs::metadata(mp.join("delta"))), Some(libc::ENOENT));
    assert_eq!(errno(fs::read(mp.join("alpha"))), Some(libc::EISDIR));

    // hbb umount: unmounted, the daemon gone.
    assert_eq!(mount_daemons("mount-archives", &mp).len(), 1);
    assert_ok(&hbb(&["umount", mp.to_str().unwrap()]));
    assert!(!is_mounted(&mp));
    wait_until("the daemon exits", 10, || {
        mount_daemons("mount-archives", &mp).is_empty()
    });
    drop(m);

    // The same list mounts with the same inode numbers.
    let _m = Mounted::new(&mp, &arcs, &[]);
    let mut again = HashSet::new();
    for name in ["alpha", "beta", "gamma"] {
        all_inos(&mp.join(name), &mut again);
    }
    assert_eq!(again, seen);
}

#[test]
fn interleaved_reads_of_two_archives_share_one_cache() {
    require_root();
    let t = Tmp::new("many-shared");
    let mut srcs = Vec::new();
    for (k, name) in ["one", "two"].iter().enumerate() {
        let src = t.path(&format!("src/{name}"));
        fs::create_dir_all(&src).unwrap();
        // The same names and sizes, other bytes: the same block numbers
        // hold different data in the two archives.
        write_pattern(&src.join("a"), 3_000_000, 100 + k as u64);
        write_pattern(&src.join("b"), 1_000_000, 200 + k as u64);
        srcs.push(src);
    }
    let arcs = make_archives(&t, &srcs);
    let mp = t.path("mnt");
    // Room for 16 blocks of 64 KiB, two workers for both archives.
    let _m = Mounted::new(&mp, &arcs, &["--cache", "1M", "--threads", "2"]);
    let files = ["one/a", "two/a", "one/b", "two/b"];
    let want: Arc<Vec<Vec<u8>>> = Arc::new(
        files
            .iter()
            .map(|f| fs::read(t.path("src").join(f)).unwrap())
            .collect(),
    );
    let hs: Vec<_> = (0..8u64)
        .map(|r| {
            let (want, mp) = (want.clone(), mp.clone());
            std::thread::spawn(move || {
                // O_DIRECT: every read reaches the filesystem.
                let fds: Vec<fs::File> = files
                    .iter()
                    .map(|f| {
                        fs::OpenOptions::new()
                            .read(true)
                            .custom_flags(libc::O_DIRECT)
                            .open(mp.join(f))
                            .unwrap()
                    })
                    .collect();
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (r + 1);
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for i in 0..150 {
                    // Alternate archives: the same offsets in both, one
                    // after the other.
                    let k = (i % 2) + 2 * (next() % 2) as usize;
                    let size = want[k].len() as u64;
                    let off = next() % size;
                    let len = 1 + (next() % 200_000) as usize;
                    for k in [k, k ^ 1] {
                        let mut buf = vec![0u8; len];
                        let mut got = 0;
                        while got < len {
                            let n = fds[k].read_at(&mut buf[got..], off + got as u64).unwrap();
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                        let hi = (off + len as u64).min(size) as usize;
                        assert!(
                            buf[..got] == want[k][off as usize..hi],
                            "reader {r} read {i}: wrong bytes in {} at {off} len {len}",
                            files[k]
                        );
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // Sequential reads too (read-ahead per file), both archives at once.
    let (ra, rb) = (
        fs::File::open(mp.join("one/a")).unwrap(),
        fs::File::open(mp.join("two/a")).unwrap(),
    );
    let mut got = [Vec::new(), Vec::new()];
    let mut chunk = vec![0u8; 128 * 1024];
    loop {
        let mut n = 0;
        for (f, out) in [&ra, &rb].into_iter().zip(got.iter_mut()) {
            let k = (&*f).read(&mut chunk).unwrap();
            out.extend_from_slice(&chunk[..k]);
            n += k;
        }
        if n == 0 {
            break;
        }
    }
    let [ba, bb] = got;
    assert!(ba == want[0] && bb == want[1]);
    // One pool of workers for both archives.
    let pid = mount_daemons("mount-archives", &mp)[0];
    let workers = thread_names(pid)
        .iter()
        .filter(|n| n.starts_with("hbb-mount-"))
        .count();
    assert_eq!(workers, 2, "{:?}", thread_names(pid));
    assert_eq!(open_archives(pid), ["one.hbb", "two.hbb"]);
}

#[test]
fn a_damaged_archive_is_eio_for_its_directory_only() {
    require_root();
    let t = Tmp::new("many-damaged");
    let srcs = make_sources(&t);
    let arcs = make_archives(&t, &srcs);
    // beta loses its end (its footer and index): it cannot be opened.
    let len = fs::metadata(&arcs[1]).unwrap().len();
    let f = fs::File::options().write(true).open(&arcs[1]).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let (mp, log) = (t.path("mnt"), t.path("log"));
    let (m, mut child) = Mounted::foreground(&mp, &arcs, &log);
    assert_eq!(names(&mp), ["alpha", "beta", "gamma"]);
    // Its directory is listed and stats (made up), but nothing in it.
    assert!(fs::metadata(mp.join("beta")).unwrap().is_dir());
    for _ in 0..3 {
        assert_eq!(errno(list(&mp.join("beta"))), Some(libc::EIO));
        assert_eq!(
            errno(fs::metadata(mp.join("beta/plain.txt"))),
            Some(libc::EIO)
        );
    }
    // The others work in full.
    compare_entry(&srcs[0], &mp.join("alpha"), &arcs[0]);
    diff_r(&srcs[0], &mp.join("alpha"));
    diff_r(&srcs[2], &mp.join("gamma"));
    cmp(&srcs[2].join("big.bin"), &mp.join("gamma/big.bin"));
    assert_eq!(errno(list(&mp.join("beta"))), Some(libc::EIO));
    // Ctrl-C: clean unmount; the log said why, once.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    assert!(!is_mounted(&mp));
    drop(m);
    let text = fs::read_to_string(&log).unwrap();
    let said: Vec<&str> = text.lines().filter(|l| l.contains("cannot open")).collect();
    assert_eq!(said.len(), 1, "{text}");
    assert!(
        said[0].contains("cannot open beta: ") && said[0].contains("beta.hbb"),
        "{text}"
    );
}

#[test]
fn archives_are_opened_only_when_looked_into() {
    require_root();
    let t = Tmp::new("many-lazy");
    let srcs = make_sources(&t);
    let three = make_archives(&t, &srcs);
    // 30 archives: ten copies of each.
    let mut arcs = Vec::new();
    for i in 0..10 {
        for (k, a) in three.iter().enumerate() {
            let p = t.path(&format!("arcs/s{i:02}-{k}.hbb"));
            fs::copy(a, &p).unwrap();
            arcs.push(p);
        }
    }
    let mp = t.path("mnt");
    let _m = Mounted::new(&mp, &arcs, &["--cache", "4M"]);
    let pid = mount_daemons("mount-archives", &mp)[0];
    // Nothing open after mounting, listing, `ls -l` of the top, a stat of
    // each entry's directory.
    assert!(open_archives(pid).is_empty(), "{:?}", open_archives(pid));
    let listed = names(&mp);
    assert_eq!(listed.len(), 30);
    assert_eq!(listed[0], "s00-0");
    let o = Command::new("ls").arg("-l").arg(&mp).output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 31);
    for n in &listed {
        fs::metadata(mp.join(n)).unwrap();
    }
    assert!(open_archives(pid).is_empty(), "{:?}", open_archives(pid));
    // Looking into one opens that one.
    assert!(names(&mp.join("s03-1")).contains(&"only-in-beta.bin".to_string()));
    assert_eq!(open_archives(pid), ["s03-1.hbb"]);
    let data = fs::read(mp.join("s07-2/big.bin")).unwrap();
    assert_eq!(data, fs::read(srcs[2].join("big.bin")).unwrap());
    assert_eq!(open_archives(pid), ["s03-1.hbb", "s07-2.hbb"]);
    // An archive removed after mounting, before being looked into: it was
    // not opened at mount time, so its directory now fails.
    fs::remove_file(&arcs[5 * 3]).unwrap(); // s05-0
    assert_eq!(errno(list(&mp.join("s05-0"))), Some(libc::EIO));
    assert_eq!(
        errno(fs::metadata(mp.join("s05-0/plain.txt"))),
        Some(libc::EIO)
    );
    // One already open is opened once: removing its file changes nothing.
    fs::remove_file(t.path("arcs/s03-1.hbb")).unwrap();
    diff_r(&srcs[1], &mp.join("s03-1"));
    // And the rest still work.
    diff_r(&srcs[0], &mp.join("s09-0"));
    assert_eq!(
        open_archives(pid),
        ["s03-1.hbb (deleted)", "s07-2.hbb", "s09-0.hbb"]
    );
}

#[test]
fn names_must_be_distinct() {
    require_root();
    let t = Tmp::new("many-names");
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let (a, b) = (t.path("a/x.hbb"), t.path("b/x.hbb"));
    fs::create_dir_all(a.parent().unwrap()).unwrap();
    fs::create_dir_all(b.parent().unwrap()).unwrap();
    snapshot(&src, &a);
    fs::copy(&a, &b).unwrap();
    let mp = t.path("mnt");
    fs::create_dir(&mp).unwrap();
    let o = hbb(&[
        "mount-archives",
        mp.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert_fails(&o, 1, "two archives are named \"x\"");
    assert!(!is_mounted(&mp));
    // A missing archive is refused at once (its time is its file's).
    let o = hbb(&[
        "mount-archives",
        mp.to_str().unwrap(),
        t.path("nope.hbb").to_str().unwrap(),
    ]);
    assert_fails(&o, 1, "nope.hbb");
    assert!(!is_mounted(&mp));
}
