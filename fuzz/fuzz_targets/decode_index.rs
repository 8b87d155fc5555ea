//! Any bytes as the decompressed index of an otherwise valid archive: the
//! postcard decoder and the structural checks (`validate`) see the fuzzer's
//! bytes directly, past the footer's hash, and whatever opens is then
//! listed and read as a user would.
#![no_main]

use std::sync::OnceLock;

use hbb::archive::{Archive, FOOTER_SIZE, Footer, new_decompressor};
use libfuzzer_sys::fuzz_target;

fn seed() -> &'static Vec<u8> {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/seeds");
        let mut files: Vec<_> = std::fs::read_dir(dir).expect("fuzz/seeds").flatten().map(|e| e.path()).collect();
        files.sort();
        std::fs::read(&files[0]).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let bytes = seed();
    let footer_at = bytes.len() - FOOTER_SIZE;
    let old = Footer::decode(bytes[footer_at..].try_into().unwrap()).unwrap();
    let comp = zstd::bulk::compress(data, 1).unwrap();
    let mut out = bytes[..old.index_offset as usize].to_vec();
    out.extend_from_slice(&comp);
    let f = Footer {
        index_clen: comp.len() as u64,
        index_rlen: data.len() as u64,
        index_hash: *blake3::hash(&comp).as_bytes(),
        ..old
    };
    out.extend_from_slice(&f.encode());
    let Ok(a) = Archive::from_bytes(out, std::path::Path::new("fuzz.hbb")) else { return };
    let _ = a.paths();
    let _ = a.block_users();
    let mut listing = Vec::new();
    let _ = hbb::inspect::ls(&a, b"", true, true, &mut listing);
    let mut dec = new_decompressor();
    for b in 0..a.index.blocks.len().min(64) as u64 {
        let _ = a.read_block(b, &mut dec);
    }
    for ino in 0..a.index.inodes.len().min(64) {
        if let hbb::archive::Body::File { .. } = a.index.inodes[ino].body {
            let mut sink = Vec::new();
            let path = &a.paths()[ino];
            let _ = hbb::inspect::cat(&a, path, &mut sink);
        }
    }
});
