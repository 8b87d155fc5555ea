//! hbb as a system tool: the Debian package built by scripts/deb.sh and
//! installed with dpkg, then used from /usr as an operator would (a
//! snapshot, `man`, bash's Tab, `mount -t fuse.hbb` and an fstab line,
//! `umount`, `systemd-analyze verify` of the units and the command they
//! run); the mount(8) calling convention without the package; the man
//! pages, completions and the one exit-code table; log priorities for the
//! journal; and every `--json` output against docs/JSON.md.
//!
//! Needs root, /dev/fuse and the tools of Debian's dpkg, dpkg-dev, fuse3,
//! man-db, systemd and util-linux (scripts/test.sh installs them). The
//! package is removed again at the end unless it was installed before.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::*;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// ---------------------------------------------------------------------------
// Harness

fn require_root() {
    assert!(
        hbb::sys::is_root(),
        "the system tests need root (dpkg -i, mount)"
    );
}

/// Runs a command, returning its output whatever its status.
fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (is its package installed? see scripts/test.sh)"))
}

#[track_caller]
fn sh_ok(cmd: &str, args: &[&str]) -> String {
    let o = sh(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The topmost mount at `p` (absolute, resolved): (fstype, options).
fn mounted(p: &Path) -> Option<(String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut found = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.get(4) == Some(&s(p)) {
            found = Some((f[dash + 1].to_string(), f[5].to_string()));
        }
    }
    found
}

/// Processes whose command line holds `needle` (an archive's unique path).
fn processes_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = fs::read(e.path().join("cmdline"))
            && cmd.split(|&b| b == 0).any(|a| a == needle.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

/// A mount undone on drop, whatever happened.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if mounted(&self.0).is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A small tree with what `diff -r` compares: files, a link, a subdirectory.
fn make_small_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("hello.txt"), b"hello, packaged hbb\n").unwrap();
    write_pattern(&root.join("dir/data.bin"), 300_000, 3);
    write_pattern(&root.join("dir/sub/notes.txt"), 7_000, 4);
    std::os::unix::fs::symlink("../hello.txt", root.join("dir/link")).unwrap();
}

// ---------------------------------------------------------------------------
// docs/JSON.md

/// Key paths of a JSON value and their types (`a.b`, `a[]`), every element
/// of an array merged.
fn shape(v: &Value) -> BTreeMap<String, &'static str> {
    fn walk(v: &Value, path: &str, out: &mut BTreeMap<String, &'static str>) {
        let t = match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_f64() => "number",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(a) => {
                for e in a {
                    walk(e, &format!("{path}[]"), out);
                }
                "array"
            }
            Value::Object(o) => {
                for (k, e) in o {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(e, &p, out);
                }
                "object"
            }
        };
        if !path.is_empty() {
            let prev = out.insert(path.to_string(), t);
            assert!(
                prev.is_none() || prev == Some(t),
                "{path}: elements of different types"
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(v, "", &mut out);
    out
}

/// docs/JSON.md's section for `command`: the shape of its example and of
/// its table, which must agree.
fn documented(command: &str) -> BTreeMap<String, &'static str> {
    let doc = fs::read_to_string(Path::new(ROOT).join("docs/JSON.md")).unwrap();
    let head = format!("## hbb {command} --json\n");
    let start = doc
        .find(&head)
        .unwrap_or_else(|| panic!("docs/JSON.md has no section {head:?}"));
    let body = &doc[start + head.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let json = body
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .unwrap_or_else(|| panic!("{command}: no json example"));
    let example: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("{command}: the example is not JSON: {e}"));
    let from_example = shape(&example);
    let mut from_table = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let key = cells[1].trim_matches('`').to_string();
        let t = match cells[2] {
            "string" => "string",
            "bool" => "bool",
            "integer" => "integer",
            "number" => "number",
            "array" => "array",
            "object" => "object",
            "string or null" => "string?",
            "integer or null" => "integer?",
            "number or null" => "number?",
            other => panic!("{command}: {key}: unknown type {other:?} in the table"),
        };
        from_table.insert(key, t);
    }
    let keys_example: Vec<_> = from_example.keys().collect();
    let keys_table: Vec<_> = from_table.keys().collect();
    assert_eq!(
        keys_example, keys_table,
        "docs/JSON.md, {command}: the example and the table disagree"
    );
    for (k, t) in &from_example {
        assert!(
            type_fits(t, from_table[k]),
            "docs/JSON.md, {command}: {k} is {t} in the example, {} in the table",
            from_table[k]
        );
    }
    from_table
}

