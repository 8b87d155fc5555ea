//! The client end: runs `ssh [user@]host hbb serve`, speaks `proto` over
//! its stdin and stdout, and gives the repository's operations to the rest
//! of hbb — a `FrameStore` for reading snapshots, a `FrameSink` for
//! storing new blocks.
//!
//! Requests are pipelined: any thread may send one at any time; a reader
//! thread hands each reply to whoever waits for it, by request id.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use super::Url;
use super::proto::{self, Reply, Request};
use crate::archive::format::ExternalSource;
use crate::archive::reader::{Archive, FrameStore};
use crate::archive::writer::{FrameLoc, FrameSink};
use crate::error::{Error, Result};
use crate::repo::catalog::{Run, SnapshotRow};

/// What came back for a request: the reply, or why there is none.
enum Answer {
    Reply(Reply, Vec<u8>),
    /// The far end answered with an error.
    Refused(String),
    /// The connection is gone.
    Lost(String),
}

struct Waiting {
    map: HashMap<u32, (Sender<(u32, Answer)>, u32)>,
    closed: Option<String>,
}

struct Shared {
    waiting: Mutex<Waiting>,
    /// The last lines the far end (or ssh) wrote to stderr.
    tail: Mutex<VecDeque<String>>,
}

pub struct Client {
    pub url: Url,
    pub repo_id: [u8; 16],
    /// The repository's path on the far end.
    pub root: String,
    shared: Arc<Shared>,
    input: Mutex<Option<BufWriter<ChildStdin>>>,
    next: AtomicU32,
    child: Mutex<Option<Child>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Sends Ping every 30 s; stopped (and joined) on drop.
    keepalive: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

fn tail_text(shared: &Shared) -> String {
    let t = shared.tail.lock().unwrap();
    if t.is_empty() {
        String::new()
    } else {
        format!(
            " (the far end said: {})",
            t.iter().cloned().collect::<Vec<_>>().join(" / ")
        )
    }
}

impl Client {
    /// Connects to the repository at `url` (creating it with `create`).
    pub fn connect(url: &Url, create: bool) -> Result<Arc<Client>> {
        let remote = std::env::var("HBB_REMOTE_PATH").unwrap_or_else(|_| "hbb".into());
        let mut cmd = super::ssh(url, format!("{remote} serve"));
        let program = cmd.get_program().to_owned();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            Error::Other(format!(
                "{url}: cannot run {:?} (set HBB_RSH to the ssh command): {e}",
                program
            ))
        })?;
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting {
                map: HashMap::new(),
                closed: None,
            }),
            tail: Mutex::new(VecDeque::new()),
        });
        let stderr = child.stderr.take().unwrap();
        let host = url.host.clone();
        let err_thread = std::thread::Builder::new()
            .name("hbb-ssh-stderr".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        let line = line.trim_end().to_string();
                        if line.is_empty() {
                            continue;
                        }
                        log::warn!("{host}: {line}");
                        let mut t = shared.tail.lock().unwrap();
                        t.push_back(line);
                        if t.len() > 8 {
                            t.pop_front();
                        }
                    }
                }
            })
            .expect("spawn thread");
        let mut input = BufWriter::with_capacity(1 << 20, child.stdin.take().unwrap());
        let mut output = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
        let _ = proto::write_greeting(&mut input);
        let theirs = match proto::read_greeting(&mut output) {
            Ok(v) => v,
            Err(e) => {
                drop(input);
                let status = wait_briefly(&mut child);
                let _ = err_thread.join();
                // An hbb from before remote repositories: clap refuses `serve`.
                let no_serve = shared
                    .tail
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l.contains("unrecognized subcommand"));
                if no_serve {
                    return Err(Error::Other(format!(
                        "{url}: the far end's hbb is older than remote repositories (it has \
                         no `serve` command){}: upgrade hbb on {}",
                        tail_text(&shared),
                        url.host
                    )));
                }
                let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    format!(
                        "the connection closed before hbb serve answered{}",
                        status.map(|s| format!(" ({s})")).unwrap_or_default()
                    )
                } else {
                    e.to_string()
                };
                return Err(Error::Other(format!(
                    "{url}: {why}{}; is hbb installed on {} and in the PATH of a \
                     non-interactive login (else set HBB_REMOTE_PATH to its path there)?",
                    tail_text(&shared),
                    url.host
                )));
            }
        };
        if theirs < proto::VERSION {
            drop(input);
            wait_briefly(&mut child);
            let _ = err_thread.join();
            return Err(Error::Other(format!(
                "{url}: the far end's hbb speaks protocol version {theirs}, older than this \
                 hbb's {}: upgrade hbb on {}",
                proto::VERSION,
                url.host
            )));
        }
        let reader = std::thread::Builder::new()
            .name("hbb-remote-reader".into())
            .spawn({
                let shared = shared.clone();
                move || read_replies(output, &shared)
            })
            .expect("spawn thread");
        let mut c = Client {
            url: url.clone(),
            repo_id: [0; 16],
            root: String::new(),
            shared,
            input: Mutex::new(Some(input)),
            next: AtomicU32::new(1),
            child: Mutex::new(Some(child)),
            threads: Mutex::new(vec![reader, err_thread]),
            keepalive: Mutex::new(None),
        };
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(&url.path).as_os_str().as_bytes().to_vec();
        match c.call(&Request::Open { path, create }, &[])? {
            (Reply::Opened { repo_id, root }, _) => {
                c.repo_id = repo_id;
                c.root = root;
            }
            (r, _) => return Err(c.unexpected(&r)),
        }
        let c = Arc::new(c);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let weak = Arc::downgrade(&c);
        let pinger = std::thread::Builder::new()
            .name("hbb-remote-ping".into())
            .spawn(move || {
                // Until the client is dropped (the sender goes with it).
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(Duration::from_secs(30))
                {
                    let Some(c) = weak.upgrade() else { break };
                    let (tx, _) = bounded(1);
                    if c.submit(&Request::Ping, &[], tx, 0).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn thread");
        *c.keepalive.lock().unwrap() = Some((stop_tx, pinger));
        Ok(c)
    }

    fn unexpected(&self, r: &Reply) -> Error {
        Error::Other(format!(
            "{}: the far end answered out of protocol ({r:?})",
            self.url
        ))
    }

    fn lost(&self, why: &str) -> Error {
        Error::Other(format!(
            "{}: connection lost: {why}{}",
            self.url,
            tail_text(&self.shared)
        ))
    }

    /// Sends a request; its answer goes to `tx`, tagged `tag`.
    fn submit(
        &self,
        req: &Request,
        payload: &[u8],
        tx: Sender<(u32, Answer)>,
        tag: u32,
    ) -> Result<()> {
        let id = loop {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                break id;
            }
        };
        {
            let mut w = self.shared.waiting.lock().unwrap();
            if let Some(why) = &w.closed {
                return Err(self.lost(why));
            }
            w.map.insert(id, (tx, tag));
        }
        let mut inp = self.input.lock().unwrap();
        let sent = match inp.as_mut() {
            Some(out) => proto::write_message(out, id, req, payload).and_then(|_| out.flush()),
            None => Err(std::io::Error::other("closed")),
        };
        if let Err(e) = sent {
            drop(inp);
            self.shared.waiting.lock().unwrap().map.remove(&id);
            // The reader usually knows better why.
            std::thread::sleep(Duration::from_millis(50));
            let why = self
                .shared
                .waiting
                .lock()
                .unwrap()
                .closed
                .clone()
                .unwrap_or_else(|| format!("sending failed: {e}"));
            return Err(self.lost(&why));
        }
        Ok(())
    }

    fn answer(&self, a: Answer) -> Result<(Reply, Vec<u8>)> {
        match a {
            Answer::Reply(r, p) => Ok((r, p)),
            Answer::Refused(m) => Err(Error::Other(format!("{}: {m}", self.url))),
            Answer::Lost(why) => Err(self.lost(&why)),
        }
    }

    /// Sends a request and waits for its reply.
    pub fn call(&self, req: &Request, payload: &[u8]) -> Result<(Reply, Vec<u8>)> {
        let (tx, rx) = bounded(1);
        self.submit(req, payload, tx, 0)?;
        match rx.recv() {
            Ok((_, a)) => self.answer(a),
            Err(_) => Err(self.lost("no answer")),
        }
    }

    fn json<T: for<'de> serde::Deserialize<'de>>(&self, req: &Request) -> Result<T> {
        match self.call(req, &[])? {
            (Reply::Json(j), _) => serde_json::from_str(&j).map_err(|e| {
                Error::Other(format!(
                    "{}: the far end's answer does not decode: {e}",
                    self.url
                ))
            }),
            (r, _) => Err(self.unexpected(&r)),
        }
    }

    pub fn list(&self) -> Result<Vec<SnapshotRow>> {
        self.json(&Request::List)
    }

    pub fn info(&self) -> Result<crate::repo::RepoInfo> {
        self.json(&Request::Info)
    }

    pub fn prune(&self, o: &crate::repo::prune::Options) -> Result<crate::repo::prune::Report> {
        let options_json = serde_json::to_string(o).map_err(|e| Error::Other(e.to_string()))?;
        self.json(&Request::Prune { options_json })
    }

    /// Takes the repository's writers' lock for as long as this connection lasts.
    pub fn lock(&self, what: &str, wait: Duration) -> Result<()> {
        match self.call(
            &Request::Lock {
                what: what.into(),
                wait_ms: wait.as_millis().min(u64::MAX as u128) as u64,
            },
            &[],
        )? {
            (Reply::Done, _) => Ok(()),
            (r, _) => Err(self.unexpected(&r)),
        }
    }

    /// Every block the repository holds, and where.
    pub fn known(&self) -> Result<HashMap<[u8; 32], FrameLoc>> {
        let (r, p) = self.call(&Request::Known, &[])?;
        let Reply::Known { count } = r else {
            return Err(self.unexpected(&r));
        };
        if p.len() as u64 != count.saturating_mul(proto::KNOWN_ENTRY as u64) {
            return Err(Error::Other(format!(
                "{}: the list of stored blocks arrived cut short",
                self.url
            )));
        }
        let mut m = HashMap::with_capacity(count as usize);
        for e in p.chunks_exact(proto::KNOWN_ENTRY) {
            let hash: [u8; 32] = e[..32].try_into().unwrap();
            m.insert(
                hash,
                FrameLoc::Pack {
                    pack: e[32..48].try_into().unwrap(),
                    offset: u64::from_le_bytes(e[48..56].try_into().unwrap()),
                    clen: u32::from_le_bytes(e[56..60].try_into().unwrap()),
                },
            );
        }
        Ok(m)
    }

    /// Opens snapshot `name`: its index is fetched now, its blocks when read.
    pub fn open_snapshot(self: &Arc<Self>, name: &str) -> Result<Archive> {
        let label = format!("{}::{name}", self.url);
        let (r, bytes) = self.call(&Request::ReadSnapshot { name: name.into() }, &[])?;
        if !matches!(r, Reply::Data) {
            return Err(self.unexpected(&r));
        }
        let mut a = Archive::from_bytes(bytes, Path::new(&label))?;
        if let Some(si) = &a.ext.snapshot
            && si.repo_id != self.repo_id
        {
            return Err(Error::corrupt(
                Path::new(&label),
                "snapshot belongs to another repository (repository ids differ)",
            ));
        }
        a.attach_store(Arc::new(RemoteStore {
            client: self.clone(),
        }));
        Ok(a)
    }

    /// Names a snapshot whose archive file is `bytes` (its frames stored and sealed).
    pub fn commit(&self, name: &str, bytes: &[u8]) -> Result<SnapshotRow> {
        match self.call(&Request::Commit { name: name.into() }, bytes)? {
            (Reply::Json(j), _) => serde_json::from_str(&j)
                .map_err(|e| Error::Other(format!("{}: bad answer: {e}", self.url))),
            (r, _) => Err(self.unexpected(&r)),
        }
    }

    pub fn add_run(&self, run: &Run) -> Result<()> {
        let run_json = serde_json::to_string(run).map_err(|e| Error::Other(e.to_string()))?;
        self.call(&Request::AddRun { run_json }, &[]).map(|_| ())
    }
}

