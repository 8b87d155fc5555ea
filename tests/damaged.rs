//! Damaged archives (accident): truncated anywhere, flipped bits anywhere,
//! zeroed ranges. Opening never panics and never hangs; where the index is
//! intact, damage costs exactly the blocks it hits.

mod common;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use common::*;
use hbb::archive::*;

fn small_archive(t: &Tmp) -> (std::path::PathBuf, Vec<u8>) {
    let src = t.path("src");
    make_every_kind(&src);
    for i in 0..4 {
        write_pattern(&src.join(format!("block{i}")), 20_000, 100 + i);
    }
    let arc = t.path("a.hbb");
    assert_ok(&hbb(&[
        "snapshot",
        "-q",
        "--block-size",
        "16K",
        src.to_str().unwrap(),
        arc.to_str().unwrap(),
    ]));
    let bytes = fs::read(&arc).unwrap();
    (arc, bytes)
}

/// Opens, lists and reads every block of an archive held in memory; returns
/// whether it opened. Panics are caught and reported as failures.
fn exercise(bytes: Vec<u8>, what: &str) -> bool {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let Ok(a) = Archive::from_bytes(bytes, Path::new("x.hbb")) else {
            return false;
        };
        let _ = a.paths();
        let mut dec = new_decompressor();
        for b in 0..a.index.blocks.len() as u64 {
            let _ = a.read_block(b, &mut dec);
        }
        true
    }));
    r.unwrap_or_else(|_| panic!("panic on {what}"))
}

#[test]
fn truncated_anywhere_never_opens_and_never_panics() {
    let t = Tmp::new("damaged-trunc");
    let (arc, bytes) = small_archive(&t);
    let index_at = Archive::open(&arc).unwrap().footer.index_offset as usize;
    // Every cut in the header, the index and the footer; every 97th in the frames.
    let cuts = (0..bytes.len()).filter(|&c| c < 128 || c + 16 >= index_at || c % 97 == 0);
    for cut in cuts {
        let opened = exercise(bytes[..cut].to_vec(), &format!("truncation at {cut}"));
        assert!(
            !opened,
            "an archive truncated to {cut} of {} bytes opened",
            bytes.len()
        );
    }
}

#[test]
fn flipped_bits_in_index_or_footer_are_caught() {
    let t = Tmp::new("damaged-index");
    let (arc, bytes) = small_archive(&t);
    let a = Archive::open(&arc).unwrap();
    let index_at = a.footer.index_offset as usize;
    for pos in index_at..bytes.len() {
        for bit in [0u8, 3, 7] {
            let mut b = bytes.clone();
            b[pos] ^= 1 << bit;
            let opened = exercise(b, &format!("bit {bit} of byte {pos}"));
            assert!(
                !opened,
                "a flipped bit at {pos} (index/footer) went unnoticed"
            );
        }
    }
    // And in the header.
    for pos in 0..HEADER_SIZE {
        let mut b = bytes.clone();
        b[pos] ^= 0x10;
        assert!(
            !exercise(b, &format!("header byte {pos}")),
            "header byte {pos}"
        );
    }
}

#[test]
fn flipped_bits_in_frames_cost_exactly_their_block() {
    let t = Tmp::new("damaged-frames");
    let (arc, bytes) = small_archive(&t);
    let a = Archive::open(&arc).unwrap();
    let mut dec = new_decompressor();
    // Every byte of every frame: the damage is found, and only there.
    let frames: Vec<(u64, u64, u32)> = a
        .index
        .blocks
        .iter()
        .enumerate()
        .filter_map(|(i, b)| match b.loc {
            BlockLoc::Frame { offset, clen } => Some((i as u64, offset, clen)),
            _ => None,
        })
        .collect();
    let good: Vec<Vec<u8>> = frames
        .iter()
        .map(|&(b, _, _)| a.read_block(b, &mut dec).unwrap())
        .collect();
    let (mut flips, mut caught) = (0, 0);
    for &(blk, offset, clen) in &frames {
        // About 60 positions spread over each frame, header bytes included.
        let step = (clen as usize / 60).max(1);
        for pos in (offset..offset + clen as u64).step_by(step) {
            let mut b = bytes.clone();
            b[pos as usize] ^= 0x01;
            let d = Archive::from_bytes(b, Path::new("x")).expect("the index is intact");
            flips += 1;
            for (k, &(other, o2, _)) in frames.iter().enumerate() {
                match d.read_block(other, &mut dec) {
                    Err(e) => {
                        assert_eq!(o2, offset, "flip in block {blk} broke block {other}: {e}");
                        caught += 1;
                        let msg = e.to_string();
                        assert!(
                            msg.contains(&format!("block {other}"))
                                && msg.contains(&format!("offset {offset}")),
                            "{msg}"
                        );
                    }
                    // Some bytes of a zstd frame header do not change what it
                    // decodes to; what matters is that no wrong byte is served.
                    Ok(data) => assert!(
                        data == good[k],
                        "flip at {pos} served wrong data for block {other}"
                    ),
                }
            }
        }
    }
    assert!(
        caught * 100 >= flips * 95,
        "only {caught} of {flips} flips detected"
    );
}

#[test]
fn zeros_over_a_range_and_the_commands_report_it() {
    let t = Tmp::new("damaged-zeros");
    let (arc, mut bytes) = small_archive(&t);
    let a = Archive::open(&arc).unwrap();
    // Zero the second and third frames entirely.
    let frames: Vec<(u64, u32)> = a
        .index
        .blocks
        .iter()
        .filter_map(|b| match b.loc {
            BlockLoc::Frame { offset, clen } => Some((offset, clen)),
            _ => None,
        })
        .collect();
    assert!(frames.len() >= 4);
    let (from, _) = frames[1];
    let (last, lclen) = frames[2];
    bytes[from as usize..(last + lclen as u64) as usize].fill(0);
    let dam = t.path("zeroed.hbb");
    fs::write(&dam, &bytes).unwrap();
    let d = dam.to_str().unwrap();
    let v = hbb(&["verify", "--json", d]);
    assert_eq!(v.status.code(), Some(4));
    let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let offs: Vec<u64> = j["bad_blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, [frames[1].0, frames[2].0], "{j}");
    let dst = t.path("dst");
    let r = hbb(&["restore", d, dst.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
    // Every file not listed as affected is restored and identical.
    let affected: Vec<String> = j["bad_blocks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| {
            b["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
        })
        .collect();
    assert!(!affected.is_empty());
    let src = t.path("src");
    for i in 0..4 {
        let name = format!("block{i}");
        if affected.contains(&name) {
            assert!(!dst.join(&name).exists());
        } else {
            cmp(&src.join(&name), &dst.join(&name));
        }
    }
    cmp(&src.join("plain.txt"), &dst.join("plain.txt"));
}
