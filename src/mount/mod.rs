//! `hbb mount` and `hbb umount`: any archive as a read-only filesystem,
//! decompressed on demand.
//!
//! ```text
//! checks (/dev/fuse, mountpoint, archive) ─► fork ─┬─ parent: waits for "OK" or "ERR why", exits
//!                                                  └─ child: setsid ─► workers ─► mount + FUSE init
//!                                                     ─► "OK" ─► serve until unmounted
//! ```
//!
//! Everything that can fail is tried before the parent returns, so `hbb
//! mount` exits 0 only once the mount works, and otherwise non-zero with
//! the reason; `-f` does the same in the foreground. SIGINT, SIGTERM and
//! SIGHUP unmount (lazily if the mount is busy, so that no stale mount is
//! left behind); the daemon exits when the kernel ends the session.
//! [`fs`] answers the kernel; [`cache`] holds the decoded blocks.
//!
//! A [`Target`] is one archive (its root is the mount's root), or many
//! named archives (a repository's snapshots), each a directory of the
//! mount's root, opened only once something inside it is asked for.

pub mod cache;
pub mod fs;
pub mod helper;
mod push;

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{Config, MountOption, SessionACL};

use crate::archive::Archive;
use crate::error::{Error, Result};

/// `--cache` when not given.
pub const DEFAULT_CACHE: &str = "256MiB";
/// Most threads reading requests from the kernel: they never wait for a
/// decode (misses go to the cache's workers), so a few are enough.
const MAX_SESSION_THREADS: usize = 4;

/// Opens an entry's archive.
pub type Opener = Box<dyn Fn() -> Result<Archive> + Send + Sync>;

/// One archive shown as a top-level directory of a multi-archive mount.
pub struct Entry {
    /// Directory name (a valid file name: no '/', no NUL, not . or ..).
    pub name: Vec<u8>,
    /// mtime/ctime shown for that directory (the snapshot's time).
    pub time: std::time::SystemTime,
    /// Opens the archive; called at most once, lazily, the first time the
    /// directory is looked into (lookup/getattr of anything inside,
    /// readdir); errors become EIO for that directory and are logged once
    /// with the message. It runs in the mount's daemon, whose working
    /// directory is `/`: paths it uses must be absolute.
    pub open: Opener,
}

/// What a mount shows.
pub enum Target {
    /// One archive file, its root as the mount's root.
    Archive(PathBuf),
    /// Each entry as a directory of the mount's root, by name.
    /// `label` is used as the fsname in mtab (the repository's path).
    Many { label: PathBuf, entries: Vec<Entry> },
    /// One archive opened by the mount's daemon, after it has gone to the
    /// background (a remote snapshot: its connection's threads would not
    /// survive the fork). `label` names it in mtab and messages.
    Lazy {
        label: PathBuf,
        open: Box<dyn FnOnce() -> Result<Archive> + Send>,
    },
}

pub struct Options {
    pub target: Target,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    /// Bytes of decoded blocks kept (LRU).
    pub cache_bytes: u64,
    /// Decompression workers.
    pub threads: usize,
    /// `-o` options, each possibly a comma-separated list.
    pub options: Vec<String>,
}

/// What is ready to be served, once every check has passed.
struct Prepared {
    served: Served,
    /// The archive's or the repository's path, for messages.
    label: PathBuf,
    mountpoint: PathBuf,
    config: Config,
    cache_bytes: u64,
    threads: usize,
}

/// The archives a mount serves.
enum Served {
    One(Arc<Archive>),
    Many(Vec<Entry>),
    Lazy(Box<dyn FnOnce() -> Result<Archive> + Send>),
}

