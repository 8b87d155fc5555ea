//! The core, end to end, through the real binary: snapshot (file, volume,
//! auto), restore, verify, info/ls/cat. Trees are real, compared with
//! `diff -r`, `cmp` and a metadata walk; volumes are real ext4 images.
//!
//! Needs root (device nodes, owners, loop devices) and e2fsprogs, diffutils,
//! util-linux (installed by .ci/run).

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

#[test]
fn roundtrip_every_kind_of_entry() {
    let t = Tmp::new("every-kind");
    let src = t.path("src");
    make_every_kind(&src);
    let arc = t.path("a.hbb");
    let out = hbb(&["snapshot", "--block-size", "64K", s(&src), s(&arc)]);
    assert_ok(&out);
    assert!(stderr(&out).contains("file mode"), "{}", stderr(&out));

    let dst = t.path("dst");
    assert_ok(&hbb(&["restore", s(&arc), s(&dst)]));
    compare_trees(&src, &dst);
    diff_r(&src, &dst);

    // verify: frames and a comparison with the source.
    let v = hbb(&["verify", "--source", s(&src), s(&arc)]);
    assert_ok(&v);
    assert!(stderr(&v).contains("OK"), "{}", stderr(&v));
}

#[test]
fn restore_with_one_thread_and_many_blocks() {
    let t = Tmp::new("many-blocks");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        write_pattern(&src.join(format!("f{i:02}")), 1000 + i * 37_111, i as u64);
    }
    let arc = t.path("a.hbb");
    assert_ok(&hbb(&[
        "snapshot",
        "--block-size",
        "16K",
        "--threads",
        "3",
        s(&src),
        s(&arc),
    ]));
    for threads in ["1", "4"] {
        let dst = t.path(&format!("dst{threads}"));
        assert_ok(&hbb(&["restore", "--threads", threads, s(&arc), s(&dst)]));
        diff_r(&src, &dst);
    }
}

#[test]
fn identical_files_and_blocks_are_stored_once() {
    let t = Tmp::new("dedup");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    write_pattern(&src.join("big1"), 3 << 20, 7);
    fs::copy(src.join("big1"), src.join("big2")).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("small{i}")), b"the same small file\n").unwrap();
    }
    let arc = t.path("a.hbb");
    assert_ok(&hbb(&["snapshot", "--block-size", "1M", s(&src), s(&arc)]));
    let info = info_json(&arc);
    let st = &info["stats"];
    assert!(st["dup_blocks"].as_u64().unwrap() >= 3, "{info}");
    assert_eq!(st["dup_files"].as_u64().unwrap(), 19, "{info}");
    // Two copies of 3 MiB of incompressible data: about 3 MiB stored.
    assert!(
        st["bytes_stored"].as_u64().unwrap() < (3 << 20) + 100_000,
        "{info}"
    );
    let dst = t.path("dst");
    assert_ok(&hbb(&["restore", s(&arc), s(&dst)]));
    diff_r(&src, &dst);
}

#[test]
fn volume_roundtrip_of_a_real_ext4_image() {
    let t = Tmp::new("volume");
    let tree = t.path("tree");
    make_every_kind(&tree);
    let img = t.path("disk.img");
    mkfs_ext4(&img, 64, &tree);
    let arc = t.path("v.hbb");
    let out = hbb(&["snapshot", "--block-size", "256K", s(&img), s(&arc)]);
    assert_ok(&out);
    assert!(stderr(&out).contains("image file"), "{}", stderr(&out));
    let info = info_json(&arc);
    assert_eq!(info["mode"], "volume");
    assert!(
        info["stats"]["zero_blocks"].as_u64().unwrap() > 10,
        "{info}"
    );

    let restored = t.path("restored.img");
    assert_ok(&hbb(&["restore", s(&arc), s(&restored)]));
    cmp(&img, &restored);
    // Zero blocks come back as holes.
    let used = fs::metadata(&restored).unwrap().blocks() * 512;
    assert!(
        used < 64 << 20,
        "restored image is not sparse: {used} bytes used"
    );

    assert_ok(&hbb(&["verify", "--source", s(&img), s(&arc)]));
    // The volume can be restored into a directory, named after the source.
    let dir = t.path("into");
    fs::create_dir(&dir).unwrap();
    assert_ok(&hbb(&["restore", s(&arc), s(&dir)]));
    cmp(&img, &dir.join("disk.img"));
    // And onto a block device.
    let blank = t.path("blank.img");
    fs::File::create(&blank).unwrap().set_len(64 << 20).unwrap();
    let lo = Loop::attach(&blank);
    assert_ok(&hbb(&["restore", s(&arc), &lo.dev]));
    drop(lo);
    cmp(&img, &blank);
}

