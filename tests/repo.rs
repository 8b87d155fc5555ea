//! The repository: incremental snapshots that stay whole, dedup across
//! sources, volume snapshots that store only changed blocks, prune (also
//! killed at every step), the catalog rebuilt, the writers' lock, an
//! interrupted snapshot resumed, export to one archive file.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `hbb snapshot SRC REPO --json` → the catalog row of the new snapshot.
#[track_caller]
fn snap(src: &Path, repo: &Path, extra: &[&str]) -> serde_json::Value {
    if src.is_dir() {
        settle(src);
    }
    let mut args = vec!["snapshot", "-q", "--json", s(src), s(repo)];
    args.extend_from_slice(extra);
    let o = hbb(&args);
    assert_ok(&o);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    j["snapshot"].clone()
}

fn list(repo: &Path) -> Vec<serde_json::Value> {
    let o = hbb(&["list", "--json", s(repo)]);
    assert_ok(&o);
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn du(p: &Path) -> u64 {
    let o = run("du", &["-sb".as_ref(), p.as_os_str()]);
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[track_caller]
fn restore_and_compare(repo: &Path, name: &str, expect: &Path, into: &Path) {
    let target = format!("{}::{name}", s(repo));
    assert_ok(&hbb(&["restore", "-q", &target, s(into)]));
    // Metadata first: diff reads the files, which may move their atime.
    compare_trees(expect, into);
    diff_r(expect, into);
}

fn init(repo: &Path) {
    assert_ok(&hbb(&["repo", "init", "-q", s(repo)]));
}

#[test]
fn second_snapshot_stores_only_what_changed_and_both_restore_whole() {
    let t = Tmp::new("repo-incr");
    let (src, repo) = (t.path("src"), t.path("repo"));
    make_every_kind(&src);
    fs::create_dir_all(src.join("many")).unwrap();
    for k in 0..20 {
        write_noise(&src.join(format!("many/f{k:02}")), 200_000, 100 + k);
    }
    write_noise(&src.join("big.bin"), 6 << 20, 7);
    init(&repo);
    let first = snap(&src, &repo, &["--name", "one", "--tag", "daily"]);
    assert_eq!(first["name"], "one");
    assert_eq!(first["tags"][0], "daily");
    let stored1 = first["bytes_stored"].as_u64().unwrap();
    assert!(
        stored1 > 6 << 20,
        "first snapshot stores everything: {stored1}"
    );
    // Keep a copy of the tree as it was, with its metadata.
    let was = t.path("was");
    run("cp", &["-a".as_ref(), src.as_os_str(), was.as_os_str()]);

    // Change one file, add one, remove one.
    write_noise(&src.join("many/f03"), 200_000, 999);
    write_noise(&src.join("many/new"), 100_000, 1000);
    fs::remove_file(src.join("many/f07")).unwrap();
    let second = snap(&src, &repo, &["--name", "two"]);
    let stored2 = second["bytes_stored"].as_u64().unwrap();
    assert_eq!(second["parent"], "one");
    // f03 and new are read and stored (about 300 kB of random bytes); the
    // rest, 6 MB of big.bin included, is taken from snapshot one unread.
    assert!(
        stored2 < 1_000_000 && stored2 > 250_000,
        "second snapshot stored {stored2} bytes"
    );
    assert!(second["bytes_read"].as_u64().unwrap() < 1_000_000);
    assert!(second["reused_files"].as_u64().unwrap() >= 20);

    restore_and_compare(&repo, "one", &was, &t.path("out1"));
    restore_and_compare(&repo, "two", &src, &t.path("out2"));
    // Both at once under one mount of the repository, each whole.
    {
        let mp = t.path("mnt");
        fs::create_dir_all(&mp).unwrap();
        assert_ok(&hbb(&["mount", s(&repo), s(&mp)]));
        let m = Mounted(mp.clone());
        let mut names: Vec<_> = fs::read_dir(&mp)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["one", "two"]);
        diff_r(&was, &mp.join("one"));
        diff_r(&src, &mp.join("two"));
        cmp(&src.join("big.bin"), &mp.join("two/big.bin"));
        assert_ok(&hbb(&["umount", s(&m.0)]));
        // One snapshot alone, as REPO::NAME.
        let one = format!("{}::one", s(&repo));
        assert_ok(&hbb(&["mount", &one, s(&mp)]));
        diff_r(&was, &mp);
        assert_ok(&hbb(&["umount", s(&m.0)]));
    }
    assert_ok(&hbb(&["verify", "-q", s(&repo)]));
    let two = format!("{}::two", s(&repo));
    assert_ok(&hbb(&["verify", "-q", &two, "--source", s(&src)]));
    // ls and cat on a snapshot in the repository.
    let o = hbb(&["cat", &two, "many/new"]);
    assert_ok(&o);
    assert_eq!(o.stdout, fs::read(src.join("many/new")).unwrap());

    // Exported as one archive file, it stands alone.
    let file = t.path("two.hbb");
    assert_ok(&hbb(&["repo", "export", "-q", &two, s(&file)]));
    let moved = t.path("elsewhere.hbb");
    fs::rename(&file, &moved).unwrap();
    assert_ok(&hbb(&["verify", "-q", s(&moved)]));
    assert_ok(&hbb(&["restore", "-q", s(&moved), s(&t.path("out3"))]));
    compare_trees(&src, &t.path("out3"));
    diff_r(&src, &t.path("out3"));
    // A snapshot file copied out of its repository says where its blocks are.
    let lone = t.path("lone.hbb");
    fs::copy(repo.join("snapshots/two.hbb"), &lone).unwrap();
    let o = hbb(&["verify", s(&lone)]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("not inside its repository"),
        "{}",
        stderr(&o)
    );

    // Mistakes get clear words.
    assert_fails(
        &hbb(&["restore", s(&repo), s(&t.path("x"))]),
        1,
        "is a repository",
    );
    assert_fails(
        &hbb(&["restore", &format!("{}::nope", s(&repo)), s(&t.path("x"))]),
        1,
        "no snapshot named \"nope\"",
    );
    assert_fails(
        &hbb(&["snapshot", s(&src), s(&repo), "--name", "two"]),
        1,
        "exists already",
    );
    assert_fails(
        &hbb(&["snapshot", s(&src), s(&repo), "--name", "../x"]),
        1,
        "snapshot name",
    );
    assert_fails(&hbb(&["repo", "init", s(&src)]), 1, "not empty");
    assert_fails(&hbb(&["list", s(&src)]), 1, "not an hbb repository");
}

#[test]
fn identical_data_from_two_sources_is_stored_once() {
    let t = Tmp::new("repo-dedup");
    let (a, b, repo) = (t.path("a"), t.path("b"), t.path("repo"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    write_noise(&a.join("same.bin"), 5 << 20, 42);
    write_noise(&b.join("copy.bin"), 5 << 20, 42);
    write_noise(&b.join("own.bin"), 100_000, 43);
    init(&repo);
    let sa = snap(&a, &repo, &[]);
    let sb = snap(&b, &repo, &[]);
    assert!(sa["bytes_stored"].as_u64().unwrap() > 5 << 20);
    let stored_b = sb["bytes_stored"].as_u64().unwrap();
    assert!(stored_b < 300_000, "b stored {stored_b}");
    assert_eq!(sb["parent"], "", "another source is not a parent");
    restore_and_compare(&repo, sb["name"].as_str().unwrap(), &b, &t.path("out"));
}

#[test]
fn volume_snapshot_stores_only_the_changed_blocks() {
    let t = Tmp::new("repo-volume");
    let (img, repo) = (t.path("disk.img"), t.path("repo"));
    write_noise(&img, 24 << 20, 5);
    init(&repo);
    let first = snap(&img, &repo, &["--mode", "volume", "--name", "v1"]);
    assert_eq!(first["mode"], "volume");
    assert!(first["bytes_stored"].as_u64().unwrap() > 23 << 20);
    // Three 4 KiB writes in three different 1 MiB blocks.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        for off in [1u64 << 20, 9 << 20, (20 << 20) + 4096] {
            f.write_all_at(&noise(4096, off), off).unwrap();
        }
    }
    let second = snap(&img, &repo, &["--mode", "volume", "--name", "v2"]);
    let stored = second["bytes_stored"].as_u64().unwrap();
    assert!(
        stored > 3 << 20 && stored < 4 << 20,
        "second volume snapshot stored {stored} bytes, expected about three 1 MiB blocks"
    );
    let out = t.path("restored.img");
    assert_ok(&hbb(&[
        "restore",
        "-q",
        &format!("{}::v2", s(&repo)),
        s(&out),
    ]));
    cmp(&img, &out);
}

/// Three snapshots; the first two are dropped by `--keep-last 1`, which
/// leaves one pack dead and one mostly dead (repacked).
fn prune_fixture(t: &Tmp) -> (std::path::PathBuf, std::path::PathBuf) {
    let (src, repo) = (t.path("src"), t.path("repo"));
    fs::create_dir_all(&src).unwrap();
    write_noise(&src.join("keep.bin"), 1 << 20, 1);
    write_noise(&src.join("gone.bin"), 3 << 20, 2);
    init(&repo);
    snap(&src, &repo, &["--name", "s1"]);
    write_noise(&src.join("gone.bin"), 3 << 20, 3);
    snap(&src, &repo, &["--name", "s2"]);
    fs::remove_file(src.join("gone.bin")).unwrap();
    write_noise(&src.join("late.bin"), 200_000, 4);
    snap(&src, &repo, &["--name", "s3"]);
    (src, repo)
}

#[test]
fn prune_keeps_what_it_should_and_reclaims_the_rest() {
    let t = Tmp::new("repo-prune");
    let (src, repo) = prune_fixture(&t);
    let before = du(&repo.join("data"));
    // Without a rule, prune refuses.
    assert_fails(&hbb(&["prune", s(&repo)]), 1, "at least one --keep");
    let o = hbb(&["prune", s(&repo), "--keep-last", "1", "--dry-run", "--json"]);
    assert_ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let keep: Vec<_> = r["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["keep"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keep,
        vec![
            ("s1".into(), false),
            ("s2".into(), false),
            ("s3".into(), true)
        ]
    );
    assert_eq!(list(&repo).len(), 3, "a dry run changes nothing");

    let o = hbb(&["prune", s(&repo), "--keep-last", "1", "--json"]);
    assert_ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["removed"].as_array().unwrap().len(), 2);
    assert!(r["packs_deleted"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["packs_repacked"].as_u64().unwrap() >= 1, "{r}");
    let after = du(&repo.join("data"));
    assert!(
        after < before / 2 && after < (1 << 20) + 500_000,
        "data went from {before} to {after} bytes"
    );
    let names: Vec<_> = list(&repo).iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, vec!["s3"]);
    assert_ok(&hbb(&["verify", "-q", s(&repo)]));
    restore_and_compare(&repo, "s3", &src, &t.path("out"));
    // The next snapshot still finds its blocks.
    let s4 = snap(&src, &repo, &["--name", "s4"]);
    assert_eq!(s4["bytes_stored"], 0);
    restore_and_compare(&repo, "s4", &src, &t.path("out4"));
}

