//! The block reader on damaged frames: a real archive (the first seed file
//! in fuzz/seeds) whose data area is overwritten by the fuzzer's bytes.
//! The index stays valid, so every block read goes through decompression
//! and the hash check; none may panic, and none may return wrong bytes.
#![no_main]

use std::sync::OnceLock;

use hbb::archive::{Archive, HEADER_SIZE, new_decompressor};
use libfuzzer_sys::fuzz_target;

fn seed() -> &'static (Vec<u8>, Vec<Vec<u8>>) {
    static SEED: OnceLock<(Vec<u8>, Vec<Vec<u8>>)> = OnceLock::new();
    SEED.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/seeds");
        let mut files: Vec<_> = std::fs::read_dir(dir).expect("fuzz/seeds").flatten().map(|e| e.path()).collect();
        files.sort();
        let bytes = std::fs::read(&files[0]).unwrap();
        let a = Archive::from_bytes(bytes.clone(), std::path::Path::new("seed")).unwrap();
        let mut dec = new_decompressor();
        let blocks = (0..a.index.blocks.len() as u64).map(|b| a.read_block(b, &mut dec).unwrap()).collect();
        (bytes, blocks)
    })
}

fuzz_target!(|data: &[u8]| {
    let (bytes, good) = seed();
    let a0 = Archive::from_bytes(bytes.clone(), std::path::Path::new("seed")).unwrap();
    let end = a0.footer.index_offset as usize;
    if data.len() < 8 || end <= HEADER_SIZE {
        return;
    }
    let mut b = bytes.clone();
    let at = HEADER_SIZE + (u32::from_le_bytes(data[..4].try_into().unwrap()) as usize % (end - HEADER_SIZE));
    for (k, &x) in data[4..].iter().enumerate() {
        if at + k >= end {
            break;
        }
        b[at + k] = x;
    }
    let a = Archive::from_bytes(b, std::path::Path::new("fuzz")).unwrap();
    let mut dec = new_decompressor();
    for (i, g) in good.iter().enumerate() {
        if let Ok(d) = a.read_block(i as u64, &mut dec) {
            assert_eq!(&d, g, "block {i} served wrong data");
        }
    }
});
