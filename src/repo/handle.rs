//! A repository here or on another host, for the commands that work on
//! both the same way (list, info, prune, verify, restore, mount, ls, cat).

use std::path::Path;
use std::sync::Arc;

use super::catalog::{Catalog, SnapshotRow};
use super::{Repo, RepoInfo, prune, split_target};
use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::remote::client::Client;

pub enum Handle {
    Local(Repo),
    Remote(Arc<Client>),
}

/// Whether `arg` names a whole repository (not one snapshot in it): a
/// repository's directory here, or a remote repository.
pub fn is_repo_arg(arg: &Path) -> bool {
    let (_, snap) = split_target(arg);
    snap.is_none() && (super::is_repo(arg) || crate::remote::parse(arg).is_some())
}

/// Opens what an archive argument names: an archive file, `REPO::NAME`
/// here, or `ssh://…/REPO::NAME` (its index fetched now, its blocks when read).
pub fn open_archive(arg: &Path) -> Result<Archive> {
    let (repo, snap) = split_target(arg);
    if let Some(url) = crate::remote::parse(&repo) {
        let Some(name) = snap else {
            // Only a repository is reached over ssh: say so once it is
            // known to be one (else the far end says what it is).
            drop(Client::connect(&url, false)?);
            return Err(Error::Other(format!(
                "{} is a repository: name a snapshot in it as {}::NAME (see `hbb list {}`)",
                arg.display(),
                arg.display(),
                arg.display()
            )));
        };
        return Client::connect(&url, false)?.open_snapshot(&name);
    }
    Archive::open(&super::ops::resolve(arg)?)
}

impl Handle {
    pub fn open(arg: &Path) -> Result<Handle> {
        match crate::remote::parse(arg) {
            Some(url) => Ok(Handle::Remote(Client::connect(&url, false)?)),
            None => Ok(Handle::Local(Repo::open(arg)?)),
        }
    }

    /// Creates a repository (`hbb repo init`).
    pub fn init(arg: &Path) -> Result<(String, String)> {
        match crate::remote::parse(arg) {
            Some(url) => {
                let c = Client::connect(&url, true)?;
                Ok((url.to_string(), super::pack::hex(&c.repo_id)))
            }
            None => {
                let r = Repo::init(arg)?;
                Ok((r.root.display().to_string(), r.config.id))
            }
        }
    }

    pub fn list(&self) -> Result<Vec<SnapshotRow>> {
        match self {
            Handle::Local(r) => Catalog::open(r)?.snapshots(),
            Handle::Remote(c) => c.list(),
        }
    }

    /// The snapshots' names, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        match self {
            Handle::Local(r) => r.snapshot_names(),
            Handle::Remote(c) => {
                let mut v: Vec<String> = c.list()?.into_iter().map(|r| r.name).collect();
                v.sort();
                Ok(v)
            }
        }
    }

    pub fn open_snapshot(&self, name: &str) -> Result<Archive> {
        match self {
            Handle::Local(r) => r.open_snapshot(name),
            Handle::Remote(c) => c.open_snapshot(name),
        }
    }

    pub fn info(&self) -> Result<RepoInfo> {
        match self {
            Handle::Local(r) => super::info(&r.root),
            Handle::Remote(c) => {
                let mut i = c.info()?;
                i.path = c.url.to_string();
                Ok(i)
            }
        }
    }

    pub fn prune(&self, o: &prune::Options) -> Result<prune::Report> {
        match self {
            Handle::Local(r) => prune::prune(&r.root, o),
            Handle::Remote(c) => c.prune(o),
        }
    }
}
