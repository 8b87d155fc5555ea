//! Remote repositories over ssh, through real sshds in network namespaces
//! (tests/common/net.rs): `hbb serve` at the far end, every command on an
//! `ssh://` repository, both compression placements, a link cut (or its
//! ssh killed) in the middle of a snapshot and the next run resuming, a
//! hostile client against `hbb serve --restrict-to-repository`, and the
//! error messages when something is wrong at the far end.
//!
//! Hosts: "m1" holds the data and runs the snapshots, "agent" holds the
//! repository; restore, mount, list, verify run in the root namespace (the
//! "master"). Every namespace sees the same filesystem, so the agent's
//! repository is also a local path the tests look into.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::net::Net;
use common::*;
use hbb::remote::proto::{self, Reply, Request};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A network whose sessions find hbb where the tests built it.
fn net(names: &[&str]) -> Net {
    Net::with_env(names, &[("HBB_REMOTE_PATH", bin())])
}

/// `ssh://root@<host's ip><path>`.
fn url(net: &Net, host: &str, path: &Path) -> String {
    format!("ssh://root@{}{}", net.host(host).ip, path.display())
}

/// hbb in the root namespace, reaching the hosts with the net's ssh.
fn master(net: &Net, args: &[&str]) -> Output {
    master_env(net, args, &[])
}

fn master_env(net: &Net, args: &[&str], env: &[(&str, &str)]) -> Output {
    let rsh = net.rsh();
    let mut all = vec![("HBB_RSH", rsh.as_str()), ("HBB_REMOTE_PATH", bin())];
    all.extend_from_slice(env);
    hbb_env(args, &all)
}