#[test]
fn sparse_image_round_trips_holes_of_any_alignment() {
    use std::os::unix::fs::FileExt;
    let t = Tmp::new("sparse-volume");
    let img = t.path("sparse.img");
    let size: u64 = 8 << 20;
    let f = fs::File::create(&img).unwrap();
    f.set_len(size).unwrap();
    // Data at the start, across a block boundary, in the middle of a
    // block, and at the very end; holes of every alignment between.
    for (off, len, seed) in [
        (0u64, 5000usize, 1u64),
        ((1 << 20) - 700, 9000, 2),
        (3 << 20 | 12345, 100, 3),
        (size - 4096, 4096, 4),
    ] {
        f.write_all_at(&noise(len, seed), off).unwrap();
    }
    drop(f);
    let used = fs::metadata(&img).unwrap().blocks() * 512;
    assert!(
        used < 1 << 20,
        "the test image is not sparse here ({used} bytes used)"
    );
    let arc = t.path("s.hbb");
    assert_ok(&hbb(&[
        "snapshot",
        "--mode",
        "volume",
        "--block-size",
        "64K",
        s(&img),
        s(&arc),
    ]));
    let info = info_json(&arc);
    assert_eq!(info["mode"], "volume");
    // 128 blocks of 64 KiB, 5 of them holding data.
    assert_eq!(info["stats"]["zero_blocks"].as_u64(), Some(123), "{info}");
    assert_ok(&hbb(&["verify", "--source", s(&img), s(&arc)]));
    let restored = t.path("restored.img");
    assert_ok(&hbb(&["restore", s(&arc), s(&restored)]));
    cmp(&img, &restored);
    // Onto a device full of other bytes: the holes are written as zeros.
    let dirty = t.path("dirty.img");
    write_noise(&dirty, size as usize, 9);
    let lo = Loop::attach(&dirty);
    assert_ok(&hbb(&["restore", s(&arc), &lo.dev]));
    drop(lo);
    cmp(&img, &dirty);
}

