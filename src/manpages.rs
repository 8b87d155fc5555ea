//! `hbb man DIR`: the man pages, hbb(1) and hbb-COMMAND(1), generated from
//! the clap definitions (clap_mangen) so that they never drift from
//! `--help`, plus the sections clap has no place for: exit status (from
//! [`crate::cli::exit::TABLE`]), mount(8) and fstab, environment, files.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_mangen::Man;

use crate::cli::{self, exit};

/// Writes hbb.1 and one page per (visible) subcommand into `dir`, creating
/// it if missing; returns the paths written.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    let mut pages = vec![cmd.clone()];
    pages.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    for page in pages {
        let man = Man::new(page.clone())
            .source(format!("hbb {}", env!("CARGO_PKG_VERSION")))
            .manual("hbb manual")
            .date(date());
        let path = dir.join(man.get_filename());
        let mut out = Vec::new();
        render(&man, &page, &mut out)?;
        std::fs::write(&path, out)?;
        written.push(path);
    }
    Ok(written)
}

/// The page of `cmd`: clap_mangen's sections (but its "EXTRA", which would
/// repeat the exit codes as plain text), then ours.
fn render(man: &Man, cmd: &clap::Command, w: &mut Vec<u8>) -> std::io::Result<()> {
    let name = cmd.get_name();
    let top = name == "hbb";
    man.render_title(w)?;
    // Each of clap_mangen's sections comes with the preamble that defines
    // \*(Aq: once is enough.
    let mut section_of_clap = |f: &dyn Fn(&mut dyn Write) -> std::io::Result<()>| {
        let mut buf = Vec::new();
        f(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let body = text.strip_prefix(PREAMBLE).unwrap_or(&text);
        w.extend_from_slice(body.as_bytes());
        std::io::Result::Ok(())
    };
    section_of_clap(&|b| man.render_name_section(b))?;
    section_of_clap(&|b| man.render_synopsis_section(b))?;
    section_of_clap(&|b| man.render_description_section(b))?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        section_of_clap(&|b| man.render_options_section(b))?;
    }
    if top {
        section_of_clap(&|b| man.render_subcommands_section(b))?;
    }
    match name {
        "hbb" => {
            section(w, "LOGGING AND OUTPUT", LOGGING)?;
            section(w, "ENVIRONMENT", ENVIRONMENT)?;
            section(w, "FILES", FILES)?;
        }
        "mount" => section(w, "MOUNT(8) AND FSTAB", FSTAB)?,
        "umount" => section(w, "UMOUNT(8)", UMOUNT)?,
        "snapshot" => section(w, "SCHEDULED SNAPSHOTS", SCHEDULED)?,
        _ => {}
    }
    exit_status(w)?;
    let see_also = if top {
        let mut v: Vec<String> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("hbb-{}(1)", s.get_name()))
            .collect();
        v.extend(["mount(8)", "fstab(5)", "mount.fuse3(8)", "systemd.timer(5)"].map(String::from));
        v.join(", ")
    } else if matches!(name, "mount" | "umount") {
        "hbb(1), mount(8), umount(8), fstab(5), mount.fuse3(8), fusermount3(1)".into()
    } else {
        "hbb(1)".into()
    };
    section(w, "SEE ALSO", &see_also)?;
    section(w, "VERSION", concat!("hbb ", env!("CARGO_PKG_VERSION")))
}

/// What clap_mangen (roff) starts every piece of output with.
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

fn exit_status(w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(w, ".SH \"EXIT STATUS\"")?;
    for (code, what) in exit::TABLE {
        writeln!(w, ".TP\n.B {code}\n{}", escape(&what.replace('`', "")))?;
    }
    Ok(())
}

/// A section from plain text: paragraphs split by blank lines; a paragraph
/// whose lines start with two spaces is shown as is (an example).
fn section(w: &mut dyn Write, title: &str, text: &str) -> std::io::Result<()> {
    writeln!(w, ".SH \"{title}\"")?;
    for (i, para) in text.trim().split("\n\n").enumerate() {
        if i > 0 {
            writeln!(w, ".PP")?;
        }
        if para.lines().all(|l| l.starts_with("  ")) {
            writeln!(w, ".nf\n.RS 4")?;
            for l in para.lines() {
                writeln!(w, "{}", escape(&l[2..]))?;
            }
            writeln!(w, ".RE\n.fi")?;
        } else {
            for l in para.lines() {
                writeln!(w, "{}", escape(l.trim()))?;
            }
        }
    }
    Ok(())
}

