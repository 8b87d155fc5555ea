//! Small wrappers over the system calls hbb needs: extended attributes,
//! owner names, opening without touching atime, sparse-file maps.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::archive::Xattr;

/// All extended attributes of `path` (not following a symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let mut names = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need: usize =
                    rustix::fs::llistxattr(path, &mut [0u8; 0][..]).map_err(io::Error::from)?;
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
            match rustix::fs::lgetxattr(path, cname.as_c_str(), &mut val[..]) {
                Ok(k) => break Some(k),
                Err(rustix::io::Errno::RANGE) => {
                    let need: usize =
                        rustix::fs::lgetxattr(path, cname.as_c_str(), &mut [0u8; 0][..])
                            .map_err(io::Error::from)?;
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

/// Opens a file for reading without updating its atime when allowed, and
/// without following a symlink in the last component.
pub fn open_noatime(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags, open};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
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