/// Mounts the target; in the background unless `foreground`, returning
/// once the mount is ready. In the foreground, returns once unmounted.
/// Going to the background forks, so it is refused in a process that has
/// started other threads. A multi-archive target opens none of its
/// archives here: each is opened by the daemon when first looked into.
pub fn mount(opts: Options) -> Result<()> {
    let (acl, extra) = parse_options(&opts.options)?;
    check_dev_fuse()?;
    let mountpoint = check_mountpoint(&opts.mountpoint)?;
    let (served, label, source, cache_bytes) = match opts.target {
        Target::Archive(path) => {
            let archive = Archive::open(&path)?;
            // The block being read must stay cached while the kernel reads it
            // in pieces, or each piece would decode it again.
            let bs = archive.block_size();
            let cache_bytes = opts.cache_bytes.max(bs);
            if opts.cache_bytes < 2 * bs {
                eprintln!(
                    "hbb: warning: --cache {} holds less than two blocks of {bs} bytes: \
                     no read-ahead, and readers of different blocks evict each other",
                    opts.cache_bytes
                );
            }
            let source = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
            (Served::One(Arc::new(archive)), path, source, cache_bytes)
        }
        Target::Many { label, entries } => {
            check_entries(&entries)?;
            // The cache keeps at least the block last decoded, whatever its
            // size; a warning names an archive whose blocks it cannot hold
            // two of, when it is opened.
            let source = label.clone();
            (Served::Many(entries), label, source, opts.cache_bytes)
        }
        Target::Lazy { label, open } => {
            (Served::Lazy(open), label.clone(), label, opts.cache_bytes)
        }
    };
    let mut config = Config::default();
    config.mount_options = vec![
        // The archive's path names the mount in mtab; a comma would split
        // fusermount's option list.
        MountOption::FSName(source.to_string_lossy().replace(',', "_")),
        MountOption::Subtype("hbb".into()),
        MountOption::RO,
        // The kernel checks modes and owners as stored: without this, with
        // allow_other, anyone could read anything.
        MountOption::DefaultPermissions,
    ];
    for o in extra {
        // A given fsname or subtype replaces ours.
        config.mount_options.retain(|x| {
            std::mem::discriminant(x) != std::mem::discriminant(&o)
                || !matches!(o, MountOption::FSName(_) | MountOption::Subtype(_))
        });
        config.mount_options.push(o);
    }
    config.acl = acl;
    // Two at least, so that one is free to answer a read while the other
    // pushes files ahead of a reader (see push.rs), even with one worker.
    config.n_threads = Some(opts.threads.clamp(2, MAX_SESSION_THREADS));
    config.clone_fd = true;
    let p = Prepared {
        served,
        label,
        mountpoint,
        config,
        cache_bytes,
        threads: opts.threads.max(1),
    };
    if opts.foreground {
        return serve(p, None);
    }
    match fork()? {
        Forked::Parent(outcome) => outcome,
        Forked::Child(mut ready) => {
            let code = match serve(p, Some(&mut ready)) {
                Ok(()) => 0,
                Err(e) => {
                    if !ready.send(&format!("ERR {e}")) {
                        log(&format!("error: {e}"));
                    }
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// Entries' names must be file names, and distinct.
fn check_entries(entries: &[Entry]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        let shown = String::from_utf8_lossy(&e.name);
        if !crate::archive::valid_name(&e.name) {
            return Err(Error::Other(format!(
                "{shown:?} cannot name a directory of the mount"
            )));
        }
        if !seen.insert(&e.name[..]) {
            return Err(Error::Other(format!("two archives are named {shown:?}")));
        }
    }
    if entries.len() >= u32::MAX as usize {
        return Err(Error::Other(format!(
            "{} archives are more than one mount can show",
            entries.len()
        )));
    }
    Ok(())
}

/// The archive files `paths` as a multi-archive target (`hbb
/// mount-archives`, for tests): each a directory named by its file's stem,
/// dated by its file's mtime, opened by path when first looked into.
pub fn archive_files(paths: &[PathBuf]) -> Result<Target> {
    let mut entries = Vec::with_capacity(paths.len());
    for p in paths {
        // The daemon works from /: it must open by absolute path.
        let path = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        let time = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(|e| Error::io(&path, e))?;
        let name = path
            .file_stem()
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default();
        entries.push(Entry {
            name,
            time,
            open: Box::new(move || Archive::open(&path)),
        });
    }
    Ok(Target::Many {
        label: "archives".into(),
        entries,
    })
}

/// Unmounts the FUSE mount at `mountpoint` (`hbb umount`).
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let mut mp = absolute_nofollow(mountpoint)?;
    if find_mount(&mp)?.is_none()
        && let Ok(resolved) = mp.canonicalize()
    {
        // A symlink to the mountpoint.
        mp = resolved;
    }
    match find_mount(&mp)? {
        None => {
            return Err(Error::Other(format!("{} is not mounted", mp.display())));
        }
        Some(m) if !m.fstype.starts_with("fuse") => {
            return Err(Error::Other(format!(
                "{}: not a FUSE mount ({} from {}); use umount(8)",
                mp.display(),
                m.fstype,
                m.source
            )));
        }
        Some(_) => {}
    }
    unmount(&mp, lazy).map_err(|e| {
        if is_busy(&e) {
            Error::Other(format!(
                "{} is busy: a process has a file open or its working directory there; \
                 close them, or detach it now with `hbb umount --lazy {}`",
                mp.display(),
                mp.display()
            ))
        } else {
            e
        }
    })
}

/// Unmounts `mp`: umount2 as root, else through fusermount3 (or fusermount).
/// `lazy` detaches it at once and lets it go when its last user closes it.
pub fn unmount(mp: &Path, lazy: bool) -> Result<()> {
    if crate::sys::is_root() {
        let flags = if lazy {
            rustix::mount::UnmountFlags::DETACH
        } else {
            rustix::mount::UnmountFlags::empty()
        };
        return rustix::mount::unmount(mp, flags).map_err(|e| Error::io(mp, e.into()));
    }
    let mut last = String::new();
    for bin in ["fusermount3", "fusermount"] {
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        match cmd.arg("--").arg(mp).output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(if msg.contains("busy") {
                    Error::io(mp, std::io::Error::from_raw_os_error(libc::EBUSY))
                } else {
                    Error::Other(format!("{bin}: {msg}"))
                });
            }
            Err(e) => last = format!("{bin}: {e}"),
        }
    }
    Err(Error::Other(format!(
        "cannot unmount {} without root: {last} (install fuse3)",
        mp.display()
    )))
}

fn is_busy(e: &Error) -> bool {
    matches!(e, Error::Io { err, .. } if err.raw_os_error() == Some(libc::EBUSY))
}

/// Splits `-o` lists into the session's access rule and mount options.
fn parse_options(list: &[String]) -> Result<(SessionACL, Vec<MountOption>)> {
    let mut acl = SessionACL::Owner;
    let mut out = Vec::new();
    for item in list.iter().flat_map(|s| s.split(',')).map(str::trim) {
        let o = match item {
            "" | "ro" | "default_permissions" => continue,
            // nofail, _netdev, x-systemd.*...: fstab's, not the kernel's.
            s if helper::is_mount8_only(s) => {
                log::debug!("mount option {s:?} is for mount(8): ignored");
                continue;
            }
            "allow_other" => {
                acl = SessionACL::All;
                continue;
            }
            "allow_root" => {
                if acl == SessionACL::Owner {
                    acl = SessionACL::RootAndOwner;
                }
                continue;
            }
            "rw" => {
                return Err(Error::Other(
                    "-o rw: an archive mounts read-only; restore it to change it".into(),
                ));
            }
            "auto_unmount" => MountOption::AutoUnmount,
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "atime" => MountOption::Atime,
            "noatime" => MountOption::NoAtime,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            s if s.starts_with("fsname=") => MountOption::FSName(s["fsname=".len()..].into()),
            s if s.starts_with("subtype=") => MountOption::Subtype(s["subtype=".len()..].into()),
            // Anything else goes to the kernel as is (max_read=N, ...).
            s => MountOption::CUSTOM(s.into()),
        };
        // Later options win over earlier ones, as with mount(8).
        if let MountOption::FSName(_) | MountOption::Subtype(_) = o {
            out.retain(|x| std::mem::discriminant(x) != std::mem::discriminant(&o));
        }
        out.push(o);
    }
    if out.contains(&MountOption::AutoUnmount) && acl == SessionACL::Owner {
        // fusermount's auto_unmount needs allow_other or allow_root.
        acl = SessionACL::RootAndOwner;
    }
    Ok((acl, out))
}

fn check_dev_fuse() -> Result<()> {
    let dev = Path::new("/dev/fuse");
    match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Other(
            "/dev/fuse does not exist: load the fuse kernel module (modprobe fuse), \
             or in a container give it the device (docker run --device /dev/fuse)"
                .into(),
        )),
        Err(e) => Err(Error::Other(format!(
            "cannot open /dev/fuse: {e} (is the fuse3 package installed and may this user use FUSE?)"
        ))),
    }
}