#[test]
fn prune_killed_at_any_step_loses_nothing_kept() {
    let t = Tmp::new("repo-prune-kill");
    let (src, repo) = prune_fixture(&t);
    let template = t.path("template");
    run(
        "cp",
        &["-a".as_ref(), repo.as_os_str(), template.as_os_str()],
    );
    for (k, point) in [
        "prune-marked",
        "prune-removing",
        "prune-removed",
        "prune-repacked",
        "prune-rewriting",
        "prune-rewritten",
        "prune-deleting",
        "prune-gc-done",
    ]
    .into_iter()
    .enumerate()
    {
        let r = t.path(&format!("r{k}"));
        run("cp", &["-a".as_ref(), template.as_os_str(), r.as_os_str()]);
        let o = hbb_env(
            &["prune", "-q", s(&r), "--keep-last", "1"],
            &[("HBB_FAULT", point)],
        );
        assert_eq!(
            o.status.signal(),
            Some(9),
            "{point}: not killed: {}",
            stderr(&o)
        );
        // Whatever happened, the kept snapshot is whole and every
        // snapshot still listed verifies.
        let o = hbb(&["verify", s(&r)]);
        assert_ok(&o);
        restore_and_compare(&r, "s3", &src, &t.path(&format!("out{k}")));
        // A second prune finishes the job.
        assert_ok(&hbb(&["prune", "-q", s(&r), "--keep-last", "1"]));
        let names: Vec<_> = list(&r).iter().map(|r| r["name"].clone()).collect();
        assert_eq!(names, vec!["s3"], "{point}");
        assert_ok(&hbb(&["verify", "-q", s(&r)]));
        assert!(
            du(&r.join("data")) < (1 << 20) + 500_000,
            "{point}: space not reclaimed"
        );
    }
}

