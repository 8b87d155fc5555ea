//! Property: any tree round-trips. Random trees (names with any bytes but
//! '/' and NUL, sizes around block boundaries, sparse files, symlinks, hard
//! links, empty dirs) through snapshot and restore at random block sizes
//! and thread counts, compared entry by entry and with `diff -r`.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;

use common::*;

#[derive(Debug, Clone)]
enum Node {
    File {
        size: usize,
        seed: u64,
        sparse: bool,
    },
    Dir(Vec<(Vec<u8>, Node)>),
    Symlink(Vec<u8>),
    /// A hard link to the n-th regular file created so far (if any).
    Link(usize),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..20,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        4 => (prop_oneof![Just(0usize), 1..5000usize, 4090..4100usize, 8000..70_000usize], any::<u64>(), any::<bool>())
            .prop_map(|(size, seed, sparse)| Node::File { size, seed, sparse }),
        1 => name().prop_map(Node::Symlink),
        1 => (0..8usize).prop_map(Node::Link),
    ];
    leaf.prop_recursive(3, 40, 8, |inner| {
        proptest::collection::vec((name(), inner), 0..8).prop_map(|mut v| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.dedup_by(|a, b| a.0 == b.0);
            Node::Dir(v)
        })
    })
}

fn build(at: &Path, n: &Node, files: &mut Vec<PathBuf>) {
    match n {
        Node::File { size, seed, sparse } => {
            if *sparse && *size > 0 {
                let f = fs::File::create(at).unwrap();
                f.set_len((*size as u64) * 50).unwrap();
                use std::os::unix::fs::FileExt;
                f.write_all_at(&pattern(*size, *seed), (*size as u64) * 20)
                    .unwrap();
            } else {
                fs::write(at, pattern(*size, *seed)).unwrap();
            }
            files.push(at.to_path_buf());
        }
        Node::Dir(children) => {
            fs::create_dir(at).unwrap();
            for (name, c) in children {
                build(&at.join(std::ffi::OsStr::from_bytes(name)), c, files);
            }
        }
        Node::Symlink(target) => {
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), at).unwrap()
        }
        Node::Link(k) => match files.get(*k) {
            Some(f) => fs::hard_link(f, at).unwrap(),
            None => fs::write(at, b"no file to link to yet").unwrap(),
        },
    }
}

static CASE: AtomicU32 = AtomicU32::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
    #[test]
    fn any_tree_round_trips(
        root in proptest::collection::vec((name(), node()), 0..10),
        block_kib in prop_oneof![Just(4u64), Just(16), Just(64)],
        threads in 1usize..4,
    ) {
        let t = Tmp::new(&format!("prop-{}", CASE.fetch_add(1, Ordering::Relaxed)));
        let src = t.path("src");
        let mut root = root;
        root.sort_by(|a, b| a.0.cmp(&b.0));
        root.dedup_by(|a, b| a.0 == b.0);
        build(&src, &Node::Dir(root), &mut Vec::new());
        let arc = t.path("a.hbb");
        let o = hbb::snapshot::Options {
            source: src.clone(),
            archive: arc.clone(),
            mode: hbb::snapshot::ModeChoice::File,
            threads,
            block_size: block_kib << 10,
            level: 1,
            volume_threshold: 100_000,
            excludes: Vec::new(),
            one_file_system: false,
            allow_mounted_rw: false,
            quiet: true,
            repo: None,
        };
        let out = hbb::snapshot::snapshot(&o).unwrap();
        prop_assert!(out.meta.warnings.is_empty(), "{:?}", out.meta.warnings);
        let dst = t.path("dst");
        let r = hbb::restore::restore(&hbb::restore::Options {
            archive: arc.clone(),
            dest: dst.clone(),
            paths: Vec::new(),
            threads,
            numeric_owner: false,
            overwrite: false,
            quiet: true,
        }).unwrap();
        prop_assert!(r.problems.is_empty(), "{:?}", r.problems);
        compare_trees(&src, &dst);
        diff_r(&src, &dst);
        let v = hbb::verify::verify(&arc, Some(&src), threads).unwrap();
        prop_assert!(v.ok, "{:?} {:?}", v.bad_blocks, v.differences);
    }
}
