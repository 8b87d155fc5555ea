//! Volume mode: a block device or an image file read as one byte range,
//! with large sequential reads; and the mount table lookups the auto rule
//! and the read-write guard need.

use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::archive::Extent;
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::snapshot::pipeline::BlockSink;

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    /// The root of the mount within its filesystem ("/" for a whole one).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// The filesystem (its superblock) is read-only.
    pub read_only: bool,
    pub source: String,
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mounts() -> Vec<Mount> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|&x| x == "-") else {
            continue;
        };
        if f.len() < 6 || sep + 2 >= f.len() {
            continue;
        }
        let Some((ma, mi)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (ma.parse(), mi.parse()) else {
            continue;
        };
        // The filesystem is read-only when its superblock is: a read-only
        // mount (a bind, or a sandbox's ProtectSystem) of a filesystem that
        // is writable elsewhere can still change under us.
        let ro = f
            .get(sep + 3)
            .is_some_and(|s| s.split(',').any(|o| o == "ro"));
        out.push(Mount {
            major,
            minor,
            root: PathBuf::from(unescape(f[3])),
            mount_point: PathBuf::from(unescape(f[4])),
            read_only: ro,
            source: unescape(f[sep + 2]),
        });
    }
    out
}

/// If `dir` is the root of a filesystem on a block device: the device and
/// whether that mount is read-only.
pub fn device_of_mountpoint(dir: &Path) -> Option<(PathBuf, bool)> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let m = mounts().into_iter().rev().find(|m| m.mount_point == dir)?;
    if m.root != Path::new("/") {
        return None;
    }
    let dev = device_path(&m)?;
    Some((dev, m.read_only))
}

fn device_path(m: &Mount) -> Option<PathBuf> {
    let want = libc::makedev(m.major, m.minor);
    let is_it = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|md| md.file_type().is_block_device() && md.rdev() == want)
    };
    let src = PathBuf::from(&m.source);
    if is_it(&src) {
        return Some(src);
    }
    let alt = PathBuf::from(format!("/dev/block/{}:{}", m.major, m.minor));
    is_it(&alt).then_some(alt)
}

/// A mount point where block device `rdev` is mounted read-write, if any.
pub fn mounted_rw(rdev: u64) -> Option<PathBuf> {
    let (ma, mi) = (libc::major(rdev), libc::minor(rdev));
    mounts()
        .into_iter()
        .find(|m| m.major == ma && m.minor == mi && !m.read_only)
        .map(|m| m.mount_point)
}

/// Reads the whole volume into the stream. Returns its extents and size.
pub fn read_volume(
    path: &Path,
    sink: &mut BlockSink,
    progress: &Progress,
) -> Result<(Vec<Extent>, u64)> {
    let f = crate::sys::open_noatime(path).at(path)?;
    let md = f.metadata().at(path)?;
    let size = if md.file_type().is_block_device() {
        rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0)).at(path)?
    } else {
        md.len()
    };
    // An image file's holes (a sparse image: mostly free space, say) are
    // zeros nobody needs to read; a block device has none.
    let regions = if md.file_type().is_file() {
        crate::sys::data_regions(&f, size).at(path)?
    } else {
        vec![(0, size)]
    };
    let mut off = 0u64;
    for (start, len) in regions.into_iter().chain([(size, 0)]) {
        if start > off {
            sink.zeros(start - off)?;
            progress.read(start - off);
            off = start;
        }
        while off < start + len {
            let n = sink
                .read_at(f.as_fd(), off, start + len - off)
                .map_err(|e| {
                    Error::Other(format!("{}: read at offset {off}: {e}", path.display()))
                })?;
            if n == 0 {
                return Err(Error::Other(format!(
                    "{}: volume ended at offset {off}, expected {size} bytes (it shrank while read)",
                    path.display()
                )));
            }
            off += n as u64;
            progress.read(n as u64);
        }
    }
    Ok((
        vec![Extent {
            offset: 0,
            stream: 0,
            len: size,
        }],
        size,
    ))
}

pub fn volume_size(path: &Path) -> Result<u64> {
    let f = std::fs::File::open(path).at(path)?;
    let md = f.metadata().at(path)?;
    if md.file_type().is_block_device() {
        rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0)).at(path)
    } else {
        Ok(md.len())
    }
}
