//! Archives of every released format version, frozen in tests/fixtures,
//! must still read: an archive must open in ten years. The fixtures were
//! written once by `cargo test --test compat write_fixtures -- --ignored`
//! (do not regenerate them for a released version: add new ones).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use hbb::archive::{VERSION_MAJOR, VERSION_MINOR};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tree frozen in v1.0-tree.hbb, rebuilt the same way.
fn fixture_tree(root: &Path) {
    fs::create_dir_all(root.join("docs/deep")).unwrap();
    fs::write(root.join("README"), b"hbb format 1.0 fixture\n").unwrap();
    fs::write(root.join("docs/a.txt"), pattern(10_000, 1)).unwrap();
    fs::write(root.join("docs/same.txt"), pattern(10_000, 1)).unwrap();
    fs::write(root.join("docs/deep/big.bin"), pattern(70_000, 2)).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    let f = fs::File::create(root.join("sparse")).unwrap();
    f.set_len(200_000).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"data in a hole", 100_000).unwrap();
    std::os::unix::fs::symlink("docs/a.txt", root.join("link")).unwrap();
    fs::hard_link(root.join("README"), root.join("docs/README.hard")).unwrap();
    fs::set_permissions(root.join("docs/deep"), fs::Permissions::from_mode(0o700)).unwrap();
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_700_000_000,
            tv_nsec: 5,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 123_456_789,
        },
    };
    for p in [
        "README",
        "docs/a.txt",
        "docs/same.txt",
        "docs/deep/big.bin",
        "empty",
        "sparse",
        "link",
        "docs/deep",
        "docs",
        "",
    ] {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            root.join(p),
            &ts,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

fn fixture_volume(path: &Path) {
    let f = fs::File::create(path).unwrap();
    f.set_len(1 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pattern(50_000, 3), 300_000).unwrap();
}

#[test]
#[ignore = "writes the frozen fixtures; run once per new format version"]
fn write_fixtures() {
    let t = Tmp::new("write-fixtures");
    fixture_tree(&t.path("tree"));
    fixture_volume(&t.path("volume.img"));
    let env = [("SOURCE_DATE_EPOCH", "1764000000")];
    // Named after the version this hbb writes.
    let v = format!("v{VERSION_MAJOR}.{VERSION_MINOR}");
    let tree = fixtures().join(format!("{v}-tree.hbb"));
    let vol = fixtures().join(format!("{v}-volume.hbb"));
    assert_ok(&hbb_env(
        &[
            "snapshot",
            "-q",
            "--block-size",
            "16K",
            t.path("tree").to_str().unwrap(),
            tree.to_str().unwrap(),
        ],
        &env,
    ));
    assert_ok(&hbb_env(
        &[
            "snapshot",
            "-q",
            "--block-size",
            "64K",
            t.path("volume.img").to_str().unwrap(),
            vol.to_str().unwrap(),
        ],
        &env,
    ));
}

#[test]
fn format_1_0_tree_still_reads() {
    tree_still_reads("1.0");
}

/// 1.2 adds frame checks: the fixture's blocks are read through them.
#[test]
fn format_1_2_tree_still_reads() {
    tree_still_reads("1.2");
}

fn tree_still_reads(version: &str) {
    let t = Tmp::new(&format!("compat-tree-{version}"));
    let expected = t.path("expected");
    fixture_tree(&expected);
    let arc = fixtures().join(format!("v{version}-tree.hbb"));
    let a = arc.to_str().unwrap();
    let info = info_json(&arc);
    assert_eq!(info["format_version"], version);
    assert_eq!(info["started"], "2025-11-24T16:00:00Z");
    assert_ok(&hbb(&["verify", "-q", a]));
    let dst = t.path("dst");
    assert_ok(&hbb(&["restore", "-q", a, dst.to_str().unwrap()]));
    // Metadata first: diff reads the files, which may move their atimes.
    compare_trees(&expected, &dst);
    diff_r(&expected, &dst);
    let ls = hbb(&["ls", "-R", a]);
    assert_eq!(
        String::from_utf8_lossy(&ls.stdout),
        "README\ndocs\ndocs/README.hard\ndocs/a.txt\ndocs/deep\ndocs/deep/big.bin\ndocs/same.txt\nempty\nlink\nsparse\n"
    );
}

#[test]
fn format_1_0_volume_still_reads() {
    volume_still_reads("1.0");
}

#[test]
fn format_1_2_volume_still_reads() {
    volume_still_reads("1.2");
}

fn volume_still_reads(version: &str) {
    let t = Tmp::new(&format!("compat-volume-{version}"));
    let expected = t.path("volume.img");
    fixture_volume(&expected);
    let arc = fixtures().join(format!("v{version}-volume.hbb"));
    assert_ok(&hbb(&["verify", "-q", arc.to_str().unwrap()]));
    let out = t.path("out.img");
    assert_ok(&hbb(&[
        "restore",
        "-q",
        arc.to_str().unwrap(),
        out.to_str().unwrap(),
    ]));
    cmp(&expected, &out);
}

/// Each version's reads catch a damaged frame: 1.2 by the frame's check,
/// before decoding it; 1.0 (no frame checks) by decoding it and checking
/// the content hash.
#[test]
fn a_damaged_frame_is_caught_with_or_without_frame_checks() {
    let t = Tmp::new("compat-damaged");
    for (version, why) in [
        (
            "1.0",
            "block 1 (archive offset 96): frame does not decompress",
        ),
        ("1.2", "block 1 (archive offset 96): frame check mismatch"),
    ] {
        let arc = t.path(&format!("{version}.hbb"));
        let mut bytes = fs::read(fixtures().join(format!("v{version}-tree.hbb"))).unwrap();
        // Inside the second frame (the first is the 32 bytes at 64).
        bytes[64 + 40] ^= 0x10;
        fs::write(&arc, &bytes).unwrap();
        let dst = t.path(&format!("dst-{version}"));
        let o = hbb(&[
            "restore",
            "-q",
            arc.to_str().unwrap(),
            dst.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert!(stderr(&o).contains(why), "{version}: {}", stderr(&o));
        let v = hbb(&["verify", arc.to_str().unwrap()]);
        assert_eq!(v.status.code(), Some(4), "{}", stderr(&v));
        assert!(stderr(&v).contains(why), "{version}: {}", stderr(&v));
    }
}
