//! The messages `hbb` and `hbb serve` exchange (docs/PROTOCOL.md).
//!
//! ```text
//! greeting  8 bytes each way, first: "HBBRPC\x00\x01" (magic, then the
//!           highest protocol version the sender speaks, u8)
//! message   u32 LE: length of the rest
//!           u32 LE: request id (the reply carries its request's id)
//!           u32 LE: header length H
//!           H bytes: the header, postcard (`Request` or `Reply`)
//!           the rest: payload bytes (a frame, a block, a snapshot file)
//! ```
//!
//! The client may send any number of requests before reading a reply
//! (pipelining); the server answers each once, not necessarily in order.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 7] = *b"HBBRPC\x00";
/// The protocol version this hbb speaks.
pub const VERSION: u8 = 1;
/// No message is larger (a block is at most 64 MiB, a snapshot's index
/// file much less than this for any tree hbb can hold).
pub const MAX_MESSAGE: u32 = 1 << 30;
/// No header is larger (names, JSON of prune options or a run).
pub const MAX_HEADER: u32 = 1 << 20;

pub type PackId = [u8; 16];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// First request: the repository to work on, by its path on the far
    /// end (relative to the login directory unless absolute).
    Open { path: Vec<u8>, create: bool },
    /// Takes the repository's writers' lock for this connection (waiting
    /// up to `wait_ms`); prepares for storing: leftovers of writers that
    /// died are removed, their sealed packs adopted.
    Lock { what: String, wait_ms: u64 },
    /// The snapshots, as `hbb list --json` gives them (reply: Json).
    List,
    /// `hbb info REPO --json` (reply: Json).
    Info,
    /// Every block the repository holds (reply: Known, entries in the payload).
    Known,
    /// A snapshot's file (reply: Data, the file in the payload).
    ReadSnapshot { name: String },
    /// The bytes of a frame in a pack (reply: Data).
    ReadFrame {
        pack: PackId,
        offset: u64,
        clen: u32,
    },
    /// Stores a block: the payload is its zstd frame, or with `raw` the
    /// block itself, which the server compresses at `level` and checks
    /// against `hash` (reply: Stored). Needs the lock.
    Store {
        hash: [u8; 32],
        len: u32,
        raw: bool,
        level: i32,
    },
    /// Seals the open pack; answered after every earlier Store (reply: Done).
    Seal,
    /// Names a snapshot: the payload is its archive file, whose blocks are
    /// all in sealed packs (reply: Json, the snapshot's row). Needs the lock.
    Commit { name: String },
    /// Records a failed run in the catalog (JSON of a catalog `Run`).
    AddRun { run_json: String },
    /// Prunes (JSON of `prune::Options`; reply: Json, the report).
    Prune { options_json: String },
    /// Nothing (reply: Done). The client sends one every 30 s, so that a
    /// server that hears nothing for `server::IDLE` knows it is gone.
    Ping,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Opened {
        repo_id: [u8; 16],
        root: String,
    },
    Done,
    Json(String),
    /// Payload: `count` entries of 60 bytes: hash (32), pack (16), offset (u64 LE), clen (u32 LE).
    Known {
        count: u64,
    },
    /// Payload: the bytes asked for.
    Data,
    Stored {
        pack: PackId,
        offset: u64,
        clen: u32,
    },
    Error(String),
}

pub const KNOWN_ENTRY: usize = 60;

pub fn write_greeting(w: &mut impl Write) -> io::Result<()> {
    let mut g = [0u8; 8];
    g[..7].copy_from_slice(&MAGIC);
    g[7] = VERSION;
    w.write_all(&g)?;
    w.flush()
}

/// Reads the other side's greeting; its version.
pub fn read_greeting(r: &mut impl Read) -> io::Result<u8> {
    let mut g = [0u8; 8];
    r.read_exact(&mut g)?;
    if g[..7] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the other end does not speak hbb's protocol (it sent {:?})",
                String::from_utf8_lossy(&g)
            ),
        ));
    }
    Ok(g[7])
}

pub fn write_message<H: Serialize>(
    w: &mut impl Write,
    id: u32,
    header: &H,
    payload: &[u8],
) -> io::Result<()> {
    let h = postcard::to_stdvec(header).map_err(io::Error::other)?;
    let len = 8 + h.len() as u64 + payload.len() as u64;
    if len > MAX_MESSAGE as u64 {
        return Err(io::Error::other(format!(
            "message of {len} bytes is larger than the protocol allows"
        )));
    }
    let mut head = Vec::with_capacity(12 + h.len());
    head.extend_from_slice(&(len as u32).to_le_bytes());
    head.extend_from_slice(&id.to_le_bytes());
    head.extend_from_slice(&(h.len() as u32).to_le_bytes());
    head.extend_from_slice(&h);
    w.write_all(&head)?;
    w.write_all(payload)
}

/// Reads one message; `None` at a clean end of stream (between messages).
pub fn read_message<H: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
) -> io::Result<Option<(u32, H, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1])? {
        0 => return Ok(None),
        _ => r.read_exact(&mut len[1..])?,
    }
    let len = u32::from_le_bytes(len);
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    if !(8..=MAX_MESSAGE).contains(&len) {
        return Err(bad(format!("message length {len} out of range")));
    }
    let mut fixed = [0u8; 8];
    r.read_exact(&mut fixed)?;
    let id = u32::from_le_bytes(fixed[..4].try_into().unwrap());
    let hlen = u32::from_le_bytes(fixed[4..].try_into().unwrap());
    if hlen > len - 8 || hlen > MAX_HEADER {
        return Err(bad(format!("header length {hlen} out of range")));
    }
    let mut h = vec![0u8; hlen as usize];
    r.read_exact(&mut h)?;
    let header: H = postcard::from_bytes(&h)
        .map_err(|e| bad(format!("message header does not decode: {e}")))?;
    // Read, not allocated up front: a length is only a claim until the
    // bytes arrive.
    let want = (len - 8 - hlen) as u64;
    let mut payload = Vec::with_capacity(want.min(1 << 20) as usize);
    r.take(want).read_to_end(&mut payload)?;
    if payload.len() as u64 != want {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the stream ended inside a message",
        ));
    }
    Ok(Some((id, header, payload)))
}