#[test]
fn deleted_catalog_is_rebuilt_the_same() {
    let t = Tmp::new("repo-catalog");
    let (src, repo) = (t.path("src"), t.path("repo"));
    make_every_kind(&src);
    init(&repo);
    snap(&src, &repo, &["--name", "a", "--tag", "x", "--tag", "y"]);
    fs::write(src.join("plain.txt"), b"changed").unwrap();
    snap(&src, &repo, &["--name", "b"]);
    let before = list(&repo);
    assert_eq!(before.len(), 2);
    // Per-source status, in the catalog itself.
    {
        let db = rusqlite::Connection::open(repo.join("catalog.db")).unwrap();
        let (n, status): (i64, String) = db
            .query_row("SELECT snapshots, last_run_status FROM sources", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, status.as_str()), (2, "ok"));
    }
    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = fs::remove_file(repo.join(f));
    }
    assert_eq!(list(&repo), before, "rebuilt on open");
    assert_ok(&hbb(&["repo", "rebuild-catalog", "-q", s(&repo)]));
    assert_eq!(list(&repo), before, "rebuilt on demand");
    // A damaged catalog is set aside and rebuilt, not an error.
    fs::write(repo.join("catalog.db"), b"not a database at all").unwrap();
    let _ = fs::remove_file(repo.join("catalog.db-wal"));
    let _ = fs::remove_file(repo.join("catalog.db-shm"));
    assert_eq!(list(&repo), before, "rebuilt after damage");
    // A snapshot killed after it got its name, before the catalog heard of
    // it: it is whole, and the next reader lists it.
    fs::write(src.join("plain.txt"), b"changed again").unwrap();
    let o = hbb_env(
        &["snapshot", "-q", s(&src), s(&repo), "--name", "k"],
        &[("HBB_FAULT", "snapshot-named")],
    );
    assert_eq!(o.status.signal(), Some(9));
    let names: Vec<_> = list(&repo).iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, vec!["a", "b", "k"]);
    assert_ok(&hbb(&["verify", "-q", &format!("{}::k", s(&repo))]));
    // The rebuilt catalog still knows the blocks: nothing new is stored.
    let c = snap(&src, &repo, &["--name", "c"]);
    assert_eq!(c["bytes_stored"], 0);
}

