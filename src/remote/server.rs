//! `hbb serve`: the far end of a remote repository, run by ssh. Reads
//! requests on stdin, answers on stdout (logs go to stderr, which ssh
//! carries back to the client).
//!
//! Threads: one reads requests, one writes replies, a pool compresses the
//! blocks a client sends raw (`--compress-on agent`); the main loop does
//! the rest in request order. A client that sends faster than the pool
//! compresses is held back: the main loop stops taking requests, the pipe
//! fills, and ssh's flow control reaches the client.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::HashMap;

use crossbeam_channel::{Receiver, Sender, bounded, select, unbounded};

use super::proto::{self, Reply, Request};
use crate::archive::format::ExternalSource;
use crate::archive::reader::{Archive, FrameStore};
use crate::archive::writer::FrameLoc;
use crate::error::{Error, IoContext, Result};
use crate::repo::catalog::{Catalog, Run, SnapshotRow};
use crate::repo::pack::{self, PackStore, PackWriter};
use crate::repo::{Repo, WriteLock, valid_snapshot_name};

pub struct Options {
    /// If not empty, the only repositories a client may open (for a key's
    /// `command=` in authorized_keys).
    pub restrict: Vec<PathBuf>,
}

/// A block for the pool: (request id, hash, length, level, raw, bytes):
/// a raw block to check and compress, or a frame to check.
type RawBlock = (u32, [u8; 32], u32, i32, bool, Vec<u8>);

/// With no request for this long (a client sends Ping every 30 s), the
/// client is taken for gone: the server exits and its lock goes with it,
/// even where sshd does not notice a cut link (no ClientAliveInterval).
const IDLE: Duration = Duration::from_secs(300);

/// The largest block a remote repository takes (what its pool holds per
/// thread, compressing or checking it).
pub const MAX_REMOTE_BLOCK: u32 = 64 << 20;

