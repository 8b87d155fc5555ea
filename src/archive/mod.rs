//! The archive: its format, a writer and a reader.
pub mod decode;
pub mod format;
pub mod reader;
pub mod writer;

pub use format::*;
pub use reader::{Archive, Partial, new_decompressor, valid_name};