#[test]
fn auto_mode_follows_the_threshold_and_the_mount_state() {
    let t = Tmp::new("auto");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..30 {
        fs::write(src.join(format!("f{i}")), format!("{i}\n")).unwrap();
    }
    // A plain directory below the threshold: file mode.
    let a1 = t.path("a1.hbb");
    let out = hbb(&["snapshot", "--volume-threshold", "100", s(&src), s(&a1)]);
    assert_ok(&out);
    let i1 = info_json(&a1);
    assert_eq!(i1["mode"], "file");
    assert!(
        i1["mode_reason"]
            .as_str()
            .unwrap()
            .contains("not the root of a filesystem"),
        "{i1}"
    );

    // Above it, but a plain directory: still file mode, and it says why.
    let a2 = t.path("a2.hbb");
    assert_ok(&hbb(&[
        "snapshot",
        "--volume-threshold",
        "10",
        s(&src),
        s(&a2),
    ]));
    let i2 = info_json(&a2);
    assert_eq!(i2["mode"], "file");
    assert!(
        i2["mode_reason"]
            .as_str()
            .unwrap()
            .contains("not the root of a filesystem"),
        "{i2}"
    );

    // Above it, the root of an ext4 filesystem mounted read-only: volume.
    let img = t.path("fs.img");
    mkfs_ext4(&img, 32, &src);
    let mnt = t.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = LoopMount::new(&img, &mnt, true);
    let a3 = t.path("a3.hbb");
    let out = hbb(&["snapshot", "--volume-threshold", "10", s(&mnt), s(&a3)]);
    assert_ok(&out);
    let i3 = info_json(&a3);
    assert_eq!(i3["mode"], "volume", "{i3}");
    assert!(
        i3["mode_reason"].as_str().unwrap().contains("read-only"),
        "{i3}"
    );
    // The same filesystem below the threshold (30 files and lost+found):
    // file mode, saying how many entries it counted.
    let a3f = t.path("a3f.hbb");
    assert_ok(&hbb(&[
        "snapshot",
        "--volume-threshold",
        "100",
        s(&mnt),
        s(&a3f),
    ]));
    let i3f = info_json(&a3f);
    assert_eq!(i3f["mode"], "file", "{i3f}");
    assert!(
        i3f["mode_reason"]
            .as_str()
            .unwrap()
            .contains("31 entries, not more than the threshold 100"),
        "{i3f}"
    );
    // A mounted ext4 changes a few bytes of its device in memory, so the
    // archive is compared with the device as it reads while mounted.
    let dev = run(
        "findmnt",
        &[
            "-n".as_ref(),
            "-o".as_ref(),
            "SOURCE".as_ref(),
            mnt.as_os_str(),
        ],
    );
    let dev = String::from_utf8_lossy(&dev.stdout).trim().to_string();
    let as_read = t.path("as-read.img");
    fs::write(&as_read, fs::read(&dev).unwrap()).unwrap();
    drop(m);
    let r3 = t.path("r3.img");
    assert_ok(&hbb(&["restore", s(&a3), s(&r3)]));
    cmp(&as_read, &r3);
    let m = LoopMount::new(&r3, &mnt, true);
    for i in 0..30 {
        cmp(&src.join(format!("f{i}")), &mnt.join(format!("f{i}")));
    }
    drop(m);

    // Mounted read-write: never imaged without being told.
    let m = LoopMount::new(&img, &mnt, false);
    let a4 = t.path("a4.hbb");
    assert_ok(&hbb(&[
        "snapshot",
        "--volume-threshold",
        "10",
        s(&mnt),
        s(&a4),
    ]));
    let i4 = info_json(&a4);
    assert_eq!(i4["mode"], "file", "{i4}");
    assert!(
        i4["mode_reason"].as_str().unwrap().contains("read-write"),
        "{i4}"
    );
    let a5 = t.path("a5.hbb");
    let out = hbb(&["snapshot", "--mode", "volume", s(&mnt), s(&a5)]);
    assert_fails(&out, 1, "--allow-mounted-rw");
    assert!(!a5.exists());
    // A read-only view (a bind mount remounted ro, as a sandbox makes) of a
    // filesystem writable elsewhere is not a read-only filesystem.
    let view = t.path("view");
    fs::create_dir(&view).unwrap();
    run(
        "mount",
        &["--bind".as_ref(), mnt.as_os_str(), view.as_os_str()],
    );
    let v = Unmount(view.clone());
    run(
        "mount",
        &["-o".as_ref(), "remount,bind,ro".as_ref(), view.as_os_str()],
    );
    let a6 = t.path("a6.hbb");
    assert_ok(&hbb(&[
        "snapshot",
        "--volume-threshold",
        "10",
        s(&view),
        s(&a6),
    ]));
    let i6 = info_json(&a6);
    assert_eq!(i6["mode"], "file", "{i6}");
    assert!(
        i6["mode_reason"].as_str().unwrap().contains("read-write"),
        "{i6}"
    );
    drop(v);
    drop(m);
}