#[test]
fn a_second_writer_is_refused_or_waits() {
    let t = Tmp::new("repo-lock");
    let (src, repo) = (t.path("src"), t.path("repo"));
    make_every_kind(&src);
    init(&repo);
    // Another writer holds the lock for two seconds.
    let mut holder = Command::new("flock")
        .arg(repo.join("lock"))
        .args(["sleep", "2"])
        .spawn()
        .expect("flock (util-linux)");
    wait_until("the lock is taken", 10, || {
        let o = Command::new("flock")
            .args(["-n"])
            .arg(repo.join("lock"))
            .arg("true")
            .status()
            .unwrap();
        !o.success()
    });
    assert_fails(
        &hbb(&["snapshot", s(&src), s(&repo)]),
        1,
        "locked by another writer",
    );
    assert_fails(
        &hbb(&["prune", s(&repo), "--keep-last", "1"]),
        1,
        "locked by another writer",
    );
    // With --lock-wait it waits its turn.
    assert_ok(&hbb(&[
        "snapshot",
        "-q",
        s(&src),
        s(&repo),
        "--lock-wait",
        "30s",
    ]));
    holder.wait().unwrap();
    assert_eq!(list(&repo).len(), 1);
}

#[test]
fn an_interrupted_snapshot_counts_for_nothing_and_the_next_resumes() {
    let t = Tmp::new("repo-resume");
    let (src, repo) = (t.path("src"), t.path("repo"));
    fs::create_dir_all(&src).unwrap();
    write_noise(&src.join("data.bin"), 4 << 20, 9);
    init(&repo);
    // Killed after its packs were sealed, before the snapshot was named.
    let o = hbb_env(
        &["snapshot", "-q", s(&src), s(&repo)],
        &[("HBB_FAULT", "snapshot-packs-sealed")],
    );
    assert_eq!(o.status.signal(), Some(9));
    assert!(list(&repo).is_empty(), "no snapshot counts");
    assert_ok(&hbb(&["verify", "-q", s(&repo)]));
    // The next run finds the sealed blocks and does not store them again.
    let again = snap(&src, &repo, &[]);
    assert_eq!(again["bytes_stored"], 0, "{again}");
    restore_and_compare(&repo, again["name"].as_str().unwrap(), &src, &t.path("out"));
    // SIGKILL at a random moment: never a listed snapshot that is not whole.
    for delay_ms in [5u64, 30, 80] {
        write_noise(&src.join("data.bin"), 4 << 20, 100 + delay_ms);
        let mut c = Command::new(bin())
            .args(["snapshot", "-q", s(&src), s(&repo)])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = c.kill();
        let _ = c.wait();
        assert_ok(&hbb(&["verify", "-q", s(&repo)]));
    }
}