fn wait_briefly(child: &mut Child) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if t.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}

fn read_replies(mut out: impl std::io::Read, shared: &Shared) {
    let why = loop {
        match proto::read_message::<Reply>(&mut out) {
            Ok(Some((0, Reply::Error(m), _))) => break m,
            Ok(Some((id, reply, payload))) => {
                let a = match reply {
                    Reply::Error(m) => Answer::Refused(m),
                    r => Answer::Reply(r, payload),
                };
                let w = shared.waiting.lock().unwrap().map.remove(&id);
                if let Some((tx, tag)) = w {
                    let _ = tx.send((tag, a));
                }
            }
            Ok(None) => break "the far end closed the connection".to_string(),
            Err(e) => break format!("{e}"),
        }
    };
    let mut w = shared.waiting.lock().unwrap();
    w.closed = Some(why.clone());
    for (_, (tx, tag)) in w.map.drain() {
        let _ = tx.send((tag, Answer::Lost(why.clone())));
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some((stop, pinger)) = self.keepalive.lock().unwrap().take() {
            drop(stop);
            // It may be this very thread (its upgrade made the last Arc).
            if pinger.thread().id() != std::thread::current().id() {
                let _ = pinger.join();
            }
        }
        // Closing its stdin ends `hbb serve`; a far end that does not go
        // (a cut link) is not waited for long.
        drop(self.input.lock().unwrap().take());
        if let Some(mut c) = self.child.lock().unwrap().take() {
            wait_briefly(&mut c);
        }
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads a remote snapshot's frames, one request each.
pub struct RemoteStore {
    client: Arc<Client>,
}

impl FrameStore for RemoteStore {
    fn read_frame(
        &self,
        source: &ExternalSource,
        offset: u64,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        let req = Request::ReadFrame {
            pack: source.archive_id,
            offset,
            clen: buf.len() as u32,
        };
        match self.client.call(&req, &[]) {
            Ok((Reply::Data, p)) if p.len() == buf.len() => {
                buf.copy_from_slice(&p);
                Ok(())
            }
            Ok(_) => Err(std::io::Error::other(
                "the far end sent a frame of another length",
            )),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }
}

/// Sends a snapshot's new blocks to a remote repository, without waiting
/// for each answer: where each went is collected by `settle`.
pub struct RemoteSink {
    client: Arc<Client>,
    raw: bool,
    level: i32,
    tx: Sender<(u32, Answer)>,
    rx: Receiver<(u32, Answer)>,
    locs: Vec<FrameLoc>,
    answered: usize,
}

impl RemoteSink {
    pub fn new(client: Arc<Client>, raw: bool, level: i32) -> RemoteSink {
        let (tx, rx) = unbounded();
        RemoteSink {
            client,
            raw,
            level,
            tx,
            rx,
            locs: Vec::new(),
            answered: 0,
        }
    }

    fn take(&mut self, (ticket, a): (u32, Answer)) -> Result<()> {
        match self.client.answer(a)? {
            (Reply::Stored { pack, offset, clen }, _) => {
                self.locs[ticket as usize] = FrameLoc::Pack { pack, offset, clen };
                self.answered += 1;
                Ok(())
            }
            (r, _) => Err(self.client.unexpected(&r)),
        }
    }
}

impl FrameSink for RemoteSink {
    fn store(&mut self, hash: [u8; 32], len: u32, data: &[u8], raw: bool) -> Result<FrameLoc> {
        debug_assert!(raw == self.raw || !raw);
        let ticket = self.locs.len() as u32;
        let req = Request::Store {
            hash,
            len,
            raw,
            level: self.level,
        };
        self.client.submit(&req, data, self.tx.clone(), ticket)?;
        self.locs.push(FrameLoc::Pending { ticket });
        // Answers that have come are taken now: an error stops the snapshot early.
        while let Ok(a) = self.rx.try_recv() {
            self.take(a)?;
        }
        Ok(FrameLoc::Pending { ticket })
    }

    fn settle(&mut self) -> Result<Vec<FrameLoc>> {
        while self.answered < self.locs.len() {
            let a = self.rx.recv().map_err(|_| self.client.lost("no answer"))?;
            self.take(a)?;
        }
        Ok(self.locs.clone())
    }

    fn finish(&mut self) -> Result<()> {
        self.settle()?;
        match self.client.call(&Request::Seal, &[])? {
            (Reply::Done, _) => Ok(()),
            (r, _) => Err(self.client.unexpected(&r)),
        }
    }
}