#[test]
fn same_input_same_archive() {
    let t = Tmp::new("determinism");
    let src = t.path("src");
    make_every_kind(&src);
    // Files and directories are read without touching their atimes, but
    // reading a symlink (readlink) may update its atime, which the archive
    // records: the first snapshot of this tree may differ, later ones not.
    assert_ok(&hbb(&["snapshot", s(&src), s(&t.path("warm.hbb"))]));
    let mut archives = Vec::new();
    for k in 0..2 {
        let arc = t.path(&format!("a{k}.hbb"));
        let out = hbb_env(
            &[
                "snapshot",
                "--block-size",
                "32K",
                "--threads",
                "2",
                s(&src),
                s(&arc),
            ],
            &[("SOURCE_DATE_EPOCH", "1700000000")],
        );
        assert_ok(&out);
        archives.push(arc);
    }
    cmp(&archives[0], &archives[1]);
    let info = info_json(&archives[0]);
    assert_eq!(info["started"], "2023-11-14T22:13:20Z");
}

#[test]
fn a_flipped_byte_costs_one_block() {
    let t = Tmp::new("corrupt");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    // Each file of 64 KiB or more starts its own block at this block size.
    for i in 0..6 {
        write_pattern(&src.join(format!("file{i}")), 64 << 10, i);
    }
    let arc = t.path("a.hbb");
    assert_ok(&hbb(&["snapshot", "--block-size", "64K", s(&src), s(&arc)]));
    // The first frame starts right after the 64-byte header: block 0, file0.
    flip_byte(&arc, 64 + 200);

    let v = hbb(&["verify", "--json", s(&arc)]);
    assert_eq!(v.status.code(), Some(4), "{}", stderr(&v));
    let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let bad = j["bad_blocks"].as_array().unwrap();
    assert_eq!(bad.len(), 1, "{j}");
    assert_eq!(bad[0]["block"], 0);
    assert_eq!(bad[0]["offset"], 64);
    assert_eq!(bad[0]["files"][0], "file0");

    let dst = t.path("dst");
    let r = hbb(&["restore", s(&arc), s(&dst)]);
    assert_fails(&r, 3, "file0");
    assert!(stderr(&r).contains("block 0"), "{}", stderr(&r));
    assert!(!dst.join("file0").exists());
    for i in 1..6 {
        cmp(&src.join(format!("file{i}")), &dst.join(format!("file{i}")));
    }
    // cat of the damaged file fails naming the block; others still read.
    let c = hbb(&["cat", s(&arc), "file0"]);
    assert_fails(&c, 1, "block 0");
    let c = hbb(&["cat", s(&arc), "file3"]);
    assert_ok(&c);
    assert_eq!(c.stdout, fs::read(src.join("file3")).unwrap());
}

#[test]
fn truncated_and_foreign_files_are_refused_clearly() {
    let t = Tmp::new("truncated");
    let src = t.path("src");
    make_every_kind(&src);
    let arc = t.path("a.hbb");
    assert_ok(&hbb(&["snapshot", s(&src), s(&arc)]));
    let bytes = fs::read(&arc).unwrap();
    let cut = t.path("cut.hbb");
    fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let out = hbb(&["info", s(&cut)]);
    assert_fails(&out, 1, "incomplete");
    let foreign = t.path("foreign.hbb");
    fs::write(&foreign, vec![7u8; 4096]).unwrap();
    let out = hbb(&["ls", s(&foreign)]);
    assert_fails(&out, 1, "not an hbb archive");
}

#[test]
fn restore_chosen_paths_only() {
    let t = Tmp::new("paths");
    let src = t.path("src");
    make_every_kind(&src);
    let arc = t.path("a.hbb");
    assert_ok(&hbb(&["snapshot", s(&src), s(&arc)]));
    let dst = t.path("dst");
    assert_ok(&hbb(&["restore", s(&arc), s(&dst), "dir/sub", "plain.txt"]));
    diff_r(&src.join("dir/sub"), &dst.join("dir/sub"));
    cmp(&src.join("plain.txt"), &dst.join("plain.txt"));
    assert!(!dst.join("sparse").exists());
    assert!(!dst.join("dir/link-to-plain").exists());
    let out = hbb(&["restore", s(&arc), s(&t.path("x")), "no/such"]);
    assert_fails(&out, 1, "no/such not found");
}

