//! Small wrappers over the system calls hbb needs: extended attributes,
//! owner names, opening without touching atime, sparse-file maps.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::archive::Xattr;

/// All extended attributes of `path` (not following a symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    read_xattrs_with(
        |buf| rustix::fs::llistxattr(path, buf),
        |name, buf| rustix::fs::lgetxattr(path, name, buf),
    )
}

/// All extended attributes of the entry `name` of the directory `dir` (not
/// following a symlink), sorted by name. Uses `listxattrat`/`getxattrat`
/// (Linux 6.13), which look up only the last component, and the full
/// `path` where they are missing. Nothing is opened, so a fifo or a device
/// is never opened and a symlink never followed.
pub fn read_xattrs_at(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> io::Result<Vec<Xattr>> {
    static XATTRAT: AtomicBool = AtomicBool::new(true);
    if XATTRAT.load(Ordering::Relaxed) {
        match read_xattrs_with(
            |buf| xattrat::list(dir, name, buf),
            |attr, buf| xattrat::get(dir, name, attr, buf),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                XATTRAT.store(false, Ordering::Relaxed)
            }
            r => return r,
        }
    }
    read_xattrs(path)
}

fn read_xattrs_with(
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    get: impl Fn(&CStr, &mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<Xattr>> {
    let mut names = vec![0u8; 1024];
    let n = loop {
        match list(&mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need: usize = list(&mut [0u8; 0][..]).map_err(io::Error::from)?;
                names.resize(need.max(names.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cname = CString::new(name).unwrap();
        let mut val = vec![0u8; 256];
        let got = loop {
            match get(cname.as_c_str(), &mut val[..]) {
                Ok(k) => break Some(k),
                Err(rustix::io::Errno::RANGE) => {
                    let need: usize =
                        get(cname.as_c_str(), &mut [0u8; 0][..]).map_err(io::Error::from)?;
                    val.resize(need.max(val.len() * 2), 0);
                }
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(k) = got {
            val.truncate(k);
            out.push(Xattr {
                name: name.to_vec(),
                value: val,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `listxattrat` and `getxattrat` (Linux 6.13), which libc does not wrap yet.
mod xattrat {
    use std::ffi::CStr;
    use std::os::fd::{AsRawFd, BorrowedFd};

    use rustix::io::{Errno, Result};

    // The new system calls have the same numbers on every architecture
    // that uses the common table; elsewhere, report them missing.
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "arm",
        target_arch = "x86",
        target_arch = "powerpc64",
        target_arch = "s390x"
    ))]
    const SYS: Option<(libc::c_long, libc::c_long)> = Some((464, 465));
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "arm",
        target_arch = "x86",
        target_arch = "powerpc64",
        target_arch = "s390x"
    )))]
    const SYS: Option<(libc::c_long, libc::c_long)> = None;

    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }

    fn ret(r: libc::c_long) -> Result<usize> {
        if r < 0 {
            Err(Errno::from_raw_os_error(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ))
        } else {
            Ok(r as usize)
        }
    }

    pub fn list(dir: BorrowedFd<'_>, path: &CStr, buf: &mut [u8]) -> Result<usize> {
        let Some((_, nr)) = SYS else {
            return Err(Errno::NOSYS);
        };
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        ret(unsafe {
            libc::syscall(
                nr,
                dir.as_raw_fd(),
                path.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                buf.as_mut_ptr(),
                buf.len(),
            )
        })
    }

    pub fn get(dir: BorrowedFd<'_>, path: &CStr, name: &CStr, buf: &mut [u8]) -> Result<usize> {
        let Some((nr, _)) = SYS else {
            return Err(Errno::NOSYS);
        };
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: buf.len().min(u32::MAX as usize) as u32,
            flags: 0,
        };
        // SAFETY: the kernel writes at most `args.size` bytes at `args.value`.
        ret(unsafe {
            libc::syscall(
                nr,
                dir.as_raw_fd(),
                path.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                name.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        })
    }
}

/// What `lstat` says about an entry, as `std::fs::Metadata` would give it.
#[derive(Clone, Copy)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub blocks: u64,
    pub dev: u64,
    pub ino: u64,
    pub rdev: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stat {
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
}

/// `lstat` of the entry `name` of the directory `dir` (never following a
/// symlink), looking up only that one component.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    use rustix::fs::{AtFlags, StatxFlags};
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_SYNC_AS_STAT;
    match rustix::fs::statx(dir, name, flags, StatxFlags::BASIC_STATS) {
        Ok(x) => {
            let t = |ts: rustix::fs::StatxTimestamp| (ts.tv_sec, ts.tv_nsec as i64);
            Ok(Stat {
                mode: x.stx_mode as u32,
                uid: x.stx_uid,
                gid: x.stx_gid,
                nlink: x.stx_nlink as u64,
                size: x.stx_size,
                blocks: x.stx_blocks,
                // As the standard library makes them from statx.
                dev: libc::makedev(x.stx_dev_major, x.stx_dev_minor),
                ino: x.stx_ino,
                rdev: libc::makedev(x.stx_rdev_major, x.stx_rdev_minor),
                atime: t(x.stx_atime),
                mtime: t(x.stx_mtime),
                ctime: t(x.stx_ctime),
            })
        }
        Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            let s = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            Ok(Stat {
                mode: s.st_mode,
                uid: s.st_uid,
                gid: s.st_gid,
                nlink: s.st_nlink,
                size: s.st_size as u64,
                blocks: s.st_blocks as u64,
                dev: s.st_dev,
                ino: s.st_ino,
                rdev: s.st_rdev,
                atime: (s.st_atime, s.st_atime_nsec as i64),
                mtime: (s.st_mtime, s.st_mtime_nsec as i64),
                ctime: (s.st_ctime, s.st_ctime_nsec as i64),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The target of the symlink `name` in the directory `dir`.
pub fn read_link_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes())
}

/// Opens a directory to read its entries and to look entries up in it,
/// without updating its atime when allowed and without following a symlink
/// in the last component unless `follow`.
pub fn open_dir(path: &Path, follow: bool) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags, open};
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    match open(path, flags | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::PERM) => Ok(open(path, flags, Mode::empty())?),
        Err(e) => Err(e.into()),
    }
}

/// A directory handle only to look entries up in (`O_PATH`): no read
/// permission needed, nothing read, no atime touched.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags, open};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(open(path, flags, Mode::empty())?)
}

/// The names in the directory `fd` (without `.` and `..`), unsorted.
pub fn read_dir_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(fd)? {
        let e = e?;
        let n = e.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            names.push(n.to_owned());
        }
    }
    Ok(names)
}