/// hbb on `host` (its namespace, with the sessions' environment).
fn on(net: &Net, host: &str, args: &[&str]) -> Output {
    net.command_on(host, bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert_ok(o);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

/// `hbb snapshot -q --json SRC URL ARGS` on `host` → the snapshot's row.
#[track_caller]
fn snap_on(net: &Net, host: &str, src: &Path, url: &str, extra: &[&str]) -> serde_json::Value {
    settle(src);
    let mut args = vec!["snapshot", "-q", "--json", s(src), url];
    args.extend_from_slice(extra);
    let j = json(&on(net, host, &args));
    j["snapshot"].clone()
}

fn names(net: &Net, url: &str) -> Vec<String> {
    let j = json(&master(net, &["list", "--json", url]));
    j.as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

#[track_caller]
fn restore_and_compare(net: &Net, target: &str, expect: &Path, into: &Path) {
    assert_ok(&master(net, &["restore", "-q", target, s(into)]));
    // Metadata first: diff reads the files, which may move their atime.
    compare_trees(expect, into);
    diff_r(expect, into);
}

/// Bytes `host` has sent on its link so far.
fn tx_bytes(net: &Net, host: &str) -> u64 {
    let o = net
        .command_on(host, "cat")
        .arg("/sys/class/net/eth0/statistics/tx_bytes")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// The sealed packs of a repository (data/XX/ID.pack).
fn sealed_packs(repo: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(repo.join("data")) {
        for d in rd.flatten() {
            if let Ok(rd) = fs::read_dir(d.path()) {
                for f in rd.flatten() {
                    if f.path().extension().is_some_and(|e| e == "pack") {
                        v.push(f.path());
                    }
                }
            }
        }
    }
    v.sort();
    v
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// The `hbb serve` processes running in `host`'s namespace.
fn serves_on(net: &Net, host: &str) -> Vec<i32> {
    let o = Command::new("ip")
        .args(["netns", "pids", &net.host(host).ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| {
            let cmd = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"hbb")) && args.get(1) == Some(&&b"serve"[..])
        })
        .collect()
}

fn wait_exit(c: &mut Child, secs: u64) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return Some(st);
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------
// 1. Every command on a remote repository, both compression placements.
// ---------------------------------------------------------------------

#[test]
fn both_compress_placements_and_every_command_on_a_remote_repository() {
    let t = Tmp::new("remote-all");
    let net = net(&["m1", "agent"]);
    let src = t.path("src");
    make_every_kind(&src);
    fs::create_dir_all(src.join("many")).unwrap();
    for k in 0..10 {
        write_noise(&src.join(format!("many/f{k:02}")), 200_000, 100 + k);
    }
    // Compressible: compressed on m1 it crosses the link as ~1/3 of this.
    write_pattern(&src.join("text.bin"), 16 << 20, 7);
    settle(&src);

    // Two repositories on the agent, made from the master and from m1: into
    // one repository the second placement would find every block stored.
    let (ra, rb) = (t.path("ra"), t.path("rb"));
    let (ua, ub) = (url(&net, "agent", &ra), url(&net, "agent", &rb));
    assert_ok(&master(&net, &["repo", "init", "-q", &ua]));
    assert_ok(&on(&net, "m1", &["repo", "init", "-q", &ub]));
    assert!(ra.join("hbb-repo").is_file() && rb.join("hbb-repo").is_file());
    assert_ne!(
        fs::read(ra.join("hbb-repo")).unwrap(),
        fs::read(rb.join("hbb-repo")).unwrap()
    );

    let tx0 = tx_bytes(&net, "m1");
    let a = snap_on(
        &net,
        "m1",
        &src,
        &ua,
        &["--name", "a", "--compress-on", "source"],
    );
    let tx1 = tx_bytes(&net, "m1");
    let b = snap_on(
        &net,
        "m1",
        &src,
        &ub,
        &["--name", "b", "--compress-on", "agent"],
    );
    let tx2 = tx_bytes(&net, "m1");
    assert_eq!(
        (a["name"].as_str(), b["name"].as_str()),
        (Some("a"), Some("b"))
    );
    let (sa, sb) = (
        a["bytes_stored"].as_u64().unwrap(),
        b["bytes_stored"].as_u64().unwrap(),
    );
    assert!(sa > 2_000_000 && sb > 2_000_000, "stored {sa} and {sb}");
    // The same blocks compressed at the same level, at either end.
    assert!(
        sa.abs_diff(sb) < sa / 20,
        "stored {sa} (source) vs {sb} (agent)"
    );
    // What crossed m1's link: the compressed frames, or the raw blocks.
    let (sent_a, sent_b) = (tx1 - tx0, tx2 - tx1);
    eprintln!("stored: source {sa}, agent {sb}; sent by m1: source {sent_a}, agent {sent_b}");
    assert!(
        sent_a < sa + (sa / 5) + (1 << 20),
        "--compress-on source sent {sent_a} bytes for {sa} stored"
    );
    assert!(
        sent_b > sent_a + (8 << 20),
        "--compress-on agent sent {sent_b} bytes, source {sent_a}: the blocks did not go raw"
    );
    // The agent's packs hold what was stored.
    let ia = json(&master(&net, &["info", "--json", &ua]));
    assert_eq!(ia["snapshots"], 1, "{ia}");
    assert_eq!(ia["path"], ua.as_str(), "{ia}");
    assert!(ia["stored_bytes"].as_u64().unwrap() >= sa, "{ia}");
    assert_eq!(
        ia["id"],
        json(&hbb(&["info", "--json", s(&ra)]))["id"],
        "remote and local info name the same repository"
    );

    // A snapshot's info is the same from here as on the agent.
    let mut ri = json(&master(&net, &["info", "--json", &format!("{ua}::a")]));
    let mut li = json(&hbb(&["info", "--json", &format!("{}::a", s(&ra))]));
    assert_eq!(ri["archive"], format!("{ua}::a").as_str());
    ri["archive"] = serde_json::Value::Null;
    li["archive"] = serde_json::Value::Null;
    assert_eq!(ri, li);

    // Both restore whole, from the master.
    let (out_a, out_b) = (t.path("out-a"), t.path("out-b"));
    restore_and_compare(&net, &format!("{ua}::a"), &src, &out_a);
    restore_and_compare(&net, &format!("{ub}::b"), &src, &out_b);

    // Part of it: one directory.
    let part = t.path("out-part");
    assert_ok(&master(
        &net,
        &["restore", "-q", &format!("{ua}::a"), s(&part), "dir/sub"],
    ));
    compare_trees(&src.join("dir/sub"), &part.join("dir/sub"));
    diff_r(&src.join("dir/sub"), &part.join("dir/sub"));
    assert!(!part.join("plain.txt").exists());

    // ls: the same listing from either, and as the agent's local repository shows it.
    let ls = |target: &str| {
        let o = master(&net, &["ls", "-l", "-R", target]);
        assert_ok(&o);
        String::from_utf8(o.stdout).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    };
    let la = ls(&format!("{ua}::a"));
    assert_eq!(la, ls(&format!("{ub}::b")));
    assert_eq!(la, ls(&format!("{}::a", s(&ra))));
    assert!(la.contains("dir/sub/deep/medium.bin"), "{la}");
    assert!(la.contains("dir/link-to-plain -> ../plain.txt"), "{la}");

    // cat, also with the scp-style [user@]host:path and an explicit port.
    let agent_ip = net.host("agent").ip.clone();
    let o = master(&net, &["cat", &format!("{ua}::a"), "dir/sub/notes.txt"]);
    assert_ok(&o);
    assert_eq!(o.stdout, fs::read(src.join("dir/sub/notes.txt")).unwrap());
    let scp = format!("root@{agent_ip}:{}::a", s(&ra));
    let o = master(&net, &["cat", &scp, "many/f03"]);
    assert_ok(&o);
    assert_eq!(o.stdout, fs::read(src.join("many/f03")).unwrap());
    let port = format!("ssh://root@{agent_ip}:22{}::b", s(&rb));
    let o = master(&net, &["cat", &port, "text.bin"]);
    assert_ok(&o);
    assert!(o.stdout == fs::read(src.join("text.bin")).unwrap());

    // Verify: every snapshot, and one against its source.
    assert_ok(&master(&net, &["verify", "-q", &ua]));
    assert_ok(&master(&net, &["verify", "-q", &ub]));
    assert_ok(&master(
        &net,
        &["verify", "-q", &format!("{ua}::a"), "--source", s(&src)],
    ));

    // One snapshot mounted, from the master.
    let mp = t.path("mnt");
    fs::create_dir_all(&mp).unwrap();
    {
        let before = tx_bytes(&net, "agent");
        assert_ok(&master(&net, &["mount", &format!("{ua}::a"), s(&mp)]));
        let m = Mounted(mp.clone());
        // Only what reads need crosses the link: the index, then the
        // block(s) of the one small file read — not the snapshot.
        assert_eq!(
            fs::read(mp.join("plain.txt")).unwrap(),
            fs::read(src.join("plain.txt")).unwrap()
        );
        let one = tx_bytes(&net, "agent") - before;
        assert!(
            one < sa / 2,
            "{one} bytes sent for one small file of a {sa}-byte snapshot"
        );
        diff_r(&src, &mp);
        let all = tx_bytes(&net, "agent") - before;
        assert!(
            all > sa * 9 / 10,
            "{all} bytes sent for every file of a {sa}-byte snapshot"
        );
        assert_ok(&master(&net, &["umount", s(&m.0)]));
        assert!(!is_mounted(&mp));
    }

    // A second snapshot into the same repository after one file changed:
    // the rest is known (from the parent, unread), little is stored.
    write_noise(&src.join("many/f03"), 200_000, 999);
    let a2 = snap_on(&net, "m1", &src, &ua, &["--name", "a2"]);
    let s2 = a2["bytes_stored"].as_u64().unwrap();
    assert!(
        (150_000..1_000_000).contains(&s2),
        "second snapshot stored {s2} bytes"
    );
    assert_eq!(a2["parent"], "a", "{a2}");
    assert!(a2["reused_files"].as_u64().unwrap() >= 10, "{a2}");
    assert_eq!(names(&net, &ua), vec!["a", "a2"]);
    // --source finds the change remotely too.
    let o = master(
        &net,
        &["verify", "-q", &format!("{ub}::b"), "--source", s(&src)],
    );
    assert!(!o.status.success(), "verify --source missed a changed file");

    // The whole repository mounted: one directory per snapshot.
    {
        assert_ok(&master(&net, &["mount", &ua, s(&mp)]));
        let m = Mounted(mp.clone());
        assert_eq!(dir_names(&mp), vec!["a", "a2"]);
        diff_r(&out_a, &mp.join("a"));
        diff_r(&src, &mp.join("a2"));
        assert_ok(&master(&net, &["umount", s(&m.0)]));
    }

    // Prune remotely keeps the last one, which still restores whole.
    let p = json(&master(
        &net,
        &["prune", "-q", "--json", &ua, "--keep-last", "1"],
    ));
    let removed: Vec<&str> = p["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| v["name"].as_str().unwrap()))
        .collect();
    assert_eq!(removed, vec!["a"], "{p}");
    assert_eq!(names(&net, &ua), vec!["a2"]);
    assert_eq!(dir_names(&ra.join("snapshots")), vec!["a2.hbb"]);
    restore_and_compare(&net, &format!("{ua}::a2"), &src, &t.path("out-a2"));

    // Exported from the agent to one archive file here, which stands alone.
    let f = t.path("f.hbb");
    assert_ok(&master(
        &net,
        &["repo", "export", "-q", &format!("{ua}::a2"), s(&f)],
    ));
    assert_ok(&hbb(&["verify", "-q", s(&f)]));
    restore_and_compare(&net, s(&f), &src, &t.path("out-f"));
    assert_eq!(ls(s(&f)), ls(&format!("{ua}::a2")));

    // verify reads the frames at the far end: a damaged pack is found.
    let pack = sealed_packs(&rb).into_iter().next().expect("a pack in rb");
    flip_byte(&pack, 4096);
    let o = master(&net, &["verify", "-q", &ub]);
    assert_eq!(o.status.code(), Some(4), "verify: {}", stderr(&o));
}

// ---------------------------------------------------------------------
// 2. A snapshot interrupted in the middle, then run again.
// ---------------------------------------------------------------------

enum Break {
    /// The agent's cable pulled: nothing more arrives, nothing is reset.
    Cut,
    /// The snapshot's ssh client killed on m1.
    KillSsh,
}

fn interrupted_then_resumed(how: Break) {
    let t = Tmp::new(match how {
        Break::Cut => "remote-cut",
        Break::KillSsh => "remote-kill",
    });
    let net = net(&["m1", "agent"]);
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    const TOTAL: u64 = 150 << 20;
    write_noise(&src.join("data.bin"), TOTAL as usize, 11);
    write_pattern(&src.join("small.txt"), 10_000, 12);
    settle(&src);
    let repo = t.path("repo");
    assert_ok(&hbb(&["repo", "init", "-q", s(&repo)]));
    let u = url(&net, "agent", &repo);

    // Slow enough that the snapshot is still sending when its first pack seals.
    net.limit("agent", "200mbit");
    let mut child = net
        .command_on("m1", bin())
        .args(["snapshot", "-q", s(&src), &u, "--name", "first"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("a sealed pack in the agent's repository", 60, || {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the snapshot ended ({st}) before a pack was sealed");
        }
        !sealed_packs(&repo).is_empty()
    });
    let t0 = Instant::now();
    match how {
        Break::Cut => net.cut("agent"),
        Break::KillSsh => {
            // `ip netns exec` execs hbb: the child is hbb, its child ssh.
            let o = Command::new("pgrep")
                .args(["-P", &child.id().to_string(), "-x", "ssh"])
                .output()
                .unwrap();
            let pids: Vec<i32> = String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect();
            assert_eq!(pids.len(), 1, "the snapshot's ssh: {pids:?}");
            // SAFETY: kill(2) on the pid pgrep found as our child's child.
            unsafe { libc::kill(pids[0], libc::SIGKILL) };
        }
    }
    let st = wait_exit(&mut child, 30).expect("the snapshot did not give up within 30 s");
    let took = t0.elapsed();
    eprintln!("the snapshot gave up {took:?} after the break ({st})");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !st.success(),
        "the snapshot succeeded after {took:?}: {err}"
    );
    assert!(
        took < Duration::from_secs(15),
        "the snapshot took {took:?} to give up: {err}"
    );
    assert!(
        err.contains(&net.host("agent").ip),
        "the error does not name the agent: {err}"
    );
    if let Break::Cut = how {
        net.restore("agent");
    }
    net.unlimit("agent");
    // The far end's `hbb serve` goes too (its sshd notices), and with it
    // the repository's lock.
    wait_until("hbb serve on the agent to exit", 30, || {
        serves_on(&net, "agent").is_empty()
    });
    eprintln!(
        "hbb serve on the agent gone {:?} after the break",
        t0.elapsed()
    );

    // Nothing of it counts as a snapshot; its sealed packs stay.
    assert!(names(&net, &u).is_empty());
    assert!(dir_names(&repo.join("snapshots")).is_empty());
    let sealed = sealed_packs(&repo).len();
    assert!(sealed >= 1);

    // The next run (the old `hbb serve` may hold the lock until its sshd
    // gives up) adopts the sealed packs: their blocks are not sent again.
    let j = json(&on(
        &net,
        "m1",
        &[
            "snapshot",
            "-q",
            "--json",
            s(&src),
            &u,
            "--name",
            "second",
            "--lock-wait",
            "30s",
        ],
    ));
    let stored = j["snapshot"]["bytes_stored"].as_u64().unwrap();
    assert!(
        stored + (60 << 20) <= TOTAL,
        "the resumed snapshot stored {stored} bytes of {TOTAL} ({sealed} packs were sealed)"
    );
    assert!(stored > 0);
    assert_eq!(names(&net, &u), vec!["second"]);
    // The unfinished pack's temporary file is gone.
    let tmp = repo.join("tmp");
    assert!(
        !tmp.exists() || dir_names(&tmp).is_empty(),
        "{:?}",
        dir_names(&tmp)
    );
    restore_and_compare(&net, &format!("{u}::second"), &src, &t.path("out"));
    assert_ok(&master(&net, &["verify", "-q", &u]));
}

#[test]
fn a_link_cut_mid_snapshot_leaves_no_snapshot_and_the_next_run_resumes() {
    interrupted_then_resumed(Break::Cut);
}

#[test]
fn a_killed_ssh_mid_snapshot_leaves_no_snapshot_and_the_next_run_resumes() {
    interrupted_then_resumed(Break::KillSsh);
}

// ---------------------------------------------------------------------
// 3. A hostile client against `hbb serve --restrict-to-repository R`.
// ---------------------------------------------------------------------

enum Event {
    Greeting(std::io::Result<u8>),
    Message(std::io::Result<Option<(u32, Reply, Vec<u8>)>>),
}

/// A connection to `hbb serve` (run here, or through ssh) that the test
/// speaks the protocol on, message by message, also wrongly.
struct Conn {
    child: Child,
    input: Option<ChildStdin>,
    events: mpsc::Receiver<Event>,
    next: u32,
    err: PathBuf,
    /// Everything that came back: replies (Debug) and payloads.
    seen: Vec<u8>,
}

impl Conn {
    fn start(mut cmd: Command, err: PathBuf) -> Conn {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let g = proto::read_greeting(&mut out);
            let ok = g.is_ok();
            if tx.send(Event::Greeting(g)).is_err() || !ok {
                return;
            }
            loop {
                let m = proto::read_message::<Reply>(&mut out);
                let more = matches!(m, Ok(Some(_)));
                if tx.send(Event::Message(m)).is_err() || !more {
                    return;
                }
            }
        });
        Conn {
            input: child.stdin.take(),
            child,
            events,
            next: 1,
            err,
            seen: Vec::new(),
        }
    }

    /// `hbb serve --restrict-to-repository R` as a child of the test.
    fn serve(restrict: &Path, home: &Path, err: PathBuf) -> Conn {
        let mut c = Command::new(bin());
        c.args(["serve", "--restrict-to-repository", s(restrict)])
            .env("HOME", home)
            .current_dir(home);
        Conn::start(c, err)
    }

    fn next_event(&self) -> Event {
        self.events
            .recv_timeout(Duration::from_secs(30))
            .expect("hbb serve did not answer within 30 s")
    }

    /// Exchanges greetings; the server's version.
    fn hello(&mut self) -> u8 {
        proto::write_greeting(self.input.as_mut().unwrap()).unwrap();
        match self.next_event() {
            Event::Greeting(Ok(v)) => v,
            Event::Greeting(Err(e)) => panic!("greeting: {e}: {}", self.stderr()),
            Event::Message(_) => unreachable!(),
        }
    }

    fn send_raw(&mut self, b: &[u8]) {
        let inp = self.input.as_mut().unwrap();
        // The server may have closed already: that is what we check later.
        let _ = inp.write_all(b).and_then(|_| inp.flush());
    }

    #[track_caller]
    fn call(&mut self, req: &Request, payload: &[u8]) -> (Reply, Vec<u8>) {
        let id = self.next;
        self.next += 1;
        let inp = self.input.as_mut().unwrap();
        proto::write_message(inp, id, req, payload).unwrap();
        inp.flush().unwrap();
        match self.next_event() {
            Event::Message(Ok(Some((rid, reply, data)))) => {
                assert_eq!(rid, id, "reply to another request: {reply:?}");
                self.seen
                    .extend_from_slice(format!("{reply:?}\n").as_bytes());
                self.seen.extend_from_slice(&data);
                (reply, data)
            }
            Event::Message(r) => panic!(
                "no reply to {req:?}: {:?}; stderr: {}",
                r.map(|_| ()),
                self.stderr()
            ),
            Event::Greeting(_) => unreachable!(),
        }
    }

    /// The request is refused with an error (the connection goes on).
    #[track_caller]
    fn refused(&mut self, req: &Request, payload: &[u8]) -> String {
        match self.call(req, payload) {
            (Reply::Error(m), _) => m,
            (r, _) => panic!("{req:?} was not refused: {r:?}"),
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Closes our end; the server must exit by itself, without a panic.
    /// Its exit status and stderr.
    #[track_caller]
    fn close(mut self) -> (ExitStatus, String) {
        drop(self.input.take());
        let st = wait_exit(&mut self.child, 20);
        let err = self.stderr();
        let Some(st) = st else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("hbb serve did not exit when its input closed: {err}");
        };
        assert!(
            !err.contains("panicked") && st.signal().is_none() && st.code() != Some(101),
            "hbb serve crashed ({st}): {err}"
        );
        (st, err)
    }
}

/// The world around the restricted repository: R with a snapshot, another
/// repository with its own, a secret file, symbolic links to both.
struct World {
    top: PathBuf,
    r: PathBuf,
    other: PathBuf,
    home: PathBuf,
    secret: &'static str,
    /// What no reply may hold (see `forbidden`), taken once: reading the
    /// other repository's id with hbb touches its catalog.
    forbidden: Vec<Vec<u8>>,
}

impl World {
    fn make(top: PathBuf) -> World {
        let (r, other, home) = (top.join("r"), top.join("other"), top.join("home"));
        fs::create_dir_all(&home).unwrap();
        let secret = "TOP-SECRET-f3a9c2e1-do-not-leak";
        fs::write(top.join("secret.txt"), secret).unwrap();
        for (repo, name, seed) in [(&r, "s1", 1u64), (&other, "othersnap", 2)] {
            let src = top.join(format!("src-{name}"));
            fs::create_dir_all(&src).unwrap();
            write_noise(&src.join("data.bin"), 300_000, seed);
            // Only the other repository holds the secret.
            let note = if name == "s1" {
                "nothing to see here\n".to_string()
            } else {
                format!("{secret} in {name}\n")
            };
            fs::write(src.join("note.txt"), note).unwrap();
            assert_ok(&hbb(&["repo", "init", "-q", s(repo)]));
            assert_ok(&hbb(&["snapshot", "-q", s(&src), s(repo), "--name", name]));
        }
        // R's twin under another id: its snapshot of the same tree refers
        // only to packs R holds too, so only the repository id tells them apart.
        let twin = top.join("twin");
        run("cp", &["-a".as_ref(), r.as_os_str(), twin.as_os_str()]);
        let cfg = twin.join("hbb-repo");
        let mut j: serde_json::Value = serde_json::from_slice(&fs::read(&cfg).unwrap()).unwrap();
        assert_ne!(j["id"], "00112233445566778899aabbccddeeff");
        j["id"] = "00112233445566778899aabbccddeeff".into();
        fs::write(&cfg, serde_json::to_vec_pretty(&j).unwrap()).unwrap();
        let src = top.join("src-s1");
        let o = hbb(&[
            "snapshot",
            "-q",
            "--json",
            s(&src),
            s(&twin),
            "--name",
            "cross",
        ]);
        assert_eq!(json(&o)["snapshot"]["bytes_stored"], 0);
        for name in ["s1", "othersnap"] {
            fs::remove_dir_all(top.join(format!("src-{name}"))).unwrap();
        }
        std::os::unix::fs::symlink(&other, top.join("link-to-other")).unwrap();
        std::os::unix::fs::symlink(&r, top.join("link-to-r")).unwrap();
        std::os::unix::fs::symlink("../other", r.join("inner-link")).unwrap();
        let mut w = World {
            top,
            r,
            other,
            home,
            secret,
            forbidden: Vec::new(),
        };
        w.forbidden = w.forbidden();
        w
    }

    /// Every path under `top` but inside R, with its type, size and mtime.
    fn listing(&self) -> Vec<String> {
        fn walk(p: &Path, skip: &Path, out: &mut Vec<String>) {
            use std::os::unix::fs::MetadataExt;
            let m = fs::symlink_metadata(p).unwrap();
            if p == skip {
                // R's own directory changes with what R holds.
                out.push(format!("{} {:?}", p.display(), m.file_type()));
                return;
            }
            out.push(format!(
                "{} {:?} {} {}.{}",
                p.display(),
                m.file_type(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            ));
            if m.is_dir() {
                for e in fs::read_dir(p).unwrap() {
                    walk(&e.unwrap().path(), skip, out);
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.top, &self.r, &mut v);
        v.sort();
        v
    }

    /// What no reply may hold: the secret, the other repository's id,
    /// snapshot file and pack contents.
    fn forbidden(&self) -> Vec<Vec<u8>> {
        let mut v = vec![self.secret.as_bytes().to_vec()];
        let id = json(&hbb(&["info", "--json", s(&self.other)]))["id"]
            .as_str()
            .unwrap()
            .to_string();
        v.push(id.as_bytes().to_vec());
        v.push(parse_hex(&id));
        let snap = fs::read(self.other.join("snapshots/othersnap.hbb")).unwrap();
        v.push(snap[snap.len() - 64..].to_vec());
        for p in sealed_packs(&self.other) {
            let b = fs::read(p).unwrap();
            v.push(b[32..96].to_vec());
            v.push(b[b.len() - 64..].to_vec());
        }
        v
    }

    #[track_caller]
    fn check_nothing_leaked(&self, seen: &[u8]) {
        for f in &self.forbidden {
            assert!(
                !seen.windows(f.len()).any(|w| w == f.as_slice()),
                "a reply gave away {:?}",
                String::from_utf8_lossy(f)
            );
        }
    }
}

fn parse_hex(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn open(path: &Path, create: bool) -> Request {
    use std::os::unix::ffi::OsStrExt;
    Request::Open {
        path: path.as_os_str().as_bytes().to_vec(),
        create,
    }
}

/// One raw message: length, id, header length, header, payload (all as given).
fn raw_message(len: u32, id: u32, hlen: u32, rest: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&hlen.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

#[test]
fn a_hostile_client_gets_nothing_outside_the_repository_it_is_restricted_to() {
    let t = Tmp::new("remote-hostile");
    let logs = t.path("logs");
    fs::create_dir_all(&logs).unwrap();
    let w = World::make(t.path("world"));
    let before = w.listing();
    let r_snapshots = dir_names(&w.r.join("snapshots"));
    let mut n = 0;
    let mut serve = || {
        n += 1;
        Conn::serve(&w.r, &w.home, logs.join(format!("serve-{n}.err")))
    };

    // --- Opening anything but R.
    let mut c = serve();
    assert_eq!(c.hello(), proto::VERSION);
    for req in [Request::List, Request::Known, Request::Info] {
        let m = c.refused(&req, &[]);
        assert!(m.contains("no repository"), "{m}");
    }
    let refused_paths: Vec<PathBuf> = vec![
        w.other.clone(),
        w.r.join(".."),
        w.r.join("../other"),
        w.r.join("snapshots/../../other"),
        w.top.join("link-to-other"),
        w.r.join("inner-link"),
        w.r.join("snapshots"),
        w.r.join("hbb-repo"),
        w.top.join("secret.txt"),
        PathBuf::from("/"),
        PathBuf::from("~"),
        PathBuf::from("~/.."),
        PathBuf::from("../other"),
        PathBuf::from("/nonexistent/at/all"),
        PathBuf::from("r\0/.."),
    ];
    let mut messages = Vec::new();
    for p in &refused_paths {
        let m = c.refused(&open(p, false), &[]);
        assert!(m.contains("refused"), "{}: {m}", p.display());
        messages.push(m);
    }
    // No oracle: a secret file and a missing path are refused alike.
    let shape = |m: &str| m.split_once(": refused").map(|x| x.1.to_string());
    assert_eq!(shape(&messages[8]), shape(&messages[13]));
    // Nothing is created outside R either.
    for p in [
        w.top.join("new-repo"),
        w.other.join("sub"),
        w.top.join("link-to-other/x"),
    ] {
        let m = c.refused(&open(&p, true), &[]);
        assert!(m.contains("refused"), "{}: {m}", p.display());
        assert!(!p.exists(), "{} was created", p.display());
    }
    let m = c.refused(&open(&w.other, true), &[]);
    assert!(m.contains("refused"), "{m}");
    // R through a symbolic link that resolves to it is R.
    let r_id = match c.call(&open(&w.top.join("link-to-r"), false), &[]).0 {
        Reply::Opened { repo_id, root } => {
            assert_eq!(Path::new(&root), w.r.canonicalize().unwrap());
            repo_id
        }
        r => panic!("R refused: {r:?}"),
    };
    let local_id = json(&hbb(&["info", "--json", s(&w.r)]))["id"].clone();
    assert_eq!(
        serde_json::Value::from(r_id.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        local_id
    );
    let m = c.refused(&open(&w.other, false), &[]);
    assert!(m.contains("open already"), "{m}");

    // --- Reading: snapshot names that are paths, frames that are not R's.
    for name in [
        "../../x",
        "a/b",
        ".hidden",
        "..",
        "",
        "s1/../s1",
        "../other/snapshots/othersnap",
        "../../other/snapshots/othersnap",
        "/etc/passwd",
        "s1\0",
        "s1.hbb",
        "othersnap",
    ] {
        c.refused(
            &Request::ReadSnapshot {
                name: name.to_string(),
            },
            &[],
        );
    }
    let (r, own) = c.call(&Request::ReadSnapshot { name: "s1".into() }, &[]);
    assert!(matches!(r, Reply::Data), "{r:?}");
    assert_eq!(own, fs::read(w.r.join("snapshots/s1.hbb")).unwrap());
    let (r, known) = c.call(&Request::Known, &[]);
    let Reply::Known { count } = r else {
        panic!("{r:?}")
    };
    assert!(count > 0 && known.len() == count as usize * proto::KNOWN_ENTRY);
    let e = &known[..proto::KNOWN_ENTRY];
    let (r_pack, r_off, r_clen): ([u8; 16], u64, u32) = (
        e[32..48].try_into().unwrap(),
        u64::from_le_bytes(e[48..56].try_into().unwrap()),
        u32::from_le_bytes(e[56..60].try_into().unwrap()),
    );
    let (r, frame) = c.call(
        &Request::ReadFrame {
            pack: r_pack,
            offset: r_off,
            clen: r_clen,
        },
        &[],
    );
    assert!(matches!(r, Reply::Data) && frame.len() == r_clen as usize);
    let other_packs: Vec<[u8; 16]> = sealed_packs(&w.other)
        .iter()
        .map(|p| {
            parse_hex(p.file_stem().unwrap().to_str().unwrap())
                .try_into()
                .unwrap()
        })
        .collect();
    assert!(!other_packs.is_empty());
    let r_len = fs::metadata(&sealed_packs(&w.r)[0]).unwrap().len();
    for (pack, offset, clen) in [
        (other_packs[0], 32, 1000),
        (other_packs[0], r_off, r_clen),
        ([0u8; 16], 32, 10),
        ([0xff; 16], 32, 10),
        (r_pack, 0, 64),
        (r_pack, r_len - 10, 100),
        (r_pack, r_len, 1),
        (r_pack, u64::MAX - 4, 10),
        (r_pack, 32, u32::MAX),
        (r_pack, 32, proto::MAX_MESSAGE / 2),
        (r_pack, 1 << 62, 1 << 20),
    ] {
        c.refused(&Request::ReadFrame { pack, offset, clen }, &[]);
    }
    // Nothing, from anywhere, is nothing.
    let (_, nothing) = c.call(
        &Request::ReadFrame {
            pack: r_pack,
            offset: u64::MAX,
            clen: 0,
        },
        &[],
    );
    assert!(nothing.is_empty());

    // --- Writing without the lock, then with it.
    let store = |raw| Request::Store {
        hash: [7; 32],
        len: 5,
        raw,
        level: 3,
    };
    c.refused(&store(false), b"hello");
    c.refused(&store(true), b"hello");
    c.refused(&Request::Seal, &[]);
    c.refused(&Request::Commit { name: "s9".into() }, &own);
    let r = c.call(
        &Request::Lock {
            what: "hostile\nclient".into(),
            wait_ms: 0,
        },
        &[],
    );
    assert!(matches!(r.0, Reply::Done), "{r:?}");
    let other_snap = fs::read(w.other.join("snapshots/othersnap.hbb")).unwrap();
    let cross = fs::read(w.top.join("twin/snapshots/cross.hbb")).unwrap();
    let m = c.refused(
        &Request::Commit {
            name: "cross".into(),
        },
        &cross,
    );
    assert!(m.contains("another repository"), "{m}");
    for (name, payload) in [
        ("../../evil", &own),
        ("a/b", &own),
        (".hidden", &own),
        ("", &own),
        ("s1", &own),
        // s1's file under another name: the name inside differs.
        ("s1copy", &own),
        // Another repository's snapshot, under its own name and another.
        ("cross", &cross),
        ("othersnap", &other_snap),
        ("stolen", &other_snap),
        ("garbage", &b"HBBARCH\0 not really an archive".to_vec()),
        ("empty", &Vec::new()),
    ] {
        c.refused(&Request::Commit { name: name.into() }, payload);
    }
    // A raw block that does not match its hash is not stored.
    let m = c.refused(&store(true), b"hello");
    assert!(m.contains("damaged"), "{m}");
    // Nor a frame: a real zstd frame of other bytes than its hash names,
    // one that is no frame at all, one of another length. (What one
    // client stores, every later snapshot deduplicates against.)
    let frame = zstd::bulk::compress(b"hello", 3).unwrap();
    for (payload, len) in [(frame.clone(), 5), (b"not zstd".to_vec(), 5), (frame, 4)] {
        let req = Request::Store {
            hash: [7; 32],
            len,
            raw: false,
            level: 3,
        };
        let m = c.refused(&req, &payload);
        assert!(m.contains("damaged"), "{m}");
    }
    // A block larger than a remote repository takes is refused before
    // anything is allocated for it (a small frame of 1 GiB of zeros).
    let bomb = zstd::bulk::compress(&vec![0u8; 8 << 20], 19).unwrap();
    for raw in [false, true] {
        let m = c.refused(
            &Request::Store {
                hash: [7; 32],
                len: 1 << 30,
                raw,
                level: 3,
            },
            &bomb,
        );
        assert!(m.contains("at most 64 MiB"), "{m}");
    }
    // R's own snapshot, renamed and with one block's hash changed: its
    // pack exists, but the block is not in it as the snapshot says. (A
    // snapshot is what the block table is rebuilt from: a lie there would
    // make later snapshots of every host deduplicate against nothing.)
    {
        let mut a = hbb::archive::Archive::from_bytes(own.clone(), Path::new("s1")).unwrap();
        let i = a
            .index
            .blocks
            .iter()
            .position(|b| matches!(b.loc, hbb::archive::BlockLoc::External { .. }))
            .unwrap();
        a.index.blocks[i].hash = [9; 32];
        let mut ext = a.ext.clone();
        ext.snapshot.as_mut().unwrap().name = "forged".into();
        // Made outside the watched world (its listing is compared).
        let f = w.top.parent().unwrap().join("forged.hbb");
        let sink = hbb::archive::writer::Sink::create(&f).unwrap();
        let wr = hbb::archive::writer::ArchiveWriter::new(sink, a.block_size(), [3; 16]).unwrap();
        wr.finish(&a.index, &ext, 3).unwrap();
        let forged = fs::read(&f).unwrap();
        fs::remove_file(&f).unwrap();
        let m = c.refused(
            &Request::Commit {
                name: "forged".into(),
            },
            &forged,
        );
        assert!(m.contains("not in its pack"), "{m}");
    }
    // The same frame under its true hash is stored.
    let good = Request::Store {
        hash: *blake3::hash(b"hello").as_bytes(),
        len: 5,
        raw: false,
        level: 3,
    };
    let frame = zstd::bulk::compress(b"hello", 3).unwrap();
    let r = c.call(&good, &frame);
    assert!(matches!(r.0, Reply::Stored { .. }), "{r:?}");
    c.refused(
        &Request::AddRun {
            run_json: "{not json".into(),
        },
        &[],
    );
    c.refused(
        &Request::Prune {
            options_json: "[]".into(),
        },
        &[],
    );
    let j = match c.call(&Request::List, &[]).0 {
        Reply::Json(j) => j,
        r => panic!("{r:?}"),
    };
    let rows: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["name"], "s1");
    w.check_nothing_leaked(&c.seen);
    let (st, _) = c.close();
    assert!(st.success(), "{st}");

    // A lock wait no clock can add (the server must not panic on it).
    let mut c = serve();
    c.hello();
    c.call(&open(&w.r, false), &[]);
    let r = c.call(
        &Request::Lock {
            what: "x".into(),
            wait_ms: u64::MAX,
        },
        &[],
    );
    assert!(matches!(r.0, Reply::Done), "{r:?}");
    c.close();

    // --- Undecodable input: the server may close, it must not crash.
    let junk: Vec<Vec<u8>> = vec![
        raw_message(u32::MAX, 1, 0, &[]),
        raw_message(proto::MAX_MESSAGE + 1, 1, 0, &[]),
        raw_message(4, 1, 0, &[]),
        raw_message(0, 0, 0, &[]),
        raw_message(100, 1, 200, &[0; 92]),
        raw_message(100, 1, u32::MAX, &[0; 92]),
        raw_message(20, 1, 12, &[0xff; 12]),
        raw_message(20, 1, 12, &[0x0c; 12]),
        // A claim of 1 GiB followed by a few bytes and the end of the stream.
        raw_message(proto::MAX_MESSAGE, 1, proto::MAX_MESSAGE - 8, b"abc"),
        raw_message(proto::MAX_MESSAGE, 1, 2, &[0, 0]),
        vec![0x10],
    ];
    for j in &junk {
        let mut c = serve();
        c.hello();
        c.send_raw(j);
        let _ = c.close();
    }
    // Garbage instead of a greeting, and a client too old.
    for g in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
        vec![0; 8],
        b"HBBRPC\x00\x00".to_vec(),
    ] {
        let mut c = serve();
        c.send_raw(&g);
        let (st, err) = c.close();
        assert!(!st.success() && err.contains("hbb: error"), "{st}: {err}");
    }
    // A client too old hears why.
    let mut c = serve();
    c.send_raw(b"HBBRPC\x00\x00");
    assert!(matches!(
        c.next_event(),
        Event::Greeting(Ok(proto::VERSION))
    ));
    match c.next_event() {
        Event::Message(Ok(Some((0, Reply::Error(m), _)))) => {
            assert!(m.contains("upgrade hbb on the client"), "{m}")
        }
        _ => panic!("no error for a client too old"),
    }
    c.close();
    // Nothing at all, then the end.
    let c = serve();
    c.close();

    // R is whole, holds nothing new, and nothing changed around it.
    assert_eq!(dir_names(&w.r.join("snapshots")), r_snapshots);
    assert_ok(&hbb(&["verify", "-q", s(&w.r)]));
    assert_ok(&hbb(&["verify", "-q", s(&w.other)]));
    let after = w.listing();
    assert_eq!(before, after, "something changed outside R");
    let tmp = w.r.join("tmp");
    assert!(!tmp.exists() || dir_names(&tmp).is_empty());
}

/// ssh with a second key whose authorized_keys line forces
/// `hbb serve --restrict-to-repository R`.
fn forced_key(net: &Net, dir: &Path, r: &Path) -> String {
    let key = dir.join("forced_key");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "forced", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    let line = format!(
        "command=\"{} serve --restrict-to-repository {}\",restrict {}",
        bin(),
        s(r),
        public.trim()
    );
    let ak = net.dir().join("authorized_keys");
    let mut f = fs::OpenOptions::new().append(true).open(&ak).unwrap();
    writeln!(f, "{line}").unwrap();
    let config = fs::read_to_string(net.dir().join("ssh_config")).unwrap();
    let ours = net.dir().join("id_ed25519");
    assert!(config.contains(s(&ours)));
    let cfg = dir.join("forced_ssh_config");
    fs::write(&cfg, config.replace(s(&ours), s(&key))).unwrap();
    let ssh = net.rsh().split_whitespace().next().unwrap().to_string();
    format!("{ssh} -F {}", s(&cfg))
}

#[test]
fn a_forced_command_key_confines_ssh_clients_to_one_repository() {
    let t = Tmp::new("remote-forced");
    let net = net(&["agent"]);
    let w = World::make(t.path("world"));
    let rsh = forced_key(&net, t.root(), &w.r);
    let forced = |args: &[&str]| {
        // The forced command ignores what the client asks ssh to run.
        hbb_env(
            args,
            &[("HBB_RSH", &rsh), ("HBB_REMOTE_PATH", "/nonexistent/hbb")],
        )
    };
    let (ur, uo) = (url(&net, "agent", &w.r), url(&net, "agent", &w.other));
    // The unrestricted key reaches the other repository: the refusals
    // below are the forced command's.
    assert_eq!(names(&net, &uo), vec!["othersnap"]);
    let before = w.listing();

    let j = json(&forced(&["list", "--json", &ur]));
    assert_eq!(j[0]["name"], "s1", "{j}");
    for target in [
        uo.clone(),
        url(&net, "agent", &w.top.join("link-to-other")),
        url(&net, "agent", &w.r.join("inner-link")),
        url(&net, "agent", &w.r.join("..")),
        format!("ssh://root@{}/", net.host("agent").ip),
    ] {
        let o = forced(&["list", &target]);
        assert!(
            !o.status.success(),
            "{target} listed through the forced key"
        );
        assert!(stderr(&o).contains("refused"), "{target}: {}", stderr(&o));
    }
    let o = forced(&[
        "restore",
        "-q",
        &format!("{uo}::othersnap"),
        s(&t.path("x")),
    ]);
    assert!(!o.status.success() && !t.path("x/note.txt").exists());
    let o = forced(&["repo", "init", &url(&net, "agent", &w.top.join("new"))]);
    assert!(!o.status.success() && !w.top.join("new").exists());

    // R itself works fully: a snapshot in, and back out.
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    write_noise(&src.join("n.bin"), 500_000, 5);
    write_pattern(&src.join("p.txt"), 100_000, 6);
    settle(&src);
    assert_ok(&forced(&["snapshot", "-q", s(&src), &ur, "--name", "s2"]));
    assert_ok(&forced(&[
        "restore",
        "-q",
        &format!("{ur}::s2"),
        s(&t.path("out")),
    ]));
    compare_trees(&src, &t.path("out"));
    diff_r(&src, &t.path("out"));

    // The protocol spoken by hand through the forced key.
    let ssh = net.rsh().split_whitespace().next().unwrap().to_string();
    let mut cmd = Command::new(&ssh);
    cmd.args(rsh.split_whitespace().skip(1))
        .arg(format!("root@{}", net.host("agent").ip))
        .arg("sh -c 'cat /etc/shadow'");
    let mut c = Conn::start(cmd, t.path("ssh.err"));
    assert_eq!(c.hello(), proto::VERSION);
    for p in [
        w.other.clone(),
        w.top.join("link-to-other"),
        w.r.join("../other"),
        PathBuf::from("~/.."),
    ] {
        let m = c.refused(&open(&p, false), &[]);
        assert!(m.contains("refused"), "{m}");
    }
    assert!(matches!(
        c.call(&open(&w.r, false), &[]).0,
        Reply::Opened { .. }
    ));
    c.refused(
        &Request::ReadSnapshot {
            name: "../../other/snapshots/othersnap".into(),
        },
        &[],
    );
    w.check_nothing_leaked(&c.seen);
    c.send_raw(&raw_message(u32::MAX, 9, 0, &[]));
    let (_, err) = c.close();
    assert!(!err.contains("root:"), "{err}");

    assert_eq!(w.listing(), before, "something changed outside R");
    assert_ok(&hbb(&["verify", "-q", s(&w.r)]));
}

// ---------------------------------------------------------------------
// 4. Errors that say what is wrong, and where.
// ---------------------------------------------------------------------

#[test]
fn errors_name_the_host_and_say_what_to_do() {
    let t = Tmp::new("remote-errors");
    let net = net(&["agent"]);
    let ip = net.host("agent").ip.clone();
    let repo = t.path("repo");
    assert_ok(&hbb(&["repo", "init", "-q", s(&repo)]));
    let u = url(&net, "agent", &repo);
    assert!(names(&net, &u).is_empty());

    // No hbb at the far end.
    let o = master_env(
        &net,
        &["list", &u],
        &[("HBB_REMOTE_PATH", "/nonexistent/hbb")],
    );
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains(&ip) && e.contains("installed") && e.contains("HBB_REMOTE_PATH"),
        "{e}"
    );
    // An older hbb at the far end.
    let old = t.path("old-hbb");
    fs::write(
        &old,
        format!("#!/bin/sh\nHBB_TEST_PROTOCOL=0 exec {} \"$@\"\n", bin()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
    for args in [
        vec!["list", u.as_str()],
        vec!["snapshot", "-q", s(t.root()), u.as_str()],
    ] {
        let o = master_env(&net, &args, &[("HBB_REMOTE_PATH", s(&old))]);
        let e = stderr(&o);
        assert!(!o.status.success(), "{e}");
        assert!(
            e.contains(&ip) && e.contains("older") && e.contains("upgrade"),
            "{e}"
        );
    }
    // An hbb from before `serve`: its own clap refuses the command.
    let older = t.path("older-hbb");
    fs::write(&older, format!("#!/bin/sh\nexec {} \"no-$1\"\n", bin())).unwrap();
    fs::set_permissions(&older, fs::Permissions::from_mode(0o755)).unwrap();
    let o = master_env(&net, &["list", &u], &[("HBB_REMOTE_PATH", s(&older))]);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains(&ip) && e.contains("older") && e.contains("upgrade"),
        "{e}"
    );
    // No ssh.
    let o = hbb_env(
        &["list", &u],
        &[("HBB_RSH", "/nonexistent/ssh"), ("HBB_REMOTE_PATH", bin())],
    );
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("HBB_RSH"), "{e}");

    // Not a repository (an empty directory, or nothing).
    let plain = t.path("plain");
    fs::create_dir_all(&plain).unwrap();
    for p in [&plain, &t.path("missing")] {
        let up = url(&net, "agent", p);
        for args in [
            vec!["list", up.as_str()],
            vec!["info", up.as_str()],
            vec!["verify", up.as_str()],
            vec!["snapshot", "-q", s(&plain), up.as_str()],
        ] {
            let o = master(&net, &args);
            let e = stderr(&o);
            assert!(!o.status.success(), "{args:?}: {e}");
            assert!(e.contains("not an hbb repository"), "{args:?}: {e}");
        }
        let o = master(
            &net,
            &["restore", "-q", &format!("{up}::x"), s(&t.path("out"))],
        );
        assert!(
            stderr(&o).contains("not an hbb repository"),
            "{}",
            stderr(&o)
        );
    }
    // Over ssh only repositories: an archive file there is not one.
    let file = t.path("file.hbb");
    assert_ok(&hbb(&["snapshot", "-q", s(&plain), s(&file)]));
    let uf = url(&net, "agent", &file);
    for args in [
        vec!["list", uf.as_str()],
        vec!["restore", "-q", uf.as_str(), s(&t.path("out"))],
    ] {
        let o = master(&net, &args);
        assert!(
            !o.status.success() && stderr(&o).contains("not an hbb repository"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // A repository where a snapshot is wanted.
    let o = master(&net, &["restore", "-q", &u, s(&t.path("out"))]);
    assert!(
        !o.status.success() && stderr(&o).contains("is a repository: name a snapshot"),
        "{}",
        stderr(&o)
    );
    let o = master(
        &net,
        &["restore", "-q", &format!("{u}::nosuch"), s(&t.path("out"))],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("no snapshot named"),
        "{}",
        stderr(&o)
    );

    // An unreachable host: given up on within ssh's ConnectTimeout.
    net.cut("agent");
    let t0 = Instant::now();
    let o = master(&net, &["list", &u]);
    let took = t0.elapsed();
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {e}");
    assert!(e.contains(&ip), "{e}");
    net.restore("agent");
    assert!(names(&net, &u).is_empty());
}

/// A client that stops talking without closing the connection (a cut link
/// that sshd does not notice): `hbb serve` gives up after its idle time and
/// its lock goes with it, so the next snapshot is not locked out. A live
/// client pings, and is not given up on. (The idle time, 5 minutes, is 3 s
/// here through a test knob.)
#[test]
fn a_silent_client_is_given_up_and_its_lock_freed() {
    let t = Tmp::new("remote-idle");
    let r = t.path("r");
    assert_ok(&hbb(&["repo", "init", s(&r)]));
    let src = t.path("src");
    make_every_kind(&src);
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--restrict-to-repository", s(&r)])
        .env("HBB_TEST_SERVE_IDLE", "3");
    let mut c = Conn::start(cmd, t.path("serve.err"));
    c.hello();
    let open = c.call(&open(&r, false), &[]);
    assert!(matches!(open.0, Reply::Opened { .. }), "{open:?}");
    let lock = c.call(
        &Request::Lock {
            what: "a client that goes quiet".into(),
            wait_ms: 0,
        },
        &[],
    );
    assert!(matches!(lock.0, Reply::Done), "{lock:?}");
    // Held: another writer is refused, naming the holder.
    let o = hbb(&["snapshot", s(&src), s(&r)]);
    assert_fails(&o, 1, "a client that goes quiet");
    // Pings keep it (5 s of them, longer than the idle time)...
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        assert!(matches!(c.call(&Request::Ping, &[]).0, Reply::Done));
    }
    assert!(
        wait_exit(&mut c.child, 0).is_none(),
        "gave up on a live client"
    );
    // ...silence ends it, though its stdin stays open.
    let st = wait_exit(&mut c.child, 15).expect("hbb serve still running after 15 s of silence");
    assert!(st.success(), "{st}: {}", c.stderr());
    assert!(c.stderr().contains("no request for 3 s"), "{}", c.stderr());
    assert_ok(&hbb(&["snapshot", s(&src), s(&r)]));
}
