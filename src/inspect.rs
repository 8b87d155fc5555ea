//! Looking inside an archive without mounting it: `info`, `ls`, `cat`.

use std::io::Write;

use serde::Serialize;

use crate::archive::*;
use crate::error::{Error, Result};

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn rfc3339(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[derive(Serialize)]
pub struct Info<'a> {
    pub archive: String,
    pub format_version: String,
    pub archive_id: String,
    pub archive_bytes: u64,
    pub index_bytes: u64,
    pub block_size: u64,
    pub mode: &'static str,
    pub mode_reason: &'a str,
    pub source: String,
    pub host: &'a str,
    pub tool: &'a str,
    pub started: String,
    pub finished: String,
    pub level: i32,
    pub threads: u32,
    pub excludes: &'a [String],
    pub one_file_system: bool,
    pub complete: bool,
    pub stats: &'a Stats,
    pub ratio: f64,
    pub warnings: &'a [String],
}

pub fn info(a: &Archive) -> Info<'_> {
    let m = a.meta();
    Info {
        archive: a.path.display().to_string(),
        format_version: format!("{}.{}", a.footer.version_major, a.footer.version_minor),
        archive_id: hex(&a.header.archive_id),
        archive_bytes: a.file_len,
        index_bytes: a.footer.index_clen,
        block_size: a.block_size(),
        mode: match m.mode {
            Mode::File => "file",
            Mode::Volume => "volume",
        },
        mode_reason: &m.mode_reason,
        source: String::from_utf8_lossy(&m.source).into_owned(),
        host: &m.host,
        tool: &m.tool,
        started: rfc3339(m.started_ns),
        finished: rfc3339(m.finished_ns),
        level: m.level,
        threads: m.threads,
        excludes: &m.excludes,
        one_file_system: m.one_file_system,
        complete: m.warnings.is_empty(),
        stats: &m.stats,
        ratio: if a.file_len > 0 {
            m.stats.bytes_read as f64 / a.file_len as f64
        } else {
            0.0
        },
        warnings: &m.warnings,
    }
}

pub fn print_info(i: &Info, out: &mut impl Write) -> std::io::Result<()> {
    let s = i.stats;
    writeln!(out, "archive:      {}", i.archive)?;
    writeln!(
        out,
        "format:       hbb {} (id {})",
        i.format_version, i.archive_id
    )?;
    writeln!(out, "source:       {} on {}", i.source, i.host)?;
    writeln!(out, "mode:         {} ({})", i.mode, i.mode_reason)?;
    writeln!(
        out,
        "created:      {} .. {} by {}",
        i.started, i.finished, i.tool
    )?;
    writeln!(
        out,
        "options:      block size {}, level {}, {} threads",
        i.block_size, i.level, i.threads
    )?;
    writeln!(
        out,
        "entries:      {} files, {} dirs, {} symlinks, {} special, {} hard links",
        s.files, s.dirs, s.symlinks, s.specials, s.hardlinks
    )?;
    writeln!(
        out,
        "data:         {} bytes read, {} stored in frames, archive {} bytes, ratio {:.2}",
        s.bytes_read, s.bytes_stored, i.archive_bytes, i.ratio
    )?;
    writeln!(
        out,
        "blocks:       {} ({} zero, {} duplicate), {} duplicate files",
        s.blocks, s.zero_blocks, s.dup_blocks, s.dup_files
    )?;
    writeln!(
        out,
        "complete:     {}",
        if i.complete { "yes" } else { "no" }
    )?;
    for w in i.warnings {
        writeln!(out, "warning:      {w}")?;
    }
    Ok(())
}

pub fn resolve(a: &Archive, path: &[u8]) -> Result<u32> {
    a.resolve(path).ok_or_else(|| {
        Error::Other(format!(
            "{}: {} not found in the archive",
            a.path.display(),
            String::from_utf8_lossy(path)
        ))
    })
}