#[test]
fn restore_refuses_to_overwrite_unless_told() {
    let t = Tmp::new("overwrite");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"archive\n").unwrap();
    let arc = t.path("a.hbb");
    assert_ok(&hbb(&["snapshot", s(&src), s(&arc)]));
    let dst = t.path("dst");
    fs::create_dir_all(&dst).unwrap();
    fs::write(dst.join("a"), b"local\n").unwrap();
    let out = hbb(&["restore", s(&arc), s(&dst)]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(fs::read(dst.join("a")).unwrap(), b"local\n");
    assert_ok(&hbb(&["restore", "--overwrite", s(&arc), s(&dst)]));
    assert_eq!(fs::read(dst.join("a")).unwrap(), b"archive\n");
    // A symlink planted in DEST is replaced, never followed.
    let outside = t.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::remove_file(dst.join("a")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), dst.join("a")).unwrap();
    assert_ok(&hbb(&["restore", "--overwrite", s(&arc), s(&dst)]));
    assert!(!outside.join("victim").exists());
    assert_eq!(fs::read(dst.join("a")).unwrap(), b"archive\n");
}

#[test]
fn excludes_and_one_file_system() {
    let t = Tmp::new("exclude");
    let src = t.path("src");
    fs::create_dir_all(src.join("keep/cache")).unwrap();
    fs::create_dir_all(src.join("skip/me")).unwrap();
    fs::write(src.join("keep/a.txt"), b"a").unwrap();
    fs::write(src.join("keep/b.o"), b"b").unwrap();
    fs::write(src.join("keep/cache/c"), b"c").unwrap();
    fs::write(src.join("skip/me/d"), b"d").unwrap();
    // A mount inside the tree, for --one-file-system.
    let img = t.path("inner.img");
    let inner = t.path("innertree");
    fs::create_dir_all(&inner).unwrap();
    fs::write(inner.join("inside"), b"other fs").unwrap();
    mkfs_ext4(&img, 8, &inner);
    fs::create_dir_all(src.join("mnt")).unwrap();
    let m = LoopMount::new(&img, &src.join("mnt"), true);

    let arc = t.path("a.hbb");
    assert_ok(&hbb(&[
        "snapshot",
        "--exclude",
        "*.o",
        "--exclude",
        "skip/me",
        "--exclude",
        "keep/cache",
        "-x",
        s(&src),
        s(&arc),
    ]));
    let ls = hbb(&["ls", "-R", s(&arc)]);
    assert_ok(&ls);
    let listing = String::from_utf8(ls.stdout).unwrap();
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(names, ["keep", "keep/a.txt", "mnt", "skip"], "{listing}");
    // verify --source honours the excludes and --one-file-system.
    let v = hbb(&["verify", "--source", s(&src), s(&arc)]);
    drop(m);
    assert_ok(&v);
}

#[test]
fn archive_to_stdout_and_json_summary() {
    let t = Tmp::new("stdout");
    let src = t.path("src");
    make_every_kind(&src);
    let arc = t.path("piped.hbb");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} snapshot --json {} - | cat > {}",
            bin(),
            s(&src),
            s(&arc)
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The JSON summary went to stderr, since stdout carried the archive.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"complete\": true"), "{err}");
    let dst = t.path("dst");
    assert_ok(&hbb(&["restore", s(&arc), s(&dst)]));
    diff_r(&src, &dst);
    let j = hbb(&["snapshot", "--json", s(&src), s(&t.path("j.hbb"))]);
    assert_ok(&j);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["mode"], "file");
    assert!(v["stats"]["files"].as_u64().unwrap() >= 5);
}