/// Whether a value of type `real` fits the documented type (`X?`: X or null).
fn type_fits(real: &str, doc: &str) -> bool {
    real == doc
        || doc
            .strip_suffix('?')
            .is_some_and(|d| real == d || real == "null")
}

/// The real output of `command` has exactly the documented keys and types.
/// With `all_arrays_filled`, every documented array must have had elements
/// (so that their elements were checked too); otherwise the paths under an
/// empty array are not required.
#[track_caller]
fn check_json(command: &str, stdout: &[u8], all_arrays_filled: bool) {
    let v: Value = serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "{command} --json: not JSON ({e}):\n{}",
            String::from_utf8_lossy(stdout)
        )
    });
    let real = shape(&v);
    let doc = documented(command);
    for (k, t) in &real {
        assert!(
            doc.get(k).is_some_and(|d| type_fits(t, d)),
            "hbb {command} --json: {k} ({t}) is not in docs/JSON.md as such"
        );
    }
    for (k, t) in &doc {
        if real.contains_key(k) {
            continue;
        }
        let under_empty_array = k
            .match_indices("[]")
            .any(|(i, _)| real.get(&k[..i]) == Some(&"array"))
            && !all_arrays_filled;
        assert!(
            under_empty_array,
            "hbb {command} --json: documented {k} ({t}) is missing from the output:\n{}",
            String::from_utf8_lossy(stdout)
        );
    }
}