/// Opens the regular file `name` of the directory `dir` for reading as
/// [`open_noatime`] does. `O_NONBLOCK`, so that a fifo put in the file's
/// place since the walk does not block the open (the caller checks that
/// it is still the same file; reads of a regular file ignore the flag).
pub fn open_noatime_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags, openat};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    match openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::PERM) => Ok(File::from(openat(dir, name, flags, Mode::empty())?)),
        Err(e) => Err(e.into()),
    }
}

/// Opens a file for reading without updating its atime when allowed, and
/// without following a symlink in the last component. Non-blocking, as
/// [`open_noatime_at`]: a path replaced by a fifo since it was looked at
/// gives an error on read instead of an open that never returns.
pub fn open_noatime(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags, open};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    match open(path, flags | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::PERM) => Ok(File::from(open(path, flags, Mode::empty())?)),
        Err(e) => Err(e.into()),
    }
}

/// The names in a directory (without `.` and `..`), read without updating
/// its atime when allowed, so that a snapshot leaves its source untouched.
/// Each name comes with the type the directory records (`Unknown` on
/// filesystems that do not record it).
pub fn read_dir_names(path: &Path) -> io::Result<Vec<(std::ffi::OsString, rustix::fs::FileType)>> {
    use rustix::fs::{Dir, Mode, OFlags, open};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = match open(path, flags | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::PERM) => open(path, flags, Mode::empty())?,
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    for e in Dir::read_from(&fd)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((OsStr::from_bytes(n).to_os_string(), e.file_type()));
        }
    }
    Ok(names)
}

/// The data regions `(offset, len)` of a file of `size` bytes, skipping holes.
pub fn data_regions(f: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(f, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) if pos == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = match seek(f, SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(_) => size,
        };
        out.push((start, end - start));
        pos = end;
    }
    Ok(out)
}

pub fn user_name(uid: u32) -> Option<Vec<u8>> {
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut res) };
    if rc != 0 || res.is_null() {
        return None;
    }
    Some(
        unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }
            .to_bytes()
            .to_vec(),
    )
}

pub fn group_name(gid: u32) -> Option<Vec<u8>> {
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut res = std::ptr::null_mut();
    let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut res) };
    if rc != 0 || res.is_null() {
        return None;
    }
    Some(
        unsafe { std::ffi::CStr::from_ptr(grp.gr_name) }
            .to_bytes()
            .to_vec(),
    )
}

pub fn uid_by_name(name: &[u8]) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res = std::ptr::null_mut();
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut res) };
    (rc == 0 && !res.is_null()).then_some(pwd.pw_uid)
}

pub fn gid_by_name(name: &[u8]) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut res = std::ptr::null_mut();
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut res) };
    (rc == 0 && !res.is_null()).then_some(grp.gr_gid)
}

pub fn hostname() -> String {
    let u = rustix::system::uname();
    String::from_utf8_lossy(u.nodename().to_bytes()).into_owned()
}

pub fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut f, &mut id);
    }
    id
}