/// The mountpoint, absolute and resolved, once it is known to be an
/// existing directory with nothing mounted on it.
fn check_mountpoint(mp: &Path) -> Result<PathBuf> {
    let shown = mp.display();
    match std::fs::metadata(mp) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(Error::Other(format!(
                "mountpoint {shown} is a dead FUSE mount (\"Transport endpoint is not connected\"): \
                 run `hbb umount {shown}` first"
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Other(format!(
                "mountpoint {shown} does not exist (create it with mkdir)"
            )));
        }
        Err(e) => return Err(Error::Other(format!("mountpoint {shown}: {e}"))),
        Ok(m) if !m.is_dir() => {
            return Err(Error::Other(format!(
                "mountpoint {shown} is not a directory"
            )));
        }
        Ok(_) => {}
    }
    let abs = mp.canonicalize().map_err(|e| Error::io(mp, e))?;
    if let Some(m) = find_mount(&abs)? {
        return Err(Error::Other(format!(
            "mountpoint {} is busy: {} ({}) is already mounted there; unmount it first",
            abs.display(),
            m.source,
            m.fstype
        )));
    }
    Ok(abs)
}

/// `p` made absolute with its parent resolved but not its last component,
/// which may be a dead mount that cannot be looked at.
fn absolute_nofollow(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .map_err(|e| Error::io(parent, e))?
            .join(name)),
        _ => abs.canonicalize().map_err(|e| Error::io(p, e)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    /// "major:minor" of the mounted filesystem, unique while it is mounted.
    dev: String,
    fstype: String,
    source: String,
}

