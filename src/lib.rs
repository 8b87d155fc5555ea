//! hbb — high-speed bulk backup.
//!
//! The library behind the `hbb` binary: the archive format
//! ([`archive`]), the block-parallel snapshot ([`snapshot`]), and the
//! readers built on the archive: [`restore`], [`verify`], [`inspect`].

pub mod archive;
pub mod cli;
pub mod error;
pub mod fleet;
pub mod inspect;
pub mod logging;
pub mod manpages;
pub mod master;
pub mod mount;
pub mod progress;
pub mod remote;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod snapshot;
pub mod sys;
pub mod verify;

pub use error::{Error, Result};