fn mode_string(ino: &Inode) -> String {
    let t = match ino.body {
        Body::Dir { .. } => 'd',
        Body::File { .. } => '-',
        Body::Symlink { .. } => 'l',
        Body::BlockDev { .. } => 'b',
        Body::CharDev { .. } => 'c',
        Body::Fifo => 'p',
        Body::Socket => 's',
    };
    let p = ino.perm;
    let mut s = String::from(t);
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (p >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (p & special != 0, x) {
            (true, true) => lower,
            (true, false) => upper,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

pub fn size_of(ino: &Inode) -> u64 {
    match &ino.body {
        Body::File { size, .. } => *size,
        Body::Symlink { target } => target.len() as u64,
        _ => 0,
    }
}

fn name_of(m: &Meta, id: u32, users: bool) -> String {
    let t = if users { &m.users } else { &m.groups };
    t.iter()
        .find(|x| x.id == id)
        .map(|x| String::from_utf8_lossy(&x.name).into_owned())
        .unwrap_or_else(|| id.to_string())
}

pub fn ls(
    a: &Archive,
    path: &[u8],
    long: bool,
    recursive: bool,
    out: &mut impl Write,
) -> Result<()> {
    let ino = resolve(a, path)?;
    let line = |out: &mut dyn Write, ino: u32, name: &[u8]| -> std::io::Result<()> {
        let i = a.inode(ino);
        if long {
            let m = a.meta();
            write!(
                out,
                "{} {:>3} {:<8} {:<8} {:>12} {} ",
                mode_string(i),
                i.nlink,
                name_of(m, i.uid, true),
                name_of(m, i.gid, false),
                size_of(i),
                rfc3339(i.mtime.sec.saturating_mul(1_000_000_000)),
            )?;
        }
        out.write_all(name)?;
        if long && let Body::Symlink { target } = &i.body {
            out.write_all(b" -> ")?;
            out.write_all(target)?;
        }
        out.write_all(b"\n")
    };
    let io = |e: std::io::Error| Error::io("<stdout>", e);
    if !matches!(a.inode(ino).body, Body::Dir { .. }) {
        return line(out, ino, path).map_err(io);
    }
    // Depth first, each directory followed by its contents (as find prints).
    let mut stack: Vec<(u32, usize, Vec<u8>)> = vec![(ino, 0, Vec::new())];
    while let Some((dir, k, prefix)) = stack.pop() {
        let Some(d) = a.children(dir).get(k) else {
            continue;
        };
        stack.push((dir, k + 1, prefix.clone()));
        let mut name = prefix;
        name.extend_from_slice(&d.name);
        line(out, d.inode, &name).map_err(io)?;
        if recursive && matches!(a.inode(d.inode).body, Body::Dir { .. }) {
            name.push(b'/');
            stack.push((d.inode, 0, name));
        }
    }
    Ok(())
}

/// Writes a regular file's bytes to `out`; holes come out as zeros.
pub fn cat(a: &Archive, path: &[u8], out: &mut impl Write) -> Result<()> {
    let ino = resolve(a, path)?;
    let Body::File { size, extents } = &a.inode(ino).body else {
        return Err(Error::Other(format!(
            "{}: {} is not a regular file",
            a.path.display(),
            String::from_utf8_lossy(path)
        )));
    };
    let io = |e: std::io::Error| Error::io("<stdout>", e);
    let bs = a.block_size();
    let mut dec = new_decompressor();
    let mut cur: Option<(u64, Vec<u8>)> = None;
    let zeros = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    let write_zeros = |out: &mut dyn Write, mut n: u64| -> std::io::Result<()> {
        while n > 0 {
            let k = n.min(zeros.len() as u64) as usize;
            out.write_all(&zeros[..k])?;
            n -= k as u64;
        }
        Ok(())
    };
    for e in extents {
        write_zeros(out, e.offset - pos).map_err(io)?;
        let mut s = e.stream;
        let end = e.stream + e.len;
        while s < end {
            let b = s / bs;
            if cur.as_ref().map(|c| c.0) != Some(b) {
                cur = Some((b, a.read_block(b, &mut dec)?));
            }
            let data = &cur.as_ref().unwrap().1;
            let lo = (s - b * bs) as usize;
            let hi = ((end - b * bs).min(bs)) as usize;
            let avail = data.get(lo..hi.min(data.len())).unwrap_or(&[]);
            out.write_all(avail).map_err(io)?;
            write_zeros(out, (hi - lo - avail.len()) as u64).map_err(io)?;
            s = b * bs + hi as u64;
        }
        pos = e.offset + e.len;
    }
    write_zeros(out, size - pos).map_err(io)?;
    out.flush().map_err(io)
}