pub fn os(p: &[u8]) -> &OsStr {
    OsStr::from_bytes(p)
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Opens (creating) `path` and takes an flock on it without waiting:
/// `Ok(None)` when another open file holds a conflicting lock. The kernel
/// drops the lock when the returned file is closed or its process dies.
pub fn try_flock(path: &Path, exclusive: bool) -> crate::Result<Option<File>> {
    use crate::error::IoContext;
    use rustix::fs::FlockOperation as Op;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .at(path)?;
    let op = if exclusive {
        Op::NonBlockingLockExclusive
    } else {
        Op::NonBlockingLockShared
    };
    match rustix::fs::flock(&f, op) {
        Ok(()) => Ok(Some(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(crate::Error::io(path, e.into())),
    }
}

/// A directory of our own under the temporary directory (mode 0700),
/// removed with everything in it when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn private_temp_dir(prefix: &str) -> crate::error::Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    let id = random_id();
    let p = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        crate::repo::pack::hex(&id[..6])
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&p)
        .map_err(|e| crate::error::Error::io(&p, e))?;
    Ok(TempDir(p))
}

/// A buffer of `n` bytes' capacity (length 0) whose pages are already
/// mapped and writable, so that filling it takes no page faults: one
/// `madvise(MADV_POPULATE_WRITE)` (Linux 5.14) maps them in a batch, where
/// touching them one by one costs a fault each — about a fifth of a mount's
/// CPU when every read lands in a new block (perf). On older kernels the pages
/// are written instead.
pub fn populated_buffer(n: usize) -> Vec<u8> {
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    let mut v: Vec<u8> = Vec::with_capacity(n);
    if n == 0 {
        return v;
    }
    if !UNSUPPORTED.load(Ordering::Relaxed) {
        let page = rustix::param::page_size();
        let start = v.as_mut_ptr() as usize;
        // Whole pages inside the allocation only: the partial pages at
        // its ends are shared with the allocator's bookkeeping.
        let lo = start.next_multiple_of(page);
        let hi = (start + n) / page * page;
        if hi <= lo {
            return v;
        }
        // SAFETY: [lo, hi) lies inside `v`'s allocation, which we own (the
        // pointer is derived from `v`'s); populating maps its pages in and
        // changes no byte of it.
        let r = unsafe {
            rustix::mm::madvise(
                v.as_mut_ptr().add(lo - start).cast(),
                hi - lo,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
        match r {
            Ok(()) => return v,
            // Not this kernel (before 5.14), or not allowed (a seccomp
            // filter): write the pages from now on. Anything else (ENOMEM
            // under a cgroup's limit, say) is this call's: write them now.
            Err(e)
                if [
                    rustix::io::Errno::INVAL,
                    rustix::io::Errno::NOSYS,
                    rustix::io::Errno::PERM,
                ]
                .contains(&e) =>
            {
                UNSUPPORTED.store(true, Ordering::Relaxed)
            }
            Err(_) => {}
        }
    }
    // Written, not calloc'ed (`vec![0; n]` maps pages that fault on first
    // use): the point is the faults.
    #[allow(clippy::slow_vector_initialization)]
    v.resize(n, 0);
    v.clear();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `v`'s whole-page interior that are mapped (mincore).
    fn resident_pages(v: &[u8], n: usize) -> (usize, usize) {
        let page = rustix::param::page_size();
        let lo = (v.as_ptr() as usize).next_multiple_of(page);
        let hi = (v.as_ptr() as usize + n) / page * page;
        let pages = (hi - lo) / page;
        let mut map = vec![0u8; pages];
        // SAFETY: [lo, hi) lies inside `v`'s allocation; `map` has a byte
        // for each of its pages.
        let r = unsafe { libc::mincore(lo as *mut libc::c_void, hi - lo, map.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", io::Error::last_os_error());
        (map.iter().filter(|&&b| b & 1 == 1).count(), pages)
    }

    #[test]
    fn a_populated_buffer_is_mapped_before_it_is_written() {
        // Above glibc's largest mmap threshold (32 MiB): both buffers are
        // fresh mappings, not memory the allocator touched before (unless
        // MALLOC_PERTURB_ or MALLOC_MMAP_MAX_=0 is set, or swap takes pages
        // of the first away before mincore looks).
        let n = 64 << 20;
        let v = populated_buffer(n);
        assert_eq!(v.len(), 0);
        assert!(v.capacity() >= n);
        let (resident, pages) = resident_pages(&v, n);
        assert!(pages >= 1000);
        assert_eq!(resident, pages, "every whole page of the buffer is mapped");
        // Whereas a buffer only reserved is not: the check above can fail.
        let w: Vec<u8> = Vec::with_capacity(n);
        let (resident, pages) = resident_pages(&w, n);
        assert!(
            resident < pages / 2,
            "{resident} of {pages} pages mapped unasked"
        );
        let mut v = v;
        v.extend_from_slice(&[7; 100]);
        assert_eq!(v[99], 7);
        assert!(populated_buffer(0).capacity() == 0);
        assert!(populated_buffer(10).capacity() >= 10);
    }
}
