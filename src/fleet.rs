//! Managers on other hosts (the patent's FIG 4): the master keeps hosts,
//! grouped, in its database, and runs a job whose `host` is set by
//! running `hbb snapshot` on that host through ssh — so the data goes from
//! the manager straight to its repository (local to it, or an agent's
//! `ssh://…`), never through the master. The run's result comes back as
//! the snapshot's JSON and is recorded in the master's history.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::master::{Job, Master, RunRow};

/// A manager host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// `ssh://[user@]host[:port]`.
    pub url: String,
    /// Its group ("" for none): `status --group`, `job run --group`, the
    /// daemon's `--group-max-jobs`.
    pub group: String,
    /// The hbb program on that host.
    pub hbb: String,
    pub created_ns: i64,
}

/// `ssh://[user@]host[:port]` or `[user@]host` → the normalised URL.
pub fn host_url(s: &str) -> Result<crate::remote::Url> {
    let bad = || {
        Error::Other(format!(
            "{s:?}: a host is ssh://[user@]host[:port] or [user@]host"
        ))
    };
    let full = match s.strip_prefix("ssh://") {
        Some(rest) if rest.contains('/') => {
            let (auth, path) = rest.split_once('/').unwrap();
            if !path.is_empty() {
                return Err(bad());
            }
            format!("ssh://{auth}/")
        }
        Some(rest) => format!("ssh://{rest}/"),
        None if s.contains(['/', ':']) => return Err(bad()),
        None => format!("ssh://{s}/"),
    };
    crate::remote::parse(std::path::Path::new(&full)).ok_or_else(bad)
}

pub fn valid_group(g: &str) -> bool {
    g.len() <= 64
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Master {
    pub fn add_host(&self, h: &Host, replace: bool) -> Result<()> {
        if !crate::repo::valid_snapshot_name(&h.name) {
            return Err(Error::Other(format!(
                "host name {:?}: use letters, digits and ._-:+@",
                h.name
            )));
        }
        if !valid_group(&h.group) {
            return Err(Error::Other(format!(
                "group {:?}: use letters, digits and ._-",
                h.group
            )));
        }
        self.put_spec("hosts", "host", &h.name, h, replace)
    }

    pub fn hosts(&self) -> Result<Vec<Host>> {
        self.specs("hosts", "host")
    }

    pub fn host(&self, name: &str) -> Result<Host> {
        self.hosts()?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| Error::Other(format!("no host named {name:?} (see `hbb host list`)")))
    }

    pub fn rm_host(&self, name: &str) -> Result<()> {
        let users: Vec<String> = self
            .jobs()?
            .into_iter()
            .filter(|j| j.host == name)
            .map(|j| j.name)
            .collect();
        if !users.is_empty() {
            return Err(Error::Other(format!(
                "host {name:?} has jobs ({}): remove them first",
                users.join(", ")
            )));
        }
        self.rm_spec("hosts", "host", name)
    }

    /// The group of a job: its host's, or "" for a job of this host.
    pub fn group_of(&self, job: &Job, hosts: &[Host]) -> String {
        hosts
            .iter()
            .find(|h| h.name == job.host)
            .map(|h| h.group.clone())
            .unwrap_or_default()
    }
}

/// Quotes a word for the far end's shell (ssh runs the command through it).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=@%+,-".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `ssh … host 'hbb ARGS…'`, as HBB_RSH says to run ssh.
pub fn ssh_command(h: &Host, args: &[String]) -> Result<Command> {
    let url = host_url(&h.url)?;
    let mut line = shell_quote(&h.hbb);
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    Ok(crate::remote::ssh(&url, line))
}

/// What one hbb command on a host gave: exit code, stdout, its last stderr lines.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    tail: Vec<String>,
}

/// Runs `hbb ARGS` on the host. Its stdin stays open while it runs: if
/// this process dies (the daemon abandons the run), ssh closes it and the
/// far end's `--stop-with-stdin` stops the snapshot there.
fn run_on(h: &Host, args: &[String]) -> Result<Outcome> {
    let mut cmd = ssh_command(h, args)?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Other(format!("host {}: cannot run ssh (HBB_RSH): {e}", h.name)))?;
    let stdin = child.stdin.take();
    let mut out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let name = h.name.clone();
    let errs = std::thread::spawn(move || {
        let mut tail = Vec::new();
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            log::warn!("{name}: {line}");
            tail.push(line);
            if tail.len() > 6 {
                tail.remove(0);
            }
        }
        tail
    });
    let mut stdout = String::new();
    let _ = out.read_to_string(&mut stdout);
    let status = child
        .wait()
        .map_err(|e| Error::Other(format!("host {}: {e}", h.name)))?;
    drop(stdin);
    let tail = errs.join().unwrap_or_default();
    Ok(Outcome {
        code: status.code(),
        stdout,
        tail,
    })
}

fn failure(h: &Host, o: &Outcome, what: &str) -> String {
    let said: Vec<String> = o
        .tail
        .iter()
        .map(|l| {
            l.trim_start_matches("hbb: ")
                .trim_start_matches("error: ")
                .to_string()
        })
        .collect();
    let why = if o.code == Some(255) {
        format!("host {} unreachable over ssh", h.name)
    } else {
        format!("{what} on host {} failed", h.name)
    };
    if said.is_empty() {
        format!("{why} (exit {:?})", o.code)
    } else {
        format!("{why}: {}", said.join(" / "))
    }
}