/// `IDLE`, or for tests `HBB_TEST_SERVE_IDLE` seconds.
fn idle() -> Duration {
    std::env::var("HBB_TEST_SERVE_IDLE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(IDLE, Duration::from_secs)
}

/// A block compressed by the pool: (request id, hash, length, frame or error).
type Compressed = (u32, [u8; 32], u32, std::result::Result<Vec<u8>, String>);

struct State {
    restrict: Vec<PathBuf>,
    repo: Option<Repo>,
    lock: Option<WriteLock>,
    cat: Option<Catalog>,
    packs: Option<PackWriter>,
    store: Option<PackStore>,
    new_frames: Vec<([u8; 32], u32, FrameLoc)>,
    outstanding: usize,
}

pub fn serve(o: &Options) -> Result<()> {
    let mut input = BufReader::with_capacity(1 << 20, std::io::stdin());
    let mut output = BufWriter::with_capacity(1 << 20, std::io::stdout());
    // Tests pretend to be an older far end with HBB_TEST_PROTOCOL.
    let ours = std::env::var("HBB_TEST_PROTOCOL")
        .ok()
        .and_then(|v| v.parse::<u8>().ok())
        .unwrap_or(proto::VERSION);
    {
        let mut g = [0u8; 8];
        g[..7].copy_from_slice(&proto::MAGIC);
        g[7] = ours;
        output
            .write_all(&g)
            .and_then(|_| output.flush())
            .at("<stdout>")?;
    }
    let theirs =
        proto::read_greeting(&mut input).map_err(|e| Error::Other(format!("serve: {e}")))?;
    if theirs < 1 {
        let m = format!(
            "this hbb serve speaks protocol version {ours}; the client's {theirs} is too old: upgrade hbb on the client"
        );
        let _ = proto::write_message(&mut output, 0, &Reply::Error(m.clone()), &[]);
        let _ = output.flush();
        return Err(Error::Other(m));
    }

    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let (req_tx, req_rx) = bounded::<(u32, Request, Vec<u8>)>(16);
    // Bounded: a client that does not read its replies stops being read
    // (the pipe and ssh's window fill) instead of filling this memory.
    let (resp_tx, resp_rx) = bounded::<(u32, Reply, Vec<u8>)>(32);
    let (work_tx, work_rx) = bounded::<RawBlock>(2 * threads);
    let (done_tx, done_rx) = unbounded::<Compressed>();

    std::thread::Builder::new()
        .name("hbb-serve-read".into())
        .spawn(move || {
            loop {
                match proto::read_message::<Request>(&mut input) {
                    Ok(Some(m)) => {
                        if req_tx.send(m).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        log::error!("serve: reading a request: {e}");
                        break;
                    }
                }
            }
        })
        .expect("spawn thread");
    let writer = std::thread::Builder::new()
        .name("hbb-serve-write".into())
        .spawn(move || {
            for (id, reply, payload) in &resp_rx {
                if proto::write_message(&mut output, id, &reply, &payload).is_err() {
                    return;
                }
                if resp_rx.is_empty() && output.flush().is_err() {
                    return;
                }
            }
            let _ = output.flush();
        })
        .expect("spawn thread");
    for t in 0..threads {
        let work_rx = work_rx.clone();
        let done_tx = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("hbb-serve-zstd-{t}"))
            .spawn(move || compress_worker(work_rx, done_tx))
            .expect("spawn thread");
    }
    drop(done_tx);

    let mut st = State {
        restrict: o.restrict.clone(),
        repo: None,
        lock: None,
        cat: None,
        packs: None,
        store: None,
        new_frames: Vec::new(),
        outstanding: 0,
    };
    let limit = 2 * threads + 2;
    let idle = idle();
    loop {
        if st.outstanding >= limit {
            let Ok(d) = done_rx.recv() else { break };
            st.compressed(d, &resp_tx);
            continue;
        }
        select! {
            recv(req_rx) -> m => {
                let Ok((id, req, payload)) = m else { break };
                if matches!(req, Request::Seal | Request::Commit { .. }) {
                    // Every frame sent before is stored first.
                    while st.outstanding > 0 {
                        let Ok(d) = done_rx.recv() else { break };
                        st.compressed(d, &resp_tx);
                    }
                }
                // Every block is checked against its hash before it is
                // stored (a frame is decompressed for that), on the pool's
                // threads: what one client stores, others deduplicate against.
                if let Request::Store { hash, len, raw, level } = req {
                    let refuse = if st.packs.is_none() {
                        Some("store without the lock".to_string())
                    } else if len > MAX_REMOTE_BLOCK || payload.len() > MAX_REMOTE_BLOCK as usize + (1 << 20) {
                        Some(format!(
                            "a block of {len} bytes ({} sent): a remote repository takes blocks of at most {} MiB",
                            payload.len(),
                            MAX_REMOTE_BLOCK >> 20
                        ))
                    } else {
                        None
                    };
                    if let Some(m) = refuse {
                        if resp_tx.send((id, Reply::Error(m), Vec::new())).is_err() {
                            break;
                        }
                        continue;
                    }
                    st.outstanding += 1;
                    if work_tx.send((id, hash, len, level, raw, payload)).is_err() {
                        break;
                    }
                    continue;
                }
                let (reply, data) = match st.handle(req, payload) {
                    Ok(r) => r,
                    Err(e) => (Reply::Error(e.to_string()), Vec::new()),
                };
                if resp_tx.send((id, reply, data)).is_err() {
                    break;
                }
            }
            recv(done_rx) -> d => {
                let Ok(d) = d else { break };
                st.compressed(d, &resp_tx);
            }
            default(idle) => {
                log::warn!(
                    "serve: no request for {} s: the client is gone; closing (its partial snapshot is not named)",
                    idle.as_secs()
                );
                break;
            }
        }
    }
    // The client went away (or finished): a pack still open is not
    // sealed; its temporary file goes with the PackWriter. The locks go
    // now, before waiting for the writer, which a client that stopped
    // reading can hold up until sshd gives up.
    drop(st);
    drop(work_tx);
    drop(resp_tx);
    let _ = writer.join();
    Ok(())
}