/// Roff-safe text: backslashes escaped, hyphens as minus signs (so that
/// options copy and search as typed), no line starting as a request.
fn escape(s: &str) -> String {
    let e = s.replace('\\', "\\e").replace('-', "\\-");
    if e.starts_with('.') || e.starts_with('\'') {
        format!("\\&{e}")
    } else {
        e
    }
}

/// The page's date: SOURCE_DATE_EPOCH's day when set (reproducible
/// builds), else none.
fn date() -> String {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|secs| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
        })
        .unwrap_or_default()
}

const LOGGING: &str = "
Messages go to stderr, each line starting with \"hbb: \" (\"hbb: warning: \",
\"hbb: error: \"); results asked for with --json go to stdout, in the shapes
documented in /usr/share/doc/hbb/docs/JSON.md. -q keeps warnings and errors,
-qq errors only; -v adds debug lines, -vv trace lines. When stderr is the
systemd journal, each line carries its syslog priority, so journalctl -p
filters them. A background hbb mount logs to syslog (tag hbb).";

const ENVIRONMENT: &str = "
HBB_LOG: a log filter overriding -v and -q, as env_logger reads it:
debug, or hbb::mount=trace,fuser=debug.

SOURCE_DATE_EPOCH: when set, snapshot pins the archive's times to it, so
that the same source and options give a byte-identical archive.

JOURNAL_STREAM: set by systemd for a service's output; when it names
stderr, log lines get <N> priority prefixes for the journal.";

const FILES: &str = "
/etc/hbb/snapshot/NAME.conf: what the systemd units
hbb-snapshot@NAME.service and hbb-snapshot@NAME.timer back up (SOURCE=,
DEST=, OPTIONS=); see /usr/share/doc/hbb/examples/snapshot.conf.

/var/backups/hbb: where those units write, the one directory their sandbox
leaves writable.

/etc/fstab: archives to mount at boot, type fuse.hbb (see hbb-mount(1)).";

const FSTAB: &str = "
An archive mounts with mount(8) and from /etc/fstab, as type fuse.hbb:

  mount -t fuse.hbb /backups/x.hbb /mnt/x
  umount /mnt/x

  # /etc/fstab
  /backups/x.hbb  /mnt/x  fuse.hbb  ro,allow_other,nofail  0 0

mount(8) runs fuse3's mount.fuse3, which runs hbb ARCHIVE MOUNTPOINT -o
OPTIONS; hbb then mounts as hbb mount does and returns once the mount works.
hbb must be in mount(8)'s PATH (/usr/bin from the package; after cargo
install, link it into /usr/local/bin). Options for mount(8) and systemd
alone (nofail, _netdev, defaults, auto, noauto, user, x-*, comment=,
relatime...) are ignored; rw, which mount(8) passes when nothing is said,
is ignored too (the mount is always read-only); so are the dev and suid
that mount.fuse3 adds to every mount: a mount from fstab is nodev,nosuid
(use hbb mount -o dev,suid to have them). cache=SIZE and threads=N stand
for --cache and --threads. umount(8) unmounts, and the daemon exits.";

const UMOUNT: &str = "
As root, umount MOUNTPOINT (umount(8)) unmounts an archive too, mounted by
hbb mount or from fstab; the daemon then exits.";

const SCHEDULED: &str = "
The units hbb-snapshot@NAME.timer and hbb-snapshot@NAME.service take a
snapshot of the SOURCE named in /etc/hbb/snapshot/NAME.conf into
DEST/NAME-YYYY-MM-DDTHHMMSS.hbb, daily, in a sandbox that can read every
file and write only below /var/backups/hbb:

  cp /usr/share/doc/hbb/examples/snapshot.conf /etc/hbb/snapshot/home.conf
  systemctl enable --now hbb-snapshot@home.timer
  journalctl -u hbb-snapshot@home";
