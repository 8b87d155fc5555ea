//! Any bytes as an archive: header, footer and index decoding and the
//! index's structural checks, then everything a reader does with an index
//! that opened (paths, lookups, every block, the listing).
#![no_main]

use hbb::archive::{Archive, new_decompressor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(a) = Archive::from_bytes(data.to_vec(), std::path::Path::new("fuzz.hbb")) else {
        return;
    };
    let _ = a.paths();
    let _ = a.block_users();
    let _ = a.resolve(b"a/b/c");
    let mut out = Vec::new();
    let _ = hbb::inspect::ls(&a, b"", true, true, &mut out);
    let mut dec = new_decompressor();
    for b in 0..a.index.blocks.len().min(64) as u64 {
        let _ = a.read_block(b, &mut dec);
    }
});
