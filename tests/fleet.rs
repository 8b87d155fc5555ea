//! The master across hosts: a master (this namespace), two managers and an
//! agent, each a network namespace with its own sshd (tests/common/net.rs).
//! Jobs run on the managers through ssh and store into the agent's
//! repository; one manager cut off fails its runs, shows in `status`, and
//! holds nobody else up.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::net::Net;
use common::*;
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Fleet {
    t: Tmp,
    net: Net,
    env: Vec<(String, String)>,
}

impl Fleet {
    /// The hosts, each with its sshd; ssh sessions (and this side's
    /// commands) find hbb through HBB_REMOTE_PATH and each other through
    /// HBB_RSH.
    fn new(hosts: &[&str], name: &str) -> Fleet {
        let bin = env!("CARGO_BIN_EXE_hbb");
        let net = Net::with_env(hosts, &[("HBB_REMOTE_PATH", bin)]);
        let env = vec![
            ("HBB_RSH".to_string(), net.rsh()),
            ("HBB_REMOTE_PATH".to_string(), bin.to_string()),
        ];
        Fleet {
            t: Tmp::new(name),
            net,
            env,
        }
    }
    /// `hbb --home MASTER ARGS`, with the fleet's environment, to spawn.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hbb"));
        cmd.arg("--home").arg(self.t.path("master")).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
    fn hbb(&self, args: &[&str]) -> std::process::Output {
        let home = s(&self.t.path("master")).to_string();
        let mut a = vec!["--home", &home];
        a.extend_from_slice(args);
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        hbb_env(&a, &env)
    }
    fn json(&self, args: &[&str]) -> Value {
        let o = self.hbb(args);
        assert!(
            o.status.success() || o.status.code() == Some(3),
            "hbb {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }
    /// Runs of `job` that ended with `status`, started after `since_ns`.
    fn runs(&self, job: &str, status: &str, since_ns: i64) -> Vec<Value> {
        self.json(&["history", "--json", "-n", "1000", job])
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == status && r["started_ns"].as_i64().unwrap() >= since_ns)
            .cloned()
            .collect()
    }
    fn status_of(&self, job: &str) -> Value {
        self.json(&["status", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job"] == job)
            .cloned()
            .unwrap()
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[test]
fn master_runs_jobs_on_two_managers_into_an_agent() {
    let bin = env!("CARGO_BIN_EXE_hbb");
    let f = Fleet::new(&["m1", "m2", "agent"], "fleet");
    let t = &f.t;
    // The data of each manager (one filesystem here: the paths differ).
    let src1 = t.path("m1-data");
    make_every_kind(&src1);
    write_noise(&src1.join("big.bin"), 3 << 20, 1);
    let src2 = t.path("m2-data");
    std::fs::create_dir_all(src2.join("db")).unwrap();
    write_noise(&src2.join("db/table.dat"), 2 << 20, 2);
    std::fs::write(src2.join("db/log.txt"), "x\n".repeat(5000)).unwrap();

    let agent = f.net.host("agent").ip.clone();
    let repo = t.path("agent-repo");
    let repo_url = format!("ssh://root@{agent}{}", s(&repo));
    assert_ok(&f.hbb(&["repo", "init", &repo_url]));

    let ip1 = f.net.host("m1").ip.clone();
    let ip2 = f.net.host("m2").ip.clone();
    assert_ok(&f.hbb(&[
        "host",
        "add",
        "m1",
        &format!("ssh://root@{ip1}"),
        "--group",
        "web",
        "--hbb",
        bin,
    ]));
    assert_ok(&f.hbb(&[
        "host",
        "add",
        "m2",
        &format!("root@{ip2}"),
        "--group",
        "db",
        "--hbb",
        bin,
    ]));
    // A job of an unknown host, or with relative paths there, is refused.
    assert_fails(
        &f.hbb(&[
            "job",
            "add",
            "x",
            "--host",
            "nope",
            "--source",
            "/x",
            "--repo",
            &repo_url,
            "--schedule",
            "hourly",
        ]),
        1,
        "no host named",
    );
    assert_fails(
        &f.hbb(&[
            "job",
            "add",
            "x",
            "--host",
            "m1",
            "--source",
            "rel",
            "--repo",
            &repo_url,
            "--schedule",
            "hourly",
        ]),
        1,
        "absolute",
    );
    let hosts = f.json(&["host", "list", "--json", "--check"]);
    for h in hosts.as_array().unwrap() {
        assert!(
            h["check"].as_str().unwrap().starts_with("hbb "),
            "host check: {h}"
        );
    }

    assert_ok(&f.hbb(&[
        "job",
        "add",
        "j1",
        "--host",
        "m1",
        "--source",
        s(&src1),
        "--repo",
        &repo_url,
        "--schedule",
        "every 3s",
        "--keep-last",
        "2",
    ]));
    assert_ok(&f.hbb(&[
        "job",
        "add",
        "j2",
        "--host",
        "m2",
        "--source",
        s(&src2),
        "--repo",
        &repo_url,
        "--schedule",
        "every 3s",
        "--compress-on",
        "agent",
    ]));

    // A second job on m1 (group web): with --group-max-jobs 1 the
    // daemon never runs it at the same time as j1.
    assert_ok(&f.hbb(&[
        "job",
        "add",
        "j3",
        "--host",
        "m1",
        "--source",
        s(&src1.join("dir")),
        "--repo",
        &repo_url,
        "--schedule",
        "every 3s",
    ]));

    // By hand, one group: only its jobs run (j1 and j3, not j2).
    let t0 = now_ns();
    assert_ok(&f.hbb(&["job", "run", "--group", "web"]));
    assert_eq!(f.runs("j1", "ok", t0).len(), 1);
    assert_eq!(f.runs("j3", "ok", t0).len(), 1);
    assert!(f.runs("j2", "ok", t0).is_empty());
    let first = &f.runs("j1", "ok", t0)[0];
    assert!(first["bytes_stored"].as_u64().unwrap() > 0, "{first}");
    // Its snapshot is in the agent's repository, made on m1 (the run's
    // data never passed through here): restore it from the master's side.
    let snap = first["snapshot"].as_str().unwrap().to_string();
    let dest = t.path("restored-j1");
    assert_ok(&f.hbb(&["restore", &format!("{repo_url}::{snap}"), s(&dest)]));
    diff_r(&src1, &dest);
    compare_trees(&src1, &dest);

    // A job of the master itself into the agent's repository.
    let own = t.path("master-data");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("etc.conf"), "a = 1\n").unwrap();
    assert_ok(&f.hbb(&[
        "job",
        "add",
        "own",
        "--source",
        s(&own),
        "--repo",
        &repo_url,
        "--schedule",
        "yearly",
        "--compress-on",
        "agent",
    ]));
    assert_ok(&f.hbb(&["job", "run", "own"]));
    let st = f.status_of("own");
    assert_eq!(
        (st["last_status"].as_str(), st["snapshots"].as_u64()),
        (Some("ok"), Some(1)),
        "{st}"
    );
    assert_ok(&f.hbb(&["job", "rm", "own"]));

    // The daemon runs both on schedule.
    let daemon = Daemon(
        f.command(&[
            "daemon",
            "-f",
            "--retry-delay",
            "1s",
            "--retries",
            "1",
            "--max-jobs",
            "4",
            "--group-max-jobs",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let t1 = now_ns();
    wait_until("two scheduled runs of each job", 90, || {
        f.runs("j1", "ok", t1).len() >= 2 && f.runs("j2", "ok", t1).len() >= 2
    });
    wait_until("two scheduled runs of j3", 60, || {
        f.runs("j3", "ok", t1).len() >= 2
    });
    let span = |r: &Value| {
        (
            r["started_ns"].as_i64().unwrap(),
            r["finished_ns"].as_i64().unwrap(),
        )
    };
    for a in f.runs("j1", "ok", t1) {
        for b in f.runs("j3", "ok", t1) {
            let (a0, a1) = span(&a);
            let (b0, b1) = span(&b);
            assert!(
                a1 <= b0 || b1 <= a0,
                "j1 and j3 (one group) overlapped: {a} {b}"
            );
        }
    }
    // (Not `attention`: with runs every 3 s, a slow machine can make a
    // job "overdue" — no good run for two periods — which is right, but
    // not what this test is about.)
    let st = f.json(&["status", "--json"]);
    for j in st.as_array().unwrap() {
        assert!(
            ["ok", "running"].contains(&j["last_status"].as_str().unwrap()),
            "{j}"
        );
    }
    let j1 = f.status_of("j1");
    assert_eq!(
        (j1["host"].as_str(), j1["group"].as_str()),
        (Some("m1"), Some("web"))
    );
    // Retention ran on m1: at most two of j1's snapshots are kept.
    let n1 = j1["snapshots"].as_u64().unwrap();
    assert!((1..=2).contains(&n1), "{j1}");
    // j2's blocks were sent raw and compressed by the agent: its
    // snapshot restores equal, mounted from the master's side.
    let j2_snap = f.runs("j2", "ok", t1)[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let mnt = t.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    assert_ok(&f.hbb(&["mount", &repo_url, s(&mnt)]));
    let guard = Mounted(mnt.clone());
    diff_r(&src2, &mnt.join(&j2_snap));
    drop(guard);

    // m2 becomes unreachable: its runs fail and show in status; m1's go on.
    f.net.cut("m2");
    let cut = now_ns();
    wait_until("a failed run of j2 after the cut", 60, || {
        !f.runs("j2", "failed", cut).is_empty()
    });
    let ok_j1_before = f.runs("j1", "ok", cut).len();
    wait_until("j1 keeps running while m2 is down", 60, || {
        f.runs("j1", "ok", cut).len() >= ok_j1_before + 2
    });
    let failed = &f.runs("j2", "failed", cut)[0];
    let msg = failed["message"].as_str().unwrap();
    assert!(msg.contains("m2"), "the failure names the host: {msg}");
    let j2 = f.status_of("j2");
    assert_eq!(j2["attention"], true, "{j2}");
    let o = f.hbb(&["status"]);
    assert_eq!(o.status.code(), Some(3), "status exits 3 with attention");
    assert!(String::from_utf8_lossy(&o.stdout).contains("db/m2"));
    // One group's view: web is fine.
    let web = f.json(&["status", "--json", "--group", "web"]);
    let web = web.as_array().unwrap();
    assert_eq!(web.len(), 2);
    assert!(
        web.iter().all(|j| j["group"] == "web"
            && ["ok", "running"].contains(&j["last_status"].as_str().unwrap())),
        "{web:?}"
    );
    let o = f.hbb(&["status", "--group", "web"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("m2"));

    // Back: j2 succeeds again.
    f.net.restore("m2");
    let back = now_ns();
    let t_back = Instant::now();
    wait_until("j2 ok again once m2 is back", 90, || {
        !f.runs("j2", "ok", back).is_empty()
    });
    assert!(t_back.elapsed() < Duration::from_secs(90));
    assert_ne!(f.status_of("j2")["last_status"], "failed");
    // SIGTERM: the daemon abandons what runs and stops; then nothing
    // changes the repository any more.
    let mut daemon = daemon;
    // SAFETY: kill(2) of our own child.
    unsafe {
        libc::kill(daemon.0.id() as i32, libc::SIGTERM);
    }
    let st = daemon.0.wait().unwrap();
    assert!(st.success(), "daemon: {st}");
    // Every snapshot in the agent's repository verifies.
    assert_ok(&f.hbb(&["verify", &repo_url]));
}

/// A run on a manager stopped by the master (SIGTERM to `hbb job run`, as
/// the daemon's shutdown sends): the snapshot on the manager stops too
/// (its ssh session's stdin closes), and nothing is named in the repository.
#[test]
fn a_stopped_run_stops_on_the_manager_and_names_nothing() {
    let bin = env!("CARGO_BIN_EXE_hbb");
    let f = Fleet::new(&["m1", "agent"], "fleet-stop");
    let t = &f.t;
    let src = t.path("m1-data");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..10 {
        write_noise(&src.join(format!("f{i}.bin")), 16 << 20, i);
    }
    let agent = f.net.host("agent").ip.clone();
    let repo = t.path("agent-repo");
    let repo_url = format!("ssh://root@{agent}{}", s(&repo));
    assert_ok(&f.hbb(&["repo", "init", &repo_url]));
    let ip1 = f.net.host("m1").ip.clone();
    assert_ok(&f.hbb(&["host", "add", "m1", &format!("root@{ip1}"), "--hbb", bin]));
    assert_ok(&f.hbb(&[
        "job",
        "add",
        "big",
        "--host",
        "m1",
        "--source",
        s(&src),
        "--repo",
        &repo_url,
        "--schedule",
        "daily",
    ]));
    // Slow enough to be stopped in the middle: 160 MiB at 40 Mbit/s.
    f.net.limit("agent", "40mbit");
    let mut run = f.command(&["job", "run", "big"]).spawn().unwrap();
    let on_m1 = |pat: &str| {
        Command::new("pgrep")
            .args(["-f", pat])
            .output()
            .unwrap()
            .status
            .success()
    };
    let marker = "stop-with-stdin --job big";
    wait_until("the snapshot running on m1", 30, || on_m1(marker));
    // Some of it is on its way into the repository.
    wait_until("data arriving at the agent", 30, || {
        std::fs::read_dir(repo.join("tmp"))
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    });
    // SAFETY: kill(2) of our own child.
    unsafe {
        libc::kill(run.id() as i32, libc::SIGTERM);
    }
    let _ = run.wait();
    wait_until("the snapshot on m1 gone", 8, || !on_m1(marker));
    f.net.unlimit("agent");
    let list = f.json(&["list", "--json", &repo_url]);
    assert_eq!(list.as_array().unwrap().len(), 0, "nothing named: {list}");
    let st = f.json(&["status", "--json"]);
    let j = &st.as_array().unwrap()[0];
    assert_eq!(j["last_status"], "abandoned", "{j}");
    // And the next run makes a whole snapshot.
    assert_ok(&f.hbb(&["job", "run", "big"]));
    let list = f.json(&["list", "--json", &repo_url]);
    let name = list[0]["name"].as_str().unwrap().to_string();
    let dest = t.path("back");
    assert_ok(&f.hbb(&["restore", &format!("{repo_url}::{name}"), s(&dest)]));
    diff_r(&src, &dest);
}