#[test]
fn json_outputs_match_docs() {
    require_root();
    let t = Tmp::new("sys-json");
    fs::set_permissions(t.root(), fs::Permissions::from_mode(0o777)).unwrap();
    let src = t.path("src");
    make_small_tree(&src);
    // A file the snapshot cannot read, for `warnings`: as root nothing is
    // unreadable, so that snapshot runs as nobody (a copy of the binary
    // it can reach).
    fs::write(src.join("secret"), b"no\n").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    for d in [&src, &src.join("dir"), &src.join("dir/sub")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let exe = t.path("hbb");
    fs::copy(bin(), &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let arc = t.path("out/a.hbb");
    fs::create_dir(t.path("out")).unwrap();
    fs::set_permissions(t.path("out"), fs::Permissions::from_mode(0o777)).unwrap();
    let o = sh(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            s(&exe),
            "snapshot",
            "--json",
            "--block-size",
            "4K",
            "--exclude",
            "*.o",
            s(&src),
            s(&arc),
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    check_json("snapshot", &o.stdout, true);

    let o = hbb(&["info", "--json", s(&arc)]);
    assert_ok(&o);
    check_json("info", &o.stdout, true);

    // restore: one entry in the way, for `problems`.
    let dst = t.path("dst");
    fs::create_dir(&dst).unwrap();
    fs::write(dst.join("hello.txt"), b"in the way\n").unwrap();
    let o = hbb(&["restore", "--json", s(&arc), s(&dst)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    check_json("restore", &o.stdout, true);

    // verify: a damaged frame and a changed source.
    flip_byte(&arc, 100);
    fs::write(src.join("hello.txt"), b"changed since\n").unwrap();
    let o = hbb(&["verify", "--json", "--source", s(&src), s(&arc)]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    check_json("verify", &o.stdout, true);

    // And the plain successes: empty arrays are fine.
    let good = t.path("good.hbb");
    fs::remove_file(src.join("secret")).unwrap();
    let o = hbb(&["snapshot", "--json", s(&src), s(&good)]);
    assert_ok(&o);
    check_json("snapshot", &o.stdout, false);
    let o = hbb(&["verify", "--json", s(&good)]);
    assert_ok(&o);
    check_json("verify", &o.stdout, false);
    // To stdout: the JSON goes to stderr, after the log lines.
    let o = hbb(&["snapshot", "--json", "-q", s(&src), "-"]);
    assert_ok(&o);
    check_json("snapshot", &o.stderr, false);
}

// ---------------------------------------------------------------------------
// Man pages, completions, exit codes, logs

#[test]
fn man_pages_completions_and_exit_codes() {
    let t = Tmp::new("sys-man");
    let dir = t.path("man");
    assert_ok(&hbb(&["man", s(&dir)]));
    let subcommands = [
        "snapshot",
        "restore",
        "verify",
        "info",
        "ls",
        "cat",
        "mount",
        "umount",
        "repo",
        "list",
        "prune",
        "job",
        "daemon",
        "status",
        "history",
        "host",
        "serve",
        "completions",
    ];
    let mut want: Vec<String> = subcommands.iter().map(|c| format!("hbb-{c}.1")).collect();
    want.push("hbb.1".into());
    want.sort();
    let mut have: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    have.sort();
    assert_eq!(have, want);
    for page in &have {
        let text = fs::read_to_string(dir.join(page)).unwrap();
        assert_eq!(text.matches("\n.TH ").count(), 1, "{page}");
        assert_eq!(text.matches(".ds Aq").count(), 2, "{page}: one preamble");
        assert!(text.contains(".SH \"EXIT STATUS\""), "{page}");
        for (code, _) in hbb::cli::exit::TABLE {
            assert!(
                text.contains(&format!(".B {code}\n")),
                "{page}: code {code}"
            );
        }
    }
    let top = fs::read_to_string(dir.join("hbb.1")).unwrap();
    for c in subcommands {
        assert!(top.contains(&format!("hbb\\-{c}(1)")), "hbb.1: {c}");
    }
    assert!(
        !top.contains("hbb\\-man"),
        "the hidden `man` command is not documented"
    );
    let mount = fs::read_to_string(dir.join("hbb-mount.1")).unwrap();
    assert!(mount.contains("fuse.hbb"), "hbb-mount.1 explains fstab");
    // Every page renders without a warning from man's formatter.
    let o = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(dir.join("hbb.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("man (man-db)");
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("EXIT STATUS"));
    assert!(
        text.contains("verify found damaged blocks or differences from the source"),
        "{text}"
    );
    assert!(
        o.stderr.is_empty(),
        "man warnings: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The README's exit code table is the one in the code.
    let readme = fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = readme
        .split("## Exit codes\n")
        .nth(1)
        .expect("README has an Exit codes section");
    let rows: Vec<(u8, String)> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let c: Vec<&str> = l.split('|').map(str::trim).collect();
            (c[1].parse().unwrap(), c[2].to_string())
        })
        .collect();
    let table: Vec<(u8, String)> = hbb::cli::exit::TABLE
        .iter()
        .map(|(c, w)| (*c, w.to_string()))
        .collect();
    assert_eq!(
        rows, table,
        "README's exit codes differ from cli::exit::TABLE"
    );
    let help = hbb(&["--help"]);
    assert_ok(&help);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes:\n  0  success"));

    // Completions: each shell's script; bash completes `hbb sn<Tab>`.
    for (shell, mark) in [
        ("bash", "complete -F _hbb"),
        ("zsh", "#compdef hbb"),
        ("fish", "complete -c hbb"),
    ] {
        let o = hbb(&["completions", shell]);
        assert_ok(&o);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(mark),
            "{shell}: no {mark:?}"
        );
        fs::write(t.path(shell), &o.stdout).unwrap();
    }
    assert_eq!(complete_bash(&t.path("bash"), &["hbb", "sn"]), ["snapshot"]);
    // `hbb man DIR` (for packagers) and mount(8)'s form are not offered.
    assert_eq!(complete_bash(&t.path("bash"), &["hbb", "m"]), ["mount"]);
    for shell in ["bash", "zsh", "fish"] {
        let text = fs::read_to_string(t.path(shell)).unwrap();
        assert!(
            !text.contains("mount-helper") && !text.contains("man pages"),
            "{shell}"
        );
    }
    assert!(hbb(&["completions", "tcsh"]).status.code() == Some(2));
}

/// What bash completes for `words` (the last one being completed), with
/// the completion `file` loaded: `complete -p hbb` names the function,
/// which is called as bash calls it on Tab.
fn complete_bash(file: &Path, words: &[&str]) -> Vec<String> {
    let script = format!(
        r#"source {file}
spec=$(complete -p hbb) || exit 1
fn=${{spec#*-F }}; fn=${{fn%% *}}
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}
"$fn" hbb "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        file = file.display(),
        words = words.join(" "),
        line = words.join(" "),
    );
    let o = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &script])
        .output()
        .expect("bash");
    assert!(
        o.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn log_levels_and_journal_priorities() {
    let t = Tmp::new("sys-log");
    let src = t.path("src");
    make_small_tree(&src);
    let arc = t.path("a.hbb");
    // Default: the summary; -q: nothing; messages keep their "hbb: " form.
    let o = hbb(&["snapshot", s(&src), s(&arc)]);
    assert_ok(&o);
    assert!(
        stderr(&o)
            .lines()
            .any(|l| l.starts_with("hbb: ") && l.contains(" files, "))
    );
    let o = hbb(&["verify", "-q", s(&arc)]);
    assert_ok(&o);
    assert_eq!(stderr(&o), "");
    let o = hbb(&["-v", "verify", s(&arc)]);
    assert!(stderr(&o).contains(": OK"));
    let o = hbb(&["info", s(&t.path("missing.hbb"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("hbb: error: "), "{}", stderr(&o));

    // Under systemd, stderr is the journal's stream and JOURNAL_STREAM
    // names it: each line then starts with its syslog priority.
    let log = t.path("stderr");
    let f = fs::File::create(&log).unwrap();
    let md = f.metadata().unwrap();
    let run = |args: &[&str], journal: &str| {
        Command::new(bin())
            .args(args)
            .env("JOURNAL_STREAM", journal)
            .stderr(f.try_clone().unwrap())
            .status()
            .unwrap()
    };
    let journal = format!("{}:{}", md.dev(), md.ino());
    assert!(run(&["verify", s(&arc)], &journal).success());
    assert!(!run(&["info", s(&t.path("missing.hbb"))], &journal).success());
    // A JOURNAL_STREAM naming another stream (inherited) changes nothing.
    assert!(run(&["verify", s(&arc)], "1:2").success());
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("<6>hbb: ") && lines[0].ends_with(": OK"),
        "{text}"
    );
    assert!(lines[1].starts_with("<3>hbb: error: "), "{text}");
    assert!(
        lines[2].starts_with("hbb: ") && lines[2].ends_with(": OK"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// mount(8)'s calling convention, without the package

#[test]
fn mount_helper_calling_convention() {
    require_root();
    let t = Tmp::new("sys-helper");
    let src = t.path("src");
    make_small_tree(&src);
    let arc = t.path("a.hbb");
    assert_ok(&hbb(&["snapshot", "-q", s(&src), s(&arc)]));
    let mp = t.path("mnt");
    fs::create_dir(&mp).unwrap();
    let _guard = Unmount(mp.clone());
    // What mount.fuse3 runs for `mount -t fuse.hbb -o nofail,... ARCHIVE
    // MOUNTPOINT` (it drops nofail itself, and adds dev,suid), plus what
    // other mount(8) front ends pass on.
    let o = hbb(&[
        s(&arc),
        s(&mp),
        "-o",
        "rw,noatime,relatime,allow_other,nofail,_netdev,defaults,x-systemd.automount,comment=x,cache=8M,threads=2,dev,suid",
    ]);
    assert_ok(&o);
    let (fstype, opts) = mounted(&mp).expect("mounted");
    assert!(fstype.starts_with("fuse"), "{fstype}");
    for want in ["ro", "nosuid", "nodev", "noatime"] {
        assert!(opts.split(',').any(|o| o == want), "{want} not in {opts}");
    }
    diff_r(&src, &mp);
    assert!(sh("umount", &[s(&mp)]).status.success());
    assert!(mounted(&mp).is_none());
    wait_until("the daemon exits after umount", 10, || {
        processes_with(s(&arc)).is_empty()
    });
    // A bad option still fails, with the reason, and nothing is mounted.
    let o = hbb(&[s(&arc), s(&mp), "-o", "cache=lots"]);
    assert_fails(&o, 1, "cache=lots");
    assert!(mounted(&mp).is_none());
    // A mistyped subcommand is still clap's usage error.
    let o = hbb(&["snapshto", "a", "b"]);
    assert_eq!(o.status.code(), Some(2));
}

// ---------------------------------------------------------------------------
// The Debian package

/// Removes the package on drop, unless it was there before the test.
struct Installed {
    was_installed: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.was_installed {
            let _ = Command::new("dpkg")
                .args(["--purge", "hbb"])
                .stdout(Stdio::null())
                .status();
        }
    }
}

#[test]
fn debian_package() {
    require_root();
    let t0 = Instant::now();
    let t = Tmp::new("sys-deb");
    // Build: the binary this test suite runs, packaged (a release build
    // would cost minutes; scripts/deb.sh alone makes one).
    let out = sh_ok(
        "bash",
        &[
            &format!("{ROOT}/scripts/deb.sh"),
            "--binary",
            bin(),
            "--out",
            s(&t.path("deb")),
        ],
    );
    let deb = PathBuf::from(out.trim());
    assert!(deb.is_file(), "{out}");
    let depends = sh_ok("dpkg-deb", &["-f", s(&deb), "Depends"]);
    assert!(depends.contains("fuse3"), "Depends: {depends}");
    assert!(depends.contains("libc6"), "Depends: {depends}");
    let list = sh_ok("dpkg-deb", &["-c", s(&deb)]);
    for path in [
        "./usr/bin/hbb",
        "./usr/share/man/man1/hbb.1.gz",
        "./usr/share/man/man1/hbb-snapshot.1.gz",
        "./usr/share/man/man1/hbb-mount.1.gz",
        "./usr/share/bash-completion/completions/hbb",
        "./usr/share/zsh/vendor-completions/_hbb",
        "./usr/share/fish/vendor_completions.d/hbb.fish",
        "./lib/systemd/system/hbb-snapshot@.service",
        "./lib/systemd/system/hbb-snapshot@.timer",
        "./lib/systemd/system/hbb-daemon.service",
        "./usr/lib/hbb/snapshot-unit",
        "./usr/share/doc/hbb/README.md",
        "./usr/share/doc/hbb/docs/JSON.md",
        "./usr/share/doc/hbb/copyright",
        "./usr/share/doc/hbb/LICENSE",
        "./usr/share/doc/hbb/examples/snapshot.conf",
        "./usr/share/doc/hbb/examples/hbb-daemon-fleet.conf",
        "./usr/share/doc/hbb/docs/PROTOCOL.md",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} not in the package:\n{list}"
        );
    }

    // Install. Minimal images tell dpkg to skip man pages and docs: not ours.
    let was_installed = sh("dpkg-query", &["-W", "-f=${Status}", "hbb"])
        .stdout
        .starts_with(b"install ok installed");
    let _installed = Installed { was_installed };
    sh_ok(
        "dpkg",
        &[
            "--path-include=/usr/share/man/man1/hbb*",
            "--path-include=/usr/share/doc/hbb/*",
            "-i",
            s(&deb),
        ],
    );
    assert_eq!(
        sh_ok("dpkg-query", &["-W", "-f=${Status}", "hbb"]),
        "install ok installed"
    );
    let backups = fs::metadata("/var/backups/hbb").expect("postinst made /var/backups/hbb");
    assert_eq!(backups.mode() & 0o7777, 0o700);
    let usr = "/usr/bin/hbb";
    assert!(sh_ok(usr, &["--version"]).starts_with("hbb 0.1.0"));

    // A snapshot, from /usr, and its JSON as documented.
    let src = t.path("src");
    make_small_tree(&src);
    let arc = t.path("backups/x.hbb");
    fs::create_dir(t.path("backups")).unwrap();
    let o = sh(usr, &["snapshot", "--json", s(&src), s(&arc)]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_json("snapshot", &o.stdout, false);
    let o = sh(usr, &["info", "--json", s(&arc)]);
    check_json("info", &o.stdout, false);
    sh_ok(usr, &["verify", "-q", s(&arc)]);

    // man finds every page.
    assert_eq!(
        sh_ok("man", &["-w", "hbb"]).trim(),
        "/usr/share/man/man1/hbb.1.gz"
    );
    for c in [
        "snapshot", "restore", "verify", "info", "ls", "cat", "mount", "umount",
    ] {
        assert!(
            sh("man", &["-w", &format!("hbb-{c}")]).status.success(),
            "man hbb-{c}"
        );
    }

    // Tab, with the installed completion file, as bash-completion loads it.
    assert_eq!(
        complete_bash(
            Path::new("/usr/share/bash-completion/completions/hbb"),
            &["hbb", "sn"]
        ),
        ["snapshot"]
    );
    assert_eq!(
        complete_bash(
            Path::new("/usr/share/bash-completion/completions/hbb"),
            &["hbb", "snapshot", "--one-file"]
        ),
        ["--one-file-system"]
    );

    // mount(8) with -t fuse.hbb, diff -r, umount(8).
    let mp = t.path("mnt");
    fs::create_dir(&mp).unwrap();
    let _guard = Unmount(mp.clone());
    sh_ok(
        "mount",
        &[
            "-t",
            "fuse.hbb",
            "-o",
            "ro,allow_other,nofail,_netdev,noauto,x-systemd.device-timeout=5s",
            s(&arc),
            s(&mp),
        ],
    );
    let (fstype, opts) = mounted(&mp).expect("mount -t fuse.hbb mounted nothing");
    assert!(fstype.starts_with("fuse"), "{fstype}");
    for want in ["ro", "nosuid", "nodev"] {
        assert!(opts.split(',').any(|o| o == want), "{want} not in {opts}");
    }
    diff_r(&src, &mp);
    sh_ok("umount", &[s(&mp)]);
    assert!(mounted(&mp).is_none());
    wait_until("the daemon exits after umount", 10, || {
        processes_with(s(&arc)).is_empty()
    });

    // The fstab line of the README (from a file of our own, not /etc/fstab).
    let fstab = t.path("fstab");
    fs::write(
        &fstab,
        format!(
            "# hbb test\n{} {} fuse.hbb ro,allow_other,nofail 0 0\n",
            s(&arc),
            s(&mp)
        ),
    )
    .unwrap();
    sh_ok("mount", &["-T", s(&fstab), s(&mp)]);
    assert!(mounted(&mp).is_some(), "the fstab line mounted nothing");
    diff_r(&src, &mp);
    // Another user sees it (allow_other), as the modes allow.
    let o = sh(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "cat",
            &format!("{}/hello.txt", s(&mp)),
        ],
    );
    assert_eq!(o.stdout, b"hello, packaged hbb\n", "{}", stderr(&o));
    sh_ok("umount", &[s(&mp)]);
    assert!(mounted(&mp).is_none());

    // The systemd units are clean, and their command takes a dated snapshot.
    let o = sh(
        "systemd-analyze",
        &[
            "verify",
            "/lib/systemd/system/hbb-snapshot@.service",
            "/lib/systemd/system/hbb-snapshot@.timer",
            "/lib/systemd/system/hbb-daemon.service",
        ],
    );
    assert!(
        o.status.success() && !stderr(&o).contains("hbb"),
        "systemd-analyze verify: {}",
        stderr(&o)
    );
    // The sandbox, as systemd rates it: exposure 1.0 of 10 ("OK"); the
    // threshold (in tenths) fails the test if a change loosens it.
    let o = sh(
        "systemd-analyze",
        &[
            "security",
            "--offline=true",
            "--threshold=15",
            "/lib/systemd/system/hbb-snapshot@.service",
        ],
    );
    assert!(
        o.status.success(),
        "systemd-analyze security: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = sh(
        "systemd-analyze",
        &[
            "security",
            "--offline=true",
            "--threshold=20",
            "/lib/systemd/system/hbb-daemon.service",
        ],
    );
    assert!(
        o.status.success(),
        "systemd-analyze security of the daemon: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let dest = t.path("dest");
    fs::create_dir(&dest).unwrap();
    let o = Command::new("/usr/lib/hbb/snapshot-unit")
        .arg("home")
        .env("SOURCE", &src)
        .env("DEST", &dest)
        .env("OPTIONS", "--exclude *.bin --level 5")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let made: Vec<PathBuf> = fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(made.len(), 1);
    let name = made[0].file_name().unwrap().as_bytes();
    assert!(
        name.starts_with(b"home-20") && name.ends_with(b".hbb") && name.len() == 26,
        "{}",
        made[0].display()
    );
    let info: Value = serde_json::from_str(&sh_ok(usr, &["info", "--json", s(&made[0])])).unwrap();
    assert_eq!(info["mode"], "file");
    assert_eq!(info["level"], 5);
    assert_eq!(info["excludes"], serde_json::json!(["*.bin"]));
    let o = Command::new("/usr/lib/hbb/snapshot-unit")
        .arg("nothing")
        .env_remove("SOURCE")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("SOURCE= is not set in /etc/hbb/snapshot/nothing.conf"));

    eprintln!("debian_package: {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn repository_json_outputs_match_docs() {
    let t = Tmp::new("sys-repo-json");
    let (src, repo, home) = (t.path("src"), t.path("repo"), t.path("home"));
    make_small_tree(&src);
    assert_ok(&hbb(&["repo", "init", "-q", s(&repo)]));
    let o = hbb(&["snapshot", "--json", s(&src), s(&repo), "--tag", "t1"]);
    assert_ok(&o);
    check_json("snapshot SOURCE REPO", &o.stdout, false);
    fs::write(src.join("new"), b"more\n").unwrap();
    let h = s(&home);
    assert_ok(&hbb(&[
        "--home",
        h,
        "job",
        "add",
        "j",
        "--source",
        s(&src),
        "--repo",
        s(&repo),
        "--schedule",
        "daily 02:30",
        "--keep-last",
        "5",
        "--exclude",
        "*.o",
        "--tag",
        "t2",
    ]));
    assert_ok(&hbb(&["--home", h, "job", "run", "-q", "j"]));
    let o = hbb(&["list", "--json", s(&repo)]);
    assert_ok(&o);
    check_json("list", &o.stdout, true);
    let o = hbb(&["info", "--json", s(&repo)]);
    assert_ok(&o);
    check_json("info REPO", &o.stdout, true);
    let o = hbb(&["prune", "--json", "--dry-run", "--keep-last", "1", s(&repo)]);
    assert_ok(&o);
    check_json("prune", &o.stdout, false);
    let o = hbb(&["--home", h, "job", "list", "--json"]);
    assert_ok(&o);
    check_json("job list", &o.stdout, true);
    let o = hbb(&["--home", h, "history", "--json"]);
    assert_ok(&o);
    check_json("history", &o.stdout, true);
    let o = hbb(&["--home", h, "status", "--json"]);
    assert_ok(&o);
    check_json("status", &o.stdout, true);
    assert_ok(&hbb(&[
        "--home",
        h,
        "host",
        "add",
        "web1",
        "root@web1.invalid",
        "--group",
        "web",
    ]));
    // `false` as ssh: the check fails, and says so in the JSON.
    let o = hbb_env(
        &["--home", h, "host", "list", "--json", "--check"],
        &[("HBB_RSH", "false")],
    );
    assert_ok(&o);
    check_json("host list", &o.stdout, true);
}
