//! hbb as a mount(8) helper, so that `mount -t fuse.hbb ARCHIVE DIR` and
//! the fstab line
//!
//! ```text
//! /backups/x.hbb  /mnt/x  fuse.hbb  ro,allow_other,nofail  0 0
//! ```
//!
//! mount an archive. mount(8) hands a `fuse.TYPE` mount to fuse3's
//! `mount.fuse3`, which drops the options meant for mount(8) alone
//! (`nofail`, `_netdev`, `auto`, `noauto`, `user`, `users`, `nouser`),
//! appends `dev,suid` unless told `nodev`/`nosuid`, and runs
//! `/bin/sh -c 'hbb ARCHIVE DIR -o OPTIONS'` with mount(8)'s own PATH
//! (`/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`).
//! [`rewrite_args`] turns that call into `hbb mount ...`;
//! [`options_from_mount8`] then reads the options as mount(8) means them.
//! `umount DIR` needs nothing from hbb: the kernel ends the session and the
//! daemon exits.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};

/// `hbb ARCHIVE MOUNTPOINT [-o OPTIONS]` (the call of mount.fuse3) becomes
/// `hbb mount ARCHIVE MOUNTPOINT [-o OPTIONS]`, and true says so; any other
/// command line is returned as it is, with false. The first argument must
/// not be a subcommand or an option, and must look like a path (hold a `/`
/// or exist), so that a mistyped subcommand still gets clap's message.
pub fn rewrite_args(mut args: Vec<OsString>) -> (Vec<OsString>, bool) {
    let Some(first) = args.get(1) else {
        return (args, false);
    };
    let b = first.as_bytes();
    if args.len() < 3 || b.is_empty() || b[0] == b'-' {
        return (args, false);
    }
    let is_subcommand = b == b"help"
        || crate::cli::command().get_subcommands().any(|c| {
            c.get_name().as_bytes() == b || c.get_all_aliases().any(|a| a.as_bytes() == b)
        });
    if is_subcommand || !(b.contains(&b'/') || Path::new(first).exists()) {
        return (args, false);
    }
    args.insert(1, "mount".into());
    (args, true)
}

/// Options that mean something to mount(8), fstab or systemd but nothing
/// to FUSE: ignored wherever they come from (the kernel would refuse them).
pub fn is_mount8_only(opt: &str) -> bool {
    matches!(
        opt,
        "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "users"
            | "nouser"
            | "owner"
            | "group"
            | "nofail"
            | "_netdev"
            | "relatime"
            | "norelatime"
            | "strictatime"
            | "nostrictatime"
            | "lazytime"
            | "nolazytime"
            | "diratime"
            | "nodiratime"
            | "iversion"
            | "noiversion"
            | "mand"
            | "nomand"
            | "loud"
            | "silent"
    ) || opt.starts_with("x-")
        || opt.starts_with("X-")
        || opt.starts_with("comment=")
}

/// What a mount(8) option list asks of `hbb mount`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mount8 {
    /// The options left for `hbb mount -o`.
    pub options: Vec<String>,
    /// `cache=SIZE`: `--cache`.
    pub cache: Option<u64>,
    /// `threads=N`: `--threads`.
    pub threads: Option<usize>,
}

/// Reads `-o` lists as mount(8) passes them:
///
/// - `rw` is what mount(8) passes when nothing is said; an archive always
///   mounts read-only, so it is dropped rather than refused;
/// - `dev` and `suid` are appended by mount.fuse3 to every mount, asked for
///   or not, so they are dropped: the archive stays `nodev,nosuid`, as with
///   `hbb mount` (whose `-o suid,dev` remains for who really wants them);
/// - `cache=SIZE` and `threads=N` stand for `--cache` and `--threads`,
///   which an fstab line cannot give otherwise;
/// - mount(8)'s own options ([`is_mount8_only`]) are dropped;
/// - everything else goes to `hbb mount -o` unchanged.
pub fn options_from_mount8(list: &[String]) -> Result<Mount8> {
    let mut out = Mount8::default();
    for item in list.iter().flat_map(|s| s.split(',')).map(str::trim) {
        match item {
            "" | "rw" | "dev" | "suid" => {
                log::debug!("mount option {item:?} ignored (the mount is ro,nodev,nosuid)");
            }
            s if is_mount8_only(s) => log::debug!("mount option {s:?} is for mount(8): ignored"),
            s if s.starts_with("cache=") => {
                out.cache = Some(
                    crate::cli::parse_size(&s["cache=".len()..])
                        .map_err(|e| Error::Other(format!("-o {s}: {e}")))?,
                );
            }
            s if s.starts_with("threads=") => {
                let n = s["threads=".len()..]
                    .parse::<usize>()
                    .map_err(|e| Error::Other(format!("-o {s}: {e}")))?;
                out.threads = Some(n.max(1));
            }
            s => out.options.push(s.to_string()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn rewrites_the_mount_fuse3_call() {
        assert_eq!(
            rewrite_args(args(&["hbb", "/b/x.hbb", "/mnt/x", "-o", "ro,dev,suid"])),
            (
                args(&["hbb", "mount", "/b/x.hbb", "/mnt/x", "-o", "ro,dev,suid"]),
                true
            )
        );
        assert_eq!(
            rewrite_args(args(&["hbb", "./x.hbb", "/mnt/x"])),
            (args(&["hbb", "mount", "./x.hbb", "/mnt/x"]), true)
        );
        for same in [
            &["hbb", "snapshot", "/src", "/x.hbb"][..],
            &["hbb", "mount", "/x.hbb", "/mnt"],
            &["hbb", "help", "mount/x"],
            &["hbb", "-v", "/x.hbb", "/mnt"],
            &["hbb", "snapshto", "src", "x.hbb"],
            &["hbb", "/x.hbb"],
            &["hbb"],
        ] {
            assert_eq!(rewrite_args(args(same)), (args(same), false));
        }
    }

    #[test]
    fn reads_options_as_mount8_means_them() {
        let m = options_from_mount8(&[
            "rw,noatime,relatime,nodev,allow_other,dev,suid".into(),
            "nofail,_netdev,defaults,x-systemd.automount,comment=x,cache=64M,threads=3".into(),
            "fsname=backup".into(),
        ])
        .unwrap();
        assert_eq!(
            m,
            Mount8 {
                options: vec![
                    "noatime".into(),
                    "nodev".into(),
                    "allow_other".into(),
                    "fsname=backup".into()
                ],
                cache: Some(64 << 20),
                threads: Some(3),
            }
        );
        assert!(options_from_mount8(&["cache=lots".into()]).is_err());
        assert!(options_from_mount8(&["threads=-1".into()]).is_err());
    }
}
