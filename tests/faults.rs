//! Faults during a snapshot: killed at random moments, a full destination,
//! files that grow, shrink or vanish while read, a pipe closing early.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn partials(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.as_bytes().windows(12).any(|w| w == b"hbb-partial-"))
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_complete_looking_archive() {
    let t = Tmp::new("sigkill");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        write_pattern(&src.join(format!("f{i}")), 6 << 20, i);
    }
    make_every_kind(&src.join("tree"));
    let arc = t.path("a.hbb");
    // Kill points spread over the whole run, from "at once" to "nearly done".
    let t0 = Instant::now();
    assert_ok(&hbb(&["snapshot", "-q", s(&src), s(&t.path("timing.hbb"))]));
    let full = t0.elapsed().as_millis() as u64;
    let mut seed = 0x1234_5678u64;
    for round in 0..20 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = (seed >> 33) % (full + 50);
        let mut child = Command::new(bin())
            .args(["snapshot", "-q", s(&src), s(&arc)])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        child.wait().unwrap();
        if arc.exists() {
            // Finished before the kill: then it is whole.
            assert_ok(&hbb(&["verify", "-q", s(&arc)]));
            fs::remove_file(&arc).unwrap();
        }
        // A partial file opens only when the kill fell between its final
        // fsync and the rename: then it is whole. Never half-written.
        for p in partials(t.root()) {
            let o = hbb(&["info", s(&t.path(&p))]);
            if o.status.success() {
                assert_ok(&hbb(&["verify", "-q", s(&t.path(&p))]));
            } else {
                assert_eq!(
                    o.status.code(),
                    Some(1),
                    "round {round}: {p}: {}",
                    stderr(&o)
                );
            }
        }
    }
    // The next snapshot removes what killed ones left behind.
    assert_ok(&hbb(&["snapshot", "-q", s(&src), s(&arc)]));
    assert_eq!(partials(t.root()), Vec::<String>::new());
    let dst = t.path("dst");
    assert_ok(&hbb(&["restore", "-q", s(&arc), s(&dst)]));
    diff_r(&src, &dst);
}

struct TmpfsMount(std::path::PathBuf);
impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_destination_is_a_clear_error_and_leaves_nothing() {
    let t = Tmp::new("full");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    // Incompressible: random bytes.
    let mut data = vec![0u8; 20 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(src.join("random"), &data).unwrap();
    let before = blake3::hash(&data);
    let dest = t.path("small");
    fs::create_dir_all(&dest).unwrap();
    run(
        "mount",
        &[
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "-o".as_ref(),
            "size=4m".as_ref(),
            "tmpfs".as_ref(),
            dest.as_os_str(),
        ],
    );
    let _m = TmpfsMount(dest.clone());
    let arc = dest.join("a.hbb");
    let o = hbb(&["snapshot", s(&src), s(&arc)]);
    assert_fails(&o, 1, "No space left");
    // Said once, naming the archive: not repeated by the error's chain.
    let err = stderr(&o);
    assert_eq!(err.matches("No space left").count(), 1, "{err}");
    assert!(
        err.contains(&format!("{}: No space left", arc.display())),
        "{err}"
    );
    assert!(!arc.exists());
    assert_eq!(partials(&dest), Vec::<String>::new());
    assert_eq!(blake3::hash(&fs::read(src.join("random")).unwrap()), before);
}

#[test]
fn pipe_closing_early_is_an_error_not_a_hang() {
    let t = Tmp::new("pipe");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    write_pattern(&src.join("big"), 50 << 20, 9);
    let t0 = Instant::now();
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} snapshot --level 1 {} - | head -c 1000 >/dev/null",
            bin(),
            s(&src)
        ))
        .output()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(60), "hung");
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("Broken pipe"), "{e}");
    assert!(e.contains("hbb: error"), "{e}");
}

/// Runs `f` in a loop on another thread while `hbb snapshot` runs.
fn while_snapshot(src: &Path, arc: &Path, f: impl Fn() + Send + 'static) -> std::process::Output {
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let h = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            f();
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    let o = hbb(&["snapshot", "--block-size", "1M", s(src), s(arc)]);
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    o
}

#[track_caller]
fn consistent(t: &Tmp, arc: &Path) {
    // Sizes in the index match the bytes stored: verify passes, and every
    // restored file has the size the archive lists.
    assert_ok(&hbb(&["verify", "-q", s(arc)]));
    let dst = t.path("dst");
    let _ = fs::remove_dir_all(&dst);
    let r = hbb(&["restore", "-q", s(arc), s(&dst)]);
    assert_ok(&r);
    let ls = hbb(&["ls", "-l", "-R", s(arc)]);
    for line in String::from_utf8_lossy(&ls.stdout)
        .lines()
        .filter(|l| l.starts_with('-'))
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let size: u64 = f[4].parse().unwrap();
        let name = f[6..].join(" ");
        assert_eq!(fs::metadata(dst.join(&name)).unwrap().len(), size, "{name}");
    }
}

#[test]
fn a_file_growing_while_read_is_reported_and_the_archive_stays_consistent() {
    let t = Tmp::new("grow");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    write_pattern(&src.join("grow"), 40 << 20, 1);
    fs::write(src.join("still"), b"unchanged\n").unwrap();
    let p = src.join("grow");
    let o = while_snapshot(&src, &t.path("a.hbb"), move || {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[b'+'; 4096]).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    });
    assert_fails(&o, 3, "grow: changed while read");
    consistent(&t, &t.path("a.hbb"));
}

#[test]
fn a_file_shrinking_while_read_is_reported_and_the_archive_stays_consistent() {
    let t = Tmp::new("shrink");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    write_pattern(&src.join("shrink"), 120 << 20, 2);
    let p = src.join("shrink");
    let o = while_snapshot(&src, &t.path("a.hbb"), move || {
        let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(1 << 20)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    });
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("shrink: shrank while read") || e.contains("shrink: changed while read"),
        "{e}"
    );
    consistent(&t, &t.path("a.hbb"));
}

#[test]
fn files_vanishing_while_read_are_reported_and_the_archive_stays_consistent() {
    let t = Tmp::new("vanish");
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..3000 {
        write_pattern(&src.join(format!("v{i:04}")), 20_000, i);
    }
    let dir = src.clone();
    let next = std::sync::Mutex::new(2999i64);
    let o = while_snapshot(&src, &t.path("a.hbb"), move || {
        let mut n = next.lock().unwrap();
        if *n >= 0 {
            let _ = fs::remove_file(dir.join(format!("v{:04}", *n)));
            *n -= 1;
        }
        std::thread::sleep(Duration::from_micros(100));
    });
    let code = o.status.code();
    assert!(code == Some(0) || code == Some(3), "{}", stderr(&o));
    if code == Some(3) {
        assert!(stderr(&o).contains("not stored"), "{}", stderr(&o));
    }
    consistent(&t, &t.path("a.hbb"));
}