/// Starts hbb with `HBB_STALL=POINT:FLAG` and returns once it waits at POINT
/// (it goes on when FLAG is removed).
fn stalled(args: &[&str], point: &str, flag: &Path, env: &[(&str, &str)]) -> std::process::Child {
    let mut c = Command::new(bin());
    c.args(args)
        .env("HBB_STALL", format!("{point}:{}", s(flag)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().unwrap();
    wait_until("the stall point", 60, || flag.exists());
    child
}

#[test]
fn a_catalog_read_during_prune_does_not_hide_the_prune_from_the_next_writer() {
    let t = Tmp::new("repo-prune-list");
    let (src, repo) = prune_fixture(&t);
    let flag = t.path("stall");
    // Prune stops once it has marked the catalog dirty, and is killed
    // after gc, before it rebuilds the catalog.
    let c = stalled(
        &["prune", "-q", s(&repo), "--keep-last", "1"],
        "prune-marked",
        &flag,
        &[("HBB_FAULT", "prune-gc-done")],
    );
    // A reader opens the catalog meanwhile.
    assert_ok(&hbb(&["list", s(&repo)]));
    fs::remove_file(&flag).unwrap();
    let o = c.wait_with_output().unwrap();
    assert_eq!(o.status.signal(), Some(9), "{}", stderr(&o));
    // gone.bin as s2 held it: its frames were in a pack gc deleted.
    write_noise(&src.join("gone.bin"), 3 << 20, 3);
    snap(&src, &repo, &["--name", "s4"]);
    assert_ok(&hbb(&["verify", "-q", s(&repo)]));
    restore_and_compare(&repo, "s4", &src, &t.path("out"));
}

#[test]
fn a_snapshot_opened_while_prune_rewrites_it_reads_whole() {
    let t = Tmp::new("repo-open-prune");
    let (_src, repo) = prune_fixture(&t);
    let flag = t.path("stall");
    let target = format!("{}::s3", s(&repo));
    // verify has read s3's index, and not yet taken the readers' lock.
    let c = stalled(&["verify", "-q", &target], "snapshot-opening", &flag, &[]);
    let o = hbb(&["prune", "-q", "--json", s(&repo), "--keep-last", "1"]);
    assert_ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["packs_repacked"].as_u64().unwrap() >= 1, "{r}");
    fs::remove_file(&flag).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "verify: {}", stderr(&o));
}

#[test]
fn a_snapshot_leaves_out_where_it_is_written() {
    let t = Tmp::new("repo-own");
    let src = t.path("src");
    make_every_kind(&src);
    // A repository inside the tree it backs up.
    let repo = src.join("backups/repo");
    fs::create_dir_all(src.join("backups")).unwrap();
    init(&repo);
    let first = snap(&src, &repo, &["--name", "one"]);
    write_noise(&src.join("more.bin"), 2 << 20, 5);
    let second = snap(&src, &repo, &["--name", "two"]);
    assert!(
        second["bytes_stored"].as_u64().unwrap() < (2 << 20) + 100_000,
        "{second}"
    );
    let o = hbb(&["ls", &format!("{}::two", s(&repo)), "backups"]);
    assert_ok(&o);
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let _ = first;
    // verify --source knows it was left out on purpose.
    assert_ok(&hbb(&[
        "verify",
        "-q",
        &format!("{}::two", s(&repo)),
        "--source",
        s(&src),
    ]));
    // An archive file inside the tree: the same.
    let arc = src.join("self.hbb");
    assert_ok(&hbb(&["snapshot", "-q", s(&src), s(&arc)]));
    let o = hbb(&["ls", s(&arc)]);
    let names = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!names.lines().any(|l| l == "self.hbb"), "{names}");
}