fn compress_worker(work: Receiver<RawBlock>, done: Sender<Compressed>) {
    let mut comp: Option<(i32, zstd::bulk::Compressor<'static>)> = None;
    let mut dec = crate::archive::reader::new_decompressor();
    let mut plain = Vec::new();
    for (id, hash, len, level, is_raw, data) in work {
        let r = (|| {
            let damaged = || format!("a block of {len} bytes arrived damaged (its hash differs)");
            if !is_raw {
                // A frame: it must decompress to the block its hash names.
                plain.clear();
                plain.reserve(len as usize);
                match dec.decompress_to_buffer(&data, &mut plain) {
                    Ok(n) if n == len as usize && *blake3::hash(&plain).as_bytes() == hash => {
                        return Ok(data);
                    }
                    _ => return Err(damaged()),
                }
            }
            let raw = data;
            if raw.len() != len as usize || *blake3::hash(&raw).as_bytes() != hash {
                return Err(damaged());
            }
            if comp.as_ref().is_none_or(|(l, _)| *l != level) {
                let mut c = zstd::bulk::Compressor::new(level)
                    .map_err(|e| format!("zstd level {level}: {e}"))?;
                let _ = c.include_checksum(false);
                let _ = c.include_contentsize(true);
                comp = Some((level, c));
            }
            comp.as_mut()
                .unwrap()
                .1
                .compress(&raw)
                .map_err(|e| format!("compressing a block: {e}"))
        })();
        if done.send((id, hash, len, r)).is_err() {
            return;
        }
    }
}

/// `path` as the client asked for it, resolved; refused if outside the
/// repositories the server is restricted to.
pub fn allowed_path(requested: &Path, restrict: &[PathBuf], create: bool) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let b = requested.as_os_str().as_bytes();
    let home = || {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
    };
    let p = if b == b"~" {
        home()
    } else if let Some(rest) = b.strip_prefix(b"~/") {
        home().join(crate::sys::os(rest))
    } else {
        requested.to_path_buf()
    };
    let p = std::path::absolute(&p).at(&p)?;
    if restrict.is_empty() {
        return Ok(p);
    }
    // Symbolic links and `..` resolved: the real directory is compared.
    let real = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        if !create {
            return None;
        }
        let name = p.file_name()?;
        Some(p.parent()?.canonicalize().ok()?.join(name))
    };
    let asked = real(&p);
    for r in restrict {
        let r = std::path::absolute(r).unwrap_or_else(|_| r.clone());
        let rr = r
            .canonicalize()
            .ok()
            .or_else(|| Some(r.parent()?.canonicalize().ok()?.join(r.file_name()?)));
        if let Some(a) = &asked
            && Some(a) == rr.as_ref()
        {
            return Ok(a.clone());
        }
    }
    Err(Error::Other(format!(
        "{}: refused: this server is restricted to the repository {}",
        requested.display(),
        restrict
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn json<T: serde::Serialize>(v: &T) -> Result<(Reply, Vec<u8>)> {
    serde_json::to_string(v)
        .map(|j| (Reply::Json(j), Vec::new()))
        .map_err(|e| Error::Other(format!("encoding an answer: {e}")))
}

impl State {
    fn repo(&self) -> Result<&Repo> {
        self.repo
            .as_ref()
            .ok_or_else(|| Error::Other("no repository opened yet".into()))
    }

    fn pack_store(&mut self) -> Result<&PackStore> {
        if self.store.is_none() {
            let repo = self.repo()?;
            let readers = repo.readers_lock()?;
            self.store = Some(PackStore::new(&repo.root, Some(readers)));
        }
        Ok(self.store.as_ref().unwrap())
    }

    fn catalog(&mut self) -> Result<&mut Catalog> {
        if self.cat.is_none() {
            self.cat = Some(Catalog::open(self.repo()?)?);
        }
        Ok(self.cat.as_mut().unwrap())
    }

    fn locked(&self) -> Result<()> {
        if self.lock.is_none() {
            return Err(Error::Other(
                "this request needs the repository's lock (send Lock first)".into(),
            ));
        }
        Ok(())
    }

    fn compressed(&mut self, (id, hash, len, r): Compressed, resp: &Sender<(u32, Reply, Vec<u8>)>) {
        self.outstanding -= 1;
        let reply = match r {
            Ok(frame) => match self.store_frame(hash, len, &frame) {
                Ok(r) => r,
                Err(e) => Reply::Error(e.to_string()),
            },
            Err(m) => Reply::Error(m),
        };
        let _ = resp.send((id, reply, Vec::new()));
    }

    fn store_frame(&mut self, hash: [u8; 32], len: u32, frame: &[u8]) -> Result<Reply> {
        let packs = self
            .packs
            .as_mut()
            .ok_or_else(|| Error::Other("store without the lock".into()))?;
        let (pack, offset) = packs.add(hash, len, frame)?;
        let clen = frame.len() as u32;
        self.new_frames
            .push((hash, len, FrameLoc::Pack { pack, offset, clen }));
        Ok(Reply::Stored { pack, offset, clen })
    }

    fn handle(&mut self, req: Request, payload: Vec<u8>) -> Result<(Reply, Vec<u8>)> {
        let done = Ok((Reply::Done, Vec::new()));
        match req {
            Request::Open { path, create } => {
                if self.repo.is_some() {
                    return Err(Error::Other("a repository is open already".into()));
                }
                let asked = PathBuf::from(crate::sys::os(&path));
                let p = allowed_path(&asked, &self.restrict, create)?;
                if !create && p.exists() && !p.is_dir() {
                    // (Repo::open would say "hbb-repo: Not a directory".)
                    return Err(Error::Other(format!(
                        "{}: not an hbb repository (a file: over ssh, an archive is a \
                         snapshot in a repository, REPO::NAME)",
                        p.display()
                    )));
                }
                let repo = if create {
                    Repo::init(&p)?
                } else {
                    Repo::open(&p)?
                };
                let reply = Reply::Opened {
                    repo_id: repo.id,
                    root: repo.root.display().to_string(),
                };
                self.repo = Some(repo);
                Ok((reply, Vec::new()))
            }
            Request::Lock { what, wait_ms } => {
                if self.lock.is_some() {
                    return done;
                }
                // It is shown to other writers: one line of plain text.
                let what: String = what
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .take(200)
                    .collect();
                let repo = self.repo()?;
                let lock = repo.lock(&what, Duration::from_millis(wait_ms))?;
                repo.clean_tmp();
                let cat = crate::repo::ops::prepare_write(repo, &lock)?;
                self.packs = Some(PackWriter::new(&repo.root));
                self.cat = Some(cat);
                self.lock = Some(lock);
                done
            }
            Request::List => {
                let rows = self.catalog()?.snapshots()?;
                json(&rows)
            }
            Request::Info => json(&crate::repo::info(&self.repo()?.root)?),
            Request::Known => {
                let known = self.catalog()?.known_blocks()?;
                let mut p = Vec::with_capacity(known.len() * proto::KNOWN_ENTRY);
                for (h, at) in &known {
                    if let FrameLoc::Pack { pack, offset, clen } = at {
                        p.extend_from_slice(h);
                        p.extend_from_slice(pack);
                        p.extend_from_slice(&offset.to_le_bytes());
                        p.extend_from_slice(&clen.to_le_bytes());
                    }
                }
                let count = (p.len() / proto::KNOWN_ENTRY) as u64;
                Ok((Reply::Known { count }, p))
            }
            Request::ReadSnapshot { name } => {
                if !valid_snapshot_name(&name) {
                    return Err(Error::Other(format!("{name:?}: not a valid snapshot name")));
                }
                self.pack_store()?;
                let repo = self.repo()?;
                let p = repo.snapshot_path(&name);
                match std::fs::read(&p) {
                    Ok(b) => Ok((Reply::Data, b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Other(
                        format!("no snapshot named {name:?} (see `hbb list`)"),
                    )),
                    Err(e) => Err(Error::io(&p, e)),
                }
            }
            Request::ReadFrame { pack, offset, clen } => {
                if clen > proto::MAX_MESSAGE / 2 {
                    return Err(Error::Other(format!(
                        "a frame of {clen} bytes is too large"
                    )));
                }
                let src = ExternalSource {
                    archive_id: pack,
                    name: pack::rel_path(&pack).into_bytes(),
                };
                let mut buf = vec![0u8; clen as usize];
                let store = self.pack_store()?;
                store.read_frame(&src, offset, &mut buf).map_err(|e| {
                    Error::Other(format!(
                        "{}, offset {offset}, {clen} bytes: {e}",
                        pack::rel_path(&pack)
                    ))
                })?;
                Ok((Reply::Data, buf))
            }
            Request::Store { .. } => Err(Error::Other(
                "internal error: a store in the main loop".into(),
            )),
            Request::Ping => done,
            Request::Seal => {
                self.locked()?;
                if let Some(p) = &mut self.packs {
                    p.finish()?;
                }
                done
            }
            Request::Commit { name } => {
                self.locked()?;
                if let Some(p) = &mut self.packs {
                    p.finish()?;
                }
                let row = self.commit(&name, payload)?;
                json(&row)
            }
            Request::AddRun { run_json } => {
                let run: Run = serde_json::from_str(&run_json)
                    .map_err(|e| Error::Other(format!("a run that does not decode: {e}")))?;
                self.catalog()?.add_run(&run)?;
                done
            }
            Request::Prune { options_json } => {
                if self.lock.is_some() {
                    return Err(Error::Other(
                        "prune on a connection that holds the lock".into(),
                    ));
                }
                let o: crate::repo::prune::Options = serde_json::from_str(&options_json)
                    .map_err(|e| Error::Other(format!("prune options that do not decode: {e}")))?;
                // Prune opens the catalog itself; ours would be stale after it.
                self.cat = None;
                let root = self.repo()?.root.clone();
                json(&crate::repo::prune::prune(&root, &o)?)
            }
        }
    }

    /// Checks a snapshot file sent by the client and gives it its name.
    fn commit(&mut self, name: &str, bytes: Vec<u8>) -> Result<SnapshotRow> {
        let repo = self.repo()?;
        if !valid_snapshot_name(name) {
            return Err(Error::Other(format!("{name:?}: not a valid snapshot name")));
        }
        let dest = repo.snapshot_path(name);
        if dest.exists() {
            return Err(Error::Other(format!(
                "a snapshot named {name:?} exists already"
            )));
        }
        let a = Archive::from_bytes(bytes.clone(), &dest)?;
        let si = a
            .ext
            .snapshot
            .as_ref()
            .ok_or_else(|| Error::corrupt(&dest, "not a repository snapshot"))?;
        if si.repo_id != repo.id || si.name != name {
            return Err(Error::corrupt(
                &dest,
                "the snapshot names another repository or another name",
            ));
        }
        for (i, b) in a.index.blocks.iter().enumerate() {
            if let crate::archive::BlockLoc::Frame { .. } = b.loc {
                return Err(Error::corrupt(
                    &dest,
                    format!(
                        "block {i} is in the snapshot file; a repository keeps blocks in packs"
                    ),
                ));
            }
        }
        // Every block must be where the snapshot says, as the packs' own
        // trailers list them (hash, length, offset, frame length): a
        // snapshot names what the catalog's block table is rebuilt from,
        // and every later snapshot deduplicates against that table.
        let mut trailers: Vec<HashMap<u64, pack::PackEntry>> = Vec::new();
        for s in &a.index.sources {
            let id = pack::id_of_name(&s.name)
                .filter(|id| *id == s.archive_id)
                .ok_or_else(|| Error::corrupt(&dest, "refers to something that is not a pack"))?;
            let path = repo.root.join(pack::rel_path(&id));
            if !path.is_file() {
                return Err(Error::corrupt(
                    &dest,
                    format!(
                        "refers to pack {} which the repository does not hold",
                        pack::hex(&id)
                    ),
                ));
            }
            let (_, entries) = pack::read_trailer(&path)?;
            trailers.push(entries.into_iter().map(|e| (e.offset, e)).collect());
        }
        for (i, b) in a.index.blocks.iter().enumerate() {
            if let crate::archive::BlockLoc::External {
                source,
                offset,
                clen,
            } = b.loc
            {
                let ok = trailers
                    .get(source as usize)
                    .and_then(|t| t.get(&offset))
                    .is_some_and(|e| e.hash == b.hash && e.len == b.len && e.clen == clen);
                if !ok {
                    return Err(Error::corrupt(
                        &dest,
                        format!("block {i} is not in its pack as the snapshot says"),
                    ));
                }
            }
        }
        let dir = dest.parent().unwrap();
        let tmp = dir.join(format!(".{name}.hbb.hbb-partial-{}", std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp).at(&tmp)?;
            f.write_all(&bytes).at(&tmp)?;
            f.sync_all().at(&tmp)?;
        }
        std::fs::rename(&tmp, &dest).at(&dest)?;
        crate::repo::fsync_dir(dir)?;
        crate::repo::fault_point("snapshot-named");
        let row = SnapshotRow::of(name, &a);
        let frames = std::mem::take(&mut self.new_frames);
        self.cat
            .as_mut()
            .expect("locked: the catalog is open")
            .add_snapshot(&row, &frames)?;
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restriction_is_by_real_path() {
        let d = std::env::temp_dir().join(format!("hbb-serve-test-{}", std::process::id()));
        let repo = d.join("repo");
        std::fs::create_dir_all(repo.join("sub")).unwrap();
        std::fs::create_dir_all(d.join("other")).unwrap();
        std::os::unix::fs::symlink(d.join("other"), d.join("link")).unwrap();
        let r = vec![repo.clone()];
        assert!(allowed_path(&repo, &r, false).is_ok());
        assert!(allowed_path(&repo.join("sub/.."), &r, false).is_ok());
        assert!(allowed_path(&repo.join("sub"), &r, false).is_err());
        assert!(allowed_path(&repo.join(".."), &r, false).is_err());
        assert!(allowed_path(&d.join("link"), &r, false).is_err());
        assert!(allowed_path(&d.join("other"), &r, true).is_err());
        assert!(allowed_path(Path::new("/"), &r, false).is_err());
        // A repository to be made: its parent must be real.
        let new = vec![d.join("new")];
        assert!(allowed_path(&d.join("new"), &new, true).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
