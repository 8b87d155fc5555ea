//! The master: jobs, the daemon (on schedule, no overlap, catch-up once,
//! retries, SIGTERM), status and history — real processes, real clocks.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Master {
    t: Tmp,
}

impl Master {
    fn new(name: &str) -> Master {
        let t = Tmp::new(name);
        std::fs::create_dir_all(t.path("src")).unwrap();
        make_every_kind(&t.path("src"));
        assert_ok(&hbb(&["repo", "init", "-q", s(&t.path("repo"))]));
        Master { t }
    }
    fn home(&self) -> String {
        s(&self.t.path("home")).to_string()
    }
    fn hbb(&self, args: &[&str]) -> std::process::Output {
        let home = self.home();
        let mut a = vec!["--home", &home];
        a.extend_from_slice(args);
        hbb(&a)
    }
    fn daemon(&self, extra: &[&str]) -> Daemon {
        let c = Command::new(bin())
            .args([
                "--home",
                &self.home(),
                "daemon",
                "-f",
                "--retry-delay",
                "1s",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Daemon(Some(c))
    }
    fn history(&self) -> Vec<serde_json::Value> {
        let o = self.hbb(&["history", "--json", "-n", "1000"]);
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut v = v.as_array().unwrap().clone();
        v.reverse(); // oldest first
        v
    }
}

/// SIGTERM, then the daemon's stderr.
/// A daemon started by a test: killed (SIGKILL) in Drop if the test
/// failed before stopping it, so that none outlives its test.
struct Daemon(Option<Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn stop(mut d: Daemon) -> String {
    let c = d.0.take().unwrap();
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "daemon: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ns(v: &serde_json::Value, k: &str) -> i64 {
    v[k].as_i64().unwrap()
}

#[test]
fn the_daemon_runs_jobs_on_schedule_without_overlap_and_catches_up_once() {
    let m = Master::new("daemon-schedule");
    let (src, repo) = (m.t.path("src"), m.t.path("repo"));
    let o = m.hbb(&[
        "job",
        "add",
        "two-s",
        "--source",
        s(&src),
        "--repo",
        s(&repo),
        "--schedule",
        "every 2s",
        "--keep-last",
        "3",
    ]);
    assert_ok(&o);
    // A job for a path that is no repository is refused.
    let o = m.hbb(&[
        "job",
        "add",
        "bad",
        "--source",
        s(&src),
        "--repo",
        s(&src),
        "--schedule",
        "hourly",
    ]);
    assert_fails(&o, 1, "not an hbb repository");
    let o = m.hbb(&[
        "job",
        "add",
        "bad",
        "--source",
        s(&src),
        "--repo",
        s(&repo),
        "--schedule",
        "daily 25:00",
    ]);
    assert_fails(&o, 1, "hour");

    let d = m.daemon(&[]);
    wait_until("three runs", 30, || {
        m.history().iter().filter(|r| r["status"] == "ok").count() >= 3
    });
    let log = stop(d);
    let runs = m.history();
    assert!(runs.len() >= 3, "{log}");
    for w in runs.windows(2) {
        assert!(
            ns(&w[1], "started_ns") >= ns(&w[0], "finished_ns"),
            "runs overlap: {w:?}"
        );
        // One run per slot: slots are 2 s apart.
        let gap = ns(&w[1], "started_ns") - ns(&w[0], "started_ns");
        assert!(gap > 1_000_000_000, "two runs {gap} ns apart: {log}");
    }
    for r in &runs {
        assert_eq!(r["status"], "ok", "{r}");
        assert!(!r["snapshot"].as_str().unwrap().is_empty());
    }
    // Retention ran after each run: at most three snapshots.
    let o = hbb(&["list", "--json", s(&repo)]);
    let snaps: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(snaps.as_array().unwrap().len() <= 3);

    // Down for three slots, then up: one catch-up run at once, not three.
    std::thread::sleep(Duration::from_secs(6));
    let before = m.history().len();
    let d = m.daemon(&[]);
    wait_until("the catch-up run", 20, || m.history().len() > before);
    let first = m.history()[before].clone();
    assert_eq!(first["trigger"], "catch-up", "{first}");
    wait_until("it ends", 20, || m.history()[before]["status"] != "running");
    let log = stop(d);
    assert!(log.contains("missed while the daemon was down"), "{log}");
    let catchups = m
        .history()
        .iter()
        .filter(|r| r["trigger"] == "catch-up")
        .count();
    assert_eq!(catchups, 1);

    // Status: the job, its last result, its next run, its size.
    let o = m.hbb(&["status", "--json"]);
    assert_ok(&o);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let j = &st[0];
    assert_eq!(j["job"], "two-s");
    assert_eq!(j["last_status"], "ok");
    assert_eq!(j["attention"], false);
    assert!(j["size"].as_u64().unwrap() > 0);
    assert!(!j["next_run"].as_str().unwrap().is_empty());
    let o = m.hbb(&["status"]);
    assert_ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("two-s"));
    // History of one job, by name or by source path.
    let o = m.hbb(&["history", "two-s"]);
    assert_ok(&o);
    let o = m.hbb(&["history", "--json", s(&src)]);
    let by_src: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(by_src.as_array().unwrap().len(), m.history().len());
    // A second daemon on the same home is refused.
    let d = m.daemon(&[]);
    std::thread::sleep(Duration::from_millis(300));
    let o = m.hbb(&["daemon", "-f"]);
    assert_fails(&o, 1, "a daemon is running already");
    stop(d);
}

#[test]
fn failed_runs_are_retried_and_shown_in_status() {
    let m = Master::new("daemon-fail");
    let repo = m.t.path("repo");
    let missing = m.t.path("not-there");
    assert_ok(&m.hbb(&[
        "job",
        "add",
        "broken",
        "--source",
        s(&missing),
        "--repo",
        s(&repo),
        "--schedule",
        "every 2s",
    ]));
    // Run now: it fails, and says why.
    let o = m.hbb(&["job", "run", "broken"]);
    assert_fails(&o, 1, "not-there");
    let d = m.daemon(&["--retries", "2"]);
    wait_until("a retry", 30, || {
        m.history()
            .iter()
            .any(|r| r["job"] == "broken" && r["trigger"] == "retry" && r["status"] == "failed")
    });
    let log = stop(d);
    assert!(log.contains("retry 1 of 2"), "{log}");
    let o = m.hbb(&["status", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "status exits 3 when something needs attention"
    );
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for j in st.as_array().unwrap() {
        assert_eq!(j["last_status"], "failed", "{j}");
        assert_eq!(j["attention"], true);
        assert!(j["last_message"].as_str().unwrap().contains("not-there"));
    }
    let o = m.hbb(&["status"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("! broken"), "{text}");
    // Removing a job keeps its history.
    assert_ok(&m.hbb(&["job", "rm", "broken"]));
    assert_fails(&m.hbb(&["job", "rm", "broken"]), 1, "no job named");
    assert!(m.history().iter().any(|r| r["job"] == "broken"));
}

#[test]
fn sigterm_abandons_a_running_snapshot_cleanly() {
    let m = Master::new("daemon-term");
    let (src, repo) = (m.t.path("big"), m.t.path("repo"));
    std::fs::create_dir_all(&src).unwrap();
    // Slow to compress: noise at a high level, enough of it (128 MiB) that
    // the run is still going when the daemon is stopped, however fast the
    // machine.
    for k in 0..16 {
        write_noise(&src.join(format!("n{k}")), 8 << 20, k);
    }
    assert_ok(&m.hbb(&[
        "job",
        "add",
        "slow",
        "--source",
        s(&src),
        "--repo",
        s(&repo),
        "--schedule",
        "every 2s",
        "--level",
        "19",
    ]));
    let d = m.daemon(&[]);
    wait_until("the run starts", 30, || {
        m.history().iter().any(|r| r["status"] == "running")
    });
    // One run of a job at a time, whoever starts it.
    let o = m.hbb(&["job", "run", "slow"]);
    assert_fails(&o, 1, "running already");
    std::thread::sleep(Duration::from_millis(300));
    let log = stop(d);
    assert!(log.contains("abandoned"), "{log}");
    let runs = m.history();
    let last = runs.last().unwrap();
    assert_eq!(last["status"], "abandoned", "{last}");
    // No snapshot counts, nothing partial is left, the repository verifies.
    let o = hbb(&["list", "--json", s(&repo)]);
    let snaps: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(snaps.as_array().unwrap().is_empty());
    let partial: Vec<_> = std::fs::read_dir(repo.join("snapshots")).unwrap().collect();
    assert!(partial.is_empty(), "{partial:?}");
    assert_ok(&hbb(&["verify", "-q", s(&repo)]));
}

#[test]
fn a_job_replaced_with_a_new_schedule_runs_on_it_without_a_restart() {
    let m = Master::new("daemon-replace");
    let (src, repo) = (m.t.path("src"), m.t.path("repo"));
    let add = |schedule: &str, replace: bool| {
        let mut a = vec![
            "job",
            "add",
            "j",
            "--source",
            s(&src),
            "--repo",
            s(&repo),
            "--schedule",
            schedule,
        ];
        if replace {
            a.push("--replace");
        }
        assert_ok(&m.hbb(&a));
    };
    add("yearly", false);
    let d = m.daemon(&[]);
    // The daemon has seen the job (next run: next New Year).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(m.history().is_empty());
    add("every 2s", true);
    wait_until("a run on the new schedule", 20, || {
        m.history().iter().any(|r| r["status"] == "ok")
    });
    stop(d);
}

#[test]
fn a_slot_during_a_run_by_hand_is_skipped_not_failed() {
    let m = Master::new("daemon-by-hand");
    let (src, repo) = (m.t.path("big"), m.t.path("repo"));
    std::fs::create_dir_all(&src).unwrap();
    for k in 0..4 {
        write_noise(&src.join(format!("n{k}")), 8 << 20, k);
    }
    assert_ok(&m.hbb(&[
        "job",
        "add",
        "slow",
        "--source",
        s(&src),
        "--repo",
        s(&repo),
        "--schedule",
        "every 2s",
        "--level",
        "19",
    ]));
    let home = m.home();
    let by_hand = Command::new(bin())
        .args(["--home", &home, "-q", "job", "run", "slow"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the run by hand starts", 30, || {
        m.history().iter().any(|r| r["status"] == "running")
    });
    let d = m.daemon(&[]);
    // Slots pass while the run by hand goes on.
    std::thread::sleep(Duration::from_secs(5));
    let o = by_hand.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = stop(d);
    let runs = m.history();
    assert_eq!(runs[0]["trigger"], "manual", "{runs:?}");
    assert_eq!(runs[0]["status"], "ok", "{runs:?}");
    for r in &runs {
        assert_ne!(r["status"], "failed", "{r}\n{log}");
    }
}

#[test]
fn a_run_by_hand_that_was_killed_is_not_shown_running_forever() {
    let m = Master::new("daemon-killed-by-hand");
    let (src, repo) = (m.t.path("big"), m.t.path("repo"));
    std::fs::create_dir_all(&src).unwrap();
    for k in 0..4 {
        write_noise(&src.join(format!("n{k}")), 8 << 20, k);
    }
    assert_ok(&m.hbb(&[
        "job",
        "add",
        "slow",
        "--source",
        s(&src),
        "--repo",
        s(&repo),
        "--schedule",
        "daily 03:00",
        "--level",
        "19",
    ]));
    let home = m.home();
    let mut by_hand = Command::new(bin())
        .args(["--home", &home, "-q", "job", "run", "slow"])
        .spawn()
        .unwrap();
    wait_until("the run starts", 30, || {
        m.history().iter().any(|r| r["status"] == "running")
    });
    by_hand.kill().unwrap();
    by_hand.wait().unwrap();
    let o = m.hbb(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st[0]["running"], false, "{st}");
    assert_eq!(st[0]["last_status"], "abandoned", "{st}");
    assert_eq!(st[0]["attention"], true, "{st}");
    assert_eq!(o.status.code(), Some(3));
}