#[test]
fn ls_and_cat() {
    let t = Tmp::new("lscat");
    let src = t.path("src");
    make_every_kind(&src);
    let arc = t.path("a.hbb");
    assert_ok(&hbb(&["snapshot", s(&src), s(&arc)]));
    let out = hbb(&["ls", "-l", s(&arc), "dir"]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("link-to-plain -> ../plain.txt"), "{text}");
    assert!(
        text.contains("-rw-r--r--   2 root     root               14 "),
        "{text}"
    );
    let out = hbb(&["ls", "-l", s(&arc)]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("drwxr-x---"), "{text}");
    assert!(text.contains("-rwsr-xr-x"), "{text}");
    assert!(text.contains(" 1234     5678 "), "{text}");
    let out = hbb(&["cat", s(&arc), "sparse"]);
    assert_ok(&out);
    assert_eq!(out.stdout, fs::read(src.join("sparse")).unwrap());
    let out = hbb(&["cat", s(&arc), "dir"]);
    assert_fails(&out, 1, "not a regular file");
}

#[test]
fn unreadable_files_make_an_incomplete_snapshot() {
    let t = Tmp::new("unreadable");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("ok"), b"readable\n").unwrap();
    fs::write(src.join("secret"), b"no\n").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(t.root(), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o777)).unwrap();
    let arc = t.path("a.hbb");
    // As an unprivileged user, the 000 file cannot be read.
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin(),
            "snapshot",
            s(&src),
            s(&arc),
        ])
        .output()
        .unwrap();
    assert_fails(&out, 3, "secret");
    let info = info_json(&arc);
    assert_eq!(info["complete"], false);
    let ls = hbb(&["ls", s(&arc)]);
    assert_eq!(String::from_utf8_lossy(&ls.stdout), "ok\n");
}

#[test]
fn verify_reports_changes_in_the_source() {
    let t = Tmp::new("changed");
    let src = t.path("src");
    make_every_kind(&src);
    let arc = t.path("a.hbb");
    assert_ok(&hbb(&["snapshot", s(&src), s(&arc)]));
    let mut bytes = fs::read(src.join("plain.txt")).unwrap();
    bytes[0] ^= 1;
    fs::write(src.join("plain.txt"), &bytes).unwrap();
    fs::write(src.join("new-file"), b"new").unwrap();
    // Data written into one of the archive's holes.
    let sp = fs::OpenOptions::new()
        .write(true)
        .open(src.join("sparse"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sp, b"x", 5 << 20).unwrap();
    let v = hbb(&["verify", "--source", s(&src), s(&arc)]);
    assert_eq!(v.status.code(), Some(4));
    let e = stderr(&v);
    assert!(e.contains("sparse: content differs"), "{e}");
    assert!(e.contains("plain.txt: content differs"), "{e}");
    assert!(e.contains("new-file: only in the source"), "{e}");
}

#[test]
fn interrupted_snapshot_leaves_nothing_that_opens() {
    let t = Tmp::new("interrupted");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    write_pattern(&src.join("big"), 64 << 20, 3);
    let arc = t.path("a.hbb");
    let mut child = std::process::Command::new(bin())
        .args(["snapshot", "--level", "19", s(&src), s(&arc)])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!arc.exists(), "a killed snapshot left {}", arc.display());
    // The partial file is named as such, and does not open.
    for e in fs::read_dir(t.root()).unwrap().flatten() {
        let name = e.file_name();
        if name.as_bytes().starts_with(b".a.hbb.hbb-partial") {
            let out = hbb(&["info", s(&e.path())]);
            assert_eq!(out.status.code(), Some(1));
        }
    }
}

#[test]
fn interrupted_by_sigint_or_sigterm_cleans_up() {
    let t = Tmp::new("sigint");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    write_pattern(&src.join("big"), 64 << 20, 5);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let arc = t.path("a.hbb");
        let mut child = std::process::Command::new(bin())
            .args(["snapshot", "--level", "19", s(&src), s(&arc)])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        unsafe { libc::kill(child.id() as i32, sig) };
        let st = child.wait().unwrap();
        assert_eq!(st.code(), Some(128 + sig));
        let left: Vec<_> = fs::read_dir(t.root())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("src")],
            "left behind: {left:?}"
        );
    }
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