/// The policy as `hbb prune` flags.
fn keep_flags(p: &crate::retention::Policy) -> Vec<String> {
    let mut v = Vec::new();
    for (flag, n) in [
        ("--keep-last", p.keep_last),
        ("--keep-hourly", p.keep_hourly),
        ("--keep-daily", p.keep_daily),
        ("--keep-weekly", p.keep_weekly),
        ("--keep-monthly", p.keep_monthly),
        ("--keep-yearly", p.keep_yearly),
    ] {
        if n > 0 {
            v.push(format!("{flag}={n}"));
        }
    }
    if let Some(s) = p.keep_within_secs.filter(|s| *s > 0) {
        v.push(format!("--keep-within={s}s"));
    }
    v
}

/// One run of a job on its host: the snapshot, then its retention there,
/// then the count of the job's snapshots. Fills `row`; returns the exit
/// code (0 ok, 3 incomplete, 1 failed).
pub fn run_remote(job: &Job, h: &Host, row: &mut RunRow) -> u8 {
    let mut args: Vec<String> = vec![
        "snapshot".into(),
        "--json".into(),
        "-q".into(),
        "--stop-with-stdin".into(),
        "--job".into(),
        job.name.clone(),
        "--mode".into(),
        job.mode.clone(),
        "--lock-wait".into(),
        "6h".into(),
        "--compress-on".into(),
        if job.compress_on.is_empty() {
            "source".into()
        } else {
            job.compress_on.clone()
        },
    ];
    if let Some(b) = job.block_size {
        args.push(format!("--block-size={b}"));
    }
    if let Some(l) = job.level {
        args.push(format!("--level={l}"));
    }
    for e in &job.excludes {
        args.push(format!("--exclude={e}"));
    }
    if job.one_file_system {
        args.push("--one-file-system".into());
    }
    for t in &job.tags {
        args.push(format!("--tag={t}"));
    }
    args.push("--".into());
    args.push(job.source.to_string_lossy().into_owned());
    args.push(job.repo.to_string_lossy().into_owned());
    let o = match run_on(h, &args) {
        Ok(o) => o,
        Err(e) => {
            row.status = "failed".into();
            row.message = e.to_string();
            return 1;
        }
    };
    let json: Option<serde_json::Value> = serde_json::from_str(&o.stdout).ok();
    let snap = json.as_ref().and_then(|j| j.get("snapshot"));
    match (o.code, snap) {
        (Some(0) | Some(3), Some(s)) => {
            let u = |k: &str| s.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            let t = |k: &str| {
                s.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            row.snapshot = t("name");
            row.size = u("size");
            row.bytes_read = u("bytes_read");
            row.bytes_stored = u("bytes_stored");
            row.files = u("files");
            row.errors = u("warnings");
            row.mode = t("mode");
            row.mode_reason = t("mode_reason");
            if row.errors > 0 {
                row.status = "incomplete".into();
                row.message = format!("{} entries could not be read", row.errors);
            } else {
                row.status = "ok".into();
            }
        }
        _ => {
            row.status = "failed".into();
            row.message = failure(h, &o, "the snapshot");
            return 1;
        }
    }
    let repo = job.repo.to_string_lossy().into_owned();
    if !job.keep.is_empty() {
        let mut args = vec![
            "prune".to_string(),
            "-q".into(),
            "--json".into(),
            "--source".into(),
            job.source.to_string_lossy().into_owned(),
        ];
        args.extend(keep_flags(&job.keep));
        args.push("--".into());
        args.push(repo.clone());
        match run_on(h, &args) {
            Ok(o) if o.code == Some(0) => {
                let removed = serde_json::from_str::<serde_json::Value>(&o.stdout)
                    .ok()
                    .and_then(|j| j.get("removed").cloned())
                    .and_then(|r| r.as_array().cloned())
                    .unwrap_or_default();
                if !removed.is_empty() {
                    log::info!(
                        "job {}: retention ({}) removed {} snapshot(s) on {}",
                        job.name,
                        job.keep.describe(),
                        removed.len(),
                        h.name
                    );
                }
            }
            Ok(o) => {
                row.status = "incomplete".into();
                row.message = format!(
                    "snapshot made, but retention failed: {}",
                    failure(h, &o, "prune")
                );
            }
            Err(e) => {
                row.status = "incomplete".into();
                row.message = format!("snapshot made, but retention failed: {e}");
            }
        }
    }
    // How many snapshots the job has there now (for `hbb status`).
    if let Ok(o) = run_on(h, &["list".into(), "--json".into(), "--".into(), repo])
        && o.code == Some(0)
        && let Ok(rows) = serde_json::from_str::<Vec<serde_json::Value>>(&o.stdout)
    {
        row.snapshots = Some(
            rows.iter()
                .filter(|r| r.get("job").and_then(|j| j.as_str()) == Some(&job.name))
                .count() as u64,
        );
    }
    if row.status == "ok" { 0 } else { 3 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/srv/data"), "/srv/data");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("--exclude=*.tmp"), "'--exclude=*.tmp'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn host_urls() {
        let u = host_url("ssh://bob@m1:2222").unwrap();
        assert_eq!(
            (u.user.as_deref(), u.host.as_str(), u.port),
            (Some("bob"), "m1", Some(2222))
        );
        assert_eq!(host_url("m1").unwrap().host, "m1");
        assert_eq!(
            host_url("root@10.0.0.2").unwrap().user.as_deref(),
            Some("root")
        );
        assert!(host_url("ssh://m1/srv").is_err());
        assert!(host_url("m1:/x").is_err());
        assert!(host_url("-oProxyCommand=x").is_err());
    }
}
