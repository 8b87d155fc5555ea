//! Errors of the hbb library.
//!
//! Policy: every error carries where it happened as data — the path of the
//! archive or source file, and the block number and byte offset when an
//! archive is damaged — so that a message never leaves the user guessing.
//! Content read from an archive never panics: it is checked and reported as
//! `Error::Corrupt` or `Error::Block`. The binary adds context with anyhow.

use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// (`err` is shown, not chained as a source: a chain printed whole,
    /// as `{:#}` does, would say it twice.)
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: io::Error },

    /// The archive's structure is damaged or not an hbb archive.
    #[error("{}: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },

    /// One data block of the archive is damaged; the rest may be fine.
    #[error("{}: block {block} (archive offset {offset}): {msg}", path.display())]
    Block {
        path: PathBuf,
        block: u64,
        offset: u64,
        msg: String,
    },

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            err: source,
        }
    }
    pub fn corrupt(path: impl AsRef<Path>, msg: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// Adds a path to io::Result.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e.into()))
    }
}