/// The topmost mount at `path` (absolute, resolved), from /proc/self/mountinfo.
fn find_mount(path: &Path) -> Result<Option<MountEntry>> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read(info).map_err(|e| Error::io(info, e))?;
    Ok(parse_mountinfo(&text, path.as_os_str().as_bytes()))
}

fn parse_mountinfo(text: &[u8], path: &[u8]) -> Option<MountEntry> {
    let mut found = None;
    for line in text.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let (Some(mp), Some(dash)) = (fields.get(4), fields.iter().position(|f| *f == b"-")) else {
            continue;
        };
        if unescape(mp) != path {
            continue;
        }
        let field = |k: usize| {
            fields
                .get(dash + k)
                .map(|f| String::from_utf8_lossy(&unescape(f)).into_owned())
                .unwrap_or_default()
        };
        found = Some(MountEntry {
            dev: String::from_utf8_lossy(fields.get(2).copied().unwrap_or_default()).into_owned(),
            fstype: field(1),
            source: field(2),
        });
    }
    found
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (s[i + 1] - b'0') as u32 * 64
                + (s[i + 2] - b'0') as u32 * 8
                + (s[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Serving, in the foreground or in the daemon.

fn serve(p: Prepared, ready: Option<&mut Ready>) -> Result<()> {
    // Before any thread starts, so that all inherit the mask and only the
    // signal thread takes these signals.
    let signals = block_signals();
    let fs = match p.served {
        Served::One(archive) => fs::HbbFs::new(archive, p.cache_bytes, p.threads),
        Served::Many(entries) => fs::HbbFs::many(entries, p.cache_bytes, p.threads),
        Served::Lazy(open) => {
            let archive = open()?;
            // As for an archive opened before: the block being read stays cached.
            let cache = p.cache_bytes.max(archive.block_size());
            fs::HbbFs::new(Arc::new(archive), cache, p.threads)
        }
    }
    .map_err(|e| Error::Other(format!("cannot start the decompression threads: {e}")))?;
    if p.config.acl == fuser::SessionACL::RootAndOwner || p.config.n_threads.unwrap_or(1) < 2 {
        fs.no_push();
    }
    let conn = fs.connection();
    let session = fuser::Session::new(fs, &p.mountpoint, &p.config).map_err(|e| {
        let hint = if crate::sys::is_root() {
            ""
        } else {
            " (as a user, mounting needs fusermount3, from the fuse3 package)"
        };
        Error::Other(format!(
            "cannot mount on {}: {e}{hint}",
            p.mountpoint.display()
        ))
    })?;
    // Pushes of files ahead of a reader go to the session's connection.
    if let Ok(fd) = session.as_fd().try_clone_to_owned() {
        let _ = conn.set(fd);
    }
    // The mount is in place and the kernel's INIT answered: it works.
    match ready {
        Some(r) => {
            detach_stdio();
            r.send("OK");
        }
        None => eprintln!(
            "hbb: {} mounted on {}; Ctrl-C or `hbb umount {}` unmounts",
            p.label.display(),
            p.mountpoint.display(),
            p.mountpoint.display()
        ),
    }
    // Which mount is ours: only that one is ever unmounted by path.
    let ours = Mine {
        mp: p.mountpoint.clone(),
        dev: find_mount(&p.mountpoint)?.map(|m| m.dev),
        conn: Arc::new(
            session
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::Other(format!("cannot duplicate the FUSE descriptor: {e}")))?,
        ),
    };
    spawn_signal_thread(signals, ours.clone());
    // fuser 0.18 unmounts by path when a session's mount handle is dropped,
    // after a check that takes a severed connection for a live mount; by
    // then the path may hold someone else's new mount. So the handle is
    // never dropped (the process ends soon after), and this module alone
    // unmounts, checking first that the mount there is still ours.
    let bg = std::mem::ManuallyDrop::new(
        session
            .spawn()
            .map_err(|e| Error::Other(format!("cannot start the FUSE session: {e}")))?,
    );
    // SAFETY: `bg` is never dropped nor used again, so the join handle is
    // taken out of it exactly once.
    let session_thread = unsafe { std::ptr::read(&bg.guard) };
    let outcome = match session_thread.join() {
        Ok(r) => r.map_err(|e| Error::Other(format!("FUSE session on {}: {e}", ours.mp.display()))),
        Err(_) => Err(Error::Other(format!(
            "FUSE session on {}: a thread panicked",
            ours.mp.display()
        ))),
    };
    // Ended without an unmount (an error): leave no dead mount behind.
    if ours.is_mounted()
        && let Err(e) = unmount(&ours.mp, true)
    {
        log(&format!("cannot unmount {}: {e}", ours.mp.display()));
    }
    outcome
}

/// This process's mount.
#[derive(Clone)]
struct Mine {
    mp: PathBuf,
    /// Its device number: unique while the connection lives, reused after.
    dev: Option<String>,
    /// A duplicate of the session's /dev/fuse descriptor.
    conn: Arc<OwnedFd>,
}

impl Mine {
    /// Whether the mount at `mp` is still this process's: the connection
    /// lives (so its device number cannot have been reused) and the mount
    /// there has that device number.
    fn is_mounted(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.conn.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting. An unmount severs the
        // connection, which then reports POLLERR.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        let alive = n == 0 || (n == 1 && pfd.revents & libc::POLLERR == 0);
        alive
            && self.dev.is_some()
            && find_mount(&self.mp).is_ok_and(|m| m.map(|m| m.dev) == self.dev)
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, zero-initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGINT, SIGTERM or SIGHUP and unmounts; the session then ends
/// and the process exits.
fn spawn_signal_thread(set: libc::sigset_t, mine: Mine) {
    let r = std::thread::Builder::new()
        .name("hbb-signals".into())
        .spawn(move || {
            loop {
                let mut sig = 0;
                // SAFETY: `set` is a valid sigset_t, `sig` a valid out pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                let name = match sig {
                    libc::SIGINT => "SIGINT",
                    libc::SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                let mp = &mine.mp;
                if !mine.is_mounted() {
                    log(&format!("{name}: {} is already unmounted", mp.display()));
                    continue;
                }
                // Said first: once unmounted, the process may end at once.
                log(&format!("{name}: unmounting {}", mp.display()));
                match unmount(mp, false) {
                    Ok(()) => {}
                    Err(e) if is_busy(&e) => {
                        log(&format!(
                            "{} is busy; detached, it goes away when its last user closes it",
                            mp.display()
                        ));
                        if let Err(e) = unmount(mp, true) {
                            log(&format!("cannot unmount {}: {e}", mp.display()));
                        }
                    }
                    Err(e) => log(&format!("cannot unmount {}: {e}", mp.display())),
                }
            }
        });
    if let Err(e) = r {
        log(&format!("cannot start the signal thread: {e}"));
    }
}

// ---------------------------------------------------------------------------
// Going to the background.

enum Forked {
    /// What the child reported: the mount works, or why not.
    Parent(Result<()>),
    Child(Ready),
}

/// The child's end of the pipe on which it reports to the waiting parent.
struct Ready(Option<std::io::PipeWriter>);

impl Ready {
    /// Sends `msg` once; false if it was already sent.
    fn send(&mut self, msg: &str) -> bool {
        match self.0.take() {
            Some(mut w) => {
                let _ = w.write_all(msg.as_bytes());
                true
            }
            None => false,
        }
    }
}

fn fork() -> Result<Forked> {
    // The child goes on running Rust code, which is only sound when no
    // other thread could be holding a lock at the moment of the fork.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    if threads.is_some_and(|n| n > 1) {
        return Err(Error::Other(
            "cannot go to the background from a multi-threaded process; mount in the foreground"
                .into(),
        ));
    }
    let (mut r, w) =
        std::io::pipe().map_err(|e| Error::Other(format!("cannot create a pipe: {e}")))?;
    // SAFETY: this process has one thread (checked above), so the child may
    // go on running Rust code. Both ends of the pipe are close-on-exec.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Other(format!(
            "cannot fork: {}",
            std::io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        drop(r);
        // SAFETY: plain system call; leaves the terminal's session so that
        // its Ctrl-C and hang-up do not reach the daemon.
        unsafe { libc::setsid() };
        return Ok(Forked::Child(Ready(Some(w))));
    }
    drop(w);
    let mut msg = String::new();
    let _ = r.read_to_string(&mut msg);
    if msg == "OK" {
        return Ok(Forked::Parent(Ok(())));
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(Forked::Parent(Err(match msg.strip_prefix("ERR ") {
        Some(why) => Error::Other(why.to_string()),
        None => Error::Other(format!(
            "the mount process ended before the mount was ready (wait status {status:#x})"
        )),
    })))
}

/// Whether log lines go to syslog (the daemon) or stderr (the foreground).
static DAEMON: AtomicBool = AtomicBool::new(false);

/// Points stdin, stdout and stderr at /dev/null, leaves the working
/// directory (so that it is never kept busy), and logs to syslog from now on.
fn detach_stdio() {
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..=2 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
        libc::chdir(c"/".as_ptr());
        libc::openlog(c"hbb".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON);
    }
    DAEMON.store(true, Ordering::Relaxed);
}

/// Logs one line: to stderr in the foreground, to syslog in the background.
pub(crate) fn log(msg: &str) {
    if DAEMON.load(Ordering::Relaxed) {
        let c = CString::new(msg.replace('\0', "")).unwrap_or_default();
        // SAFETY: a constant format string and a valid C string argument.
        unsafe { libc::syslog(libc::LOG_WARNING, c"%s".as_ptr(), c.as_ptr()) };
    } else {
        eprintln!("hbb: {msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo() {
        let text = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                     90 27 0:50 / /tmp/a\\040b ro,nosuid - fuse /x/arch\\054ive.hbb ro\n\
                     91 90 0:51 / /tmp/a\\040b ro - fuse.hbb /y.hbb ro\n";
        assert_eq!(
            parse_mountinfo(text, b"/tmp/a b"),
            Some(MountEntry {
                dev: "0:51".into(),
                fstype: "fuse.hbb".into(),
                source: "/y.hbb".into()
            })
        );
        assert_eq!(parse_mountinfo(text, b"/tmp/a"), None);
        assert_eq!(unescape(b"a\\054b\\134"), b"a,b\\");
        assert_eq!(unescape(b"x\\05"), b"x\\05");
    }

    #[test]
    fn options() {
        let (acl, o) = parse_options(&["allow_other".into(), "noexec,fsname=x".into()]).unwrap();
        assert_eq!(acl, SessionACL::All);
        assert_eq!(
            o,
            vec![MountOption::NoExec, MountOption::FSName("x".into())]
        );
        assert!(parse_options(&["rw".into()]).is_err());
        let (acl, _) = parse_options(&["auto_unmount".into()]).unwrap();
        assert_eq!(acl, SessionACL::RootAndOwner);
        let (_, o) =
            parse_options(&["nofail,_netdev,defaults,x-systemd.automount,noexec".into()]).unwrap();
        assert_eq!(o, vec![MountOption::NoExec]);
    }
}
