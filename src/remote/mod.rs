//! Repositories on other hosts, reached through ssh (docs/PROTOCOL.md).
//!
//! ```text
//! hbb (client) ──ssh [user@]host hbb serve──► hbb serve (the repository's host)
//!     stdin/stdout of the ssh channel carry framed messages (proto)
//! ```
//!
//! The client does what it does for a local repository — walk, read,
//! hash, and (with `--compress-on source`) compress — and sends the far
//! end only what it lacks; the far end stores frames in its packs, names
//! snapshots, keeps the catalog, prunes. No request names a file: only a
//! snapshot name (checked as in a local repository) or a pack id.

pub mod client;
pub mod proto;
pub mod server;

use std::path::Path;

/// Where a remote repository is: `ssh://[user@]host[:port]/path` or, as
/// scp writes it, `[user@]host:path` (relative to the login directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ssh://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if self.path.starts_with('/') {
            write!(f, "{}", self.path)
        } else {
            write!(f, "/~/{}", self.path)
        }
    }
}

impl Url {
    /// `[user@]host` as ssh takes it.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

fn host_ok(h: &str) -> bool {
    !h.is_empty()
        && !h.starts_with('-')
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:%".contains(&b))
}

fn user_ok(u: &str) -> bool {
    !u.is_empty()
        && !u.starts_with('-')
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-$".contains(&b))
}

/// The remote repository `s` names, if it names one (`REPO::NAME` split off first).
pub fn parse(s: &Path) -> Option<Url> {
    let s = s.to_str()?;
    // (An IPv6 address in brackets may hold "::".)
    let outside = match (s.find('['), s.find(']')) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &s[..a], &s[b..]),
        _ => s.to_string(),
    };
    if outside.contains("::") {
        // REPO::NAME: one snapshot (see repo::split_target).
        return None;
    }
    if let Some(rest) = s.strip_prefix("ssh://") {
        let (auth, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (user, hostport) = match auth.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, auth),
        };
        let (host, port) = if let Some(h6) = hostport.strip_prefix('[') {
            let (h, after) = h6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse::<u16>().ok()?),
                None if after.is_empty() => None,
                None => return None,
            };
            (h.to_string(), port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.parse::<u16>().ok()?)),
                None => (hostport.to_string(), None),
            }
        };
        // ssh://host/~/x and ssh://host/./x are relative to the login directory.
        // ssh://host/~ is the login directory itself.
        let path = if path == "/~" { "/~/." } else { path };
        let path = path
            .strip_prefix("/~/")
            .or_else(|| path.strip_prefix("/./"))
            .map(str::to_string)
            .unwrap_or_else(|| path.to_string());
        if !host_ok(&host) || user.as_deref().is_some_and(|u| !user_ok(u)) || path.is_empty() {
            return None;
        }
        return Some(Url {
            user,
            host,
            port,
            path,
        });
    }
    // scp style: [user@]host:path, where host holds no '/', and nothing by
    // that name exists here (write ./a:b for a local file called a:b).
    let (auth, path) = s.split_once(':')?;
    if auth.contains('/') || path.is_empty() || Path::new(s).exists() {
        return None;
    }
    let (user, host) = match auth.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h.to_string()),
        None => (None, auth.to_string()),
    };
    if !host_ok(&host) || host.contains(':') || user.as_deref().is_some_and(|u| !user_ok(u)) {
        return None;
    }
    Some(Url {
        user,
        host,
        port: None,
        path: path.to_string(),
    })
}

/// The ssh command line: `HBB_RSH` split into words, or by default ssh
/// with keep-alives and a connect timeout, so that a dead link or host
/// fails a run in about a minute instead of hanging it.
pub fn rsh_words() -> Vec<String> {
    let rsh = std::env::var("HBB_RSH").unwrap_or_default();
    let words = split_words(&rsh);
    if !words.is_empty() {
        return words;
    }
    [
        "ssh",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-o",
        "ConnectTimeout=30",
    ]
    .map(String::from)
    .to_vec()
}

/// `$HBB_RSH [-p PORT] [USER@]HOST LINE`: LINE run by the far end's shell.
pub fn ssh(url: &Url, line: String) -> std::process::Command {
    let words = rsh_words();
    let mut cmd = std::process::Command::new(&words[0]);
    cmd.args(&words[1..]);
    if let Some(p) = url.port {
        cmd.arg("-p").arg(p.to_string());
    }
    cmd.arg(url.destination()).arg(line);
    cmd
}

/// Splits a command line as a shell would split simple words: at spaces,
/// with '…' and "…" quoting (for HBB_RSH).
pub fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut any = false;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                any = true;
            }
            None if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            None => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Url> {
        parse(Path::new(s))
    }

    #[test]
    fn urls() {
        let u = p("ssh://bob@host.example:2222/srv/repo").unwrap();
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.host, "host.example");
        assert_eq!(u.port, Some(2222));
        assert_eq!(u.path, "/srv/repo");
        assert_eq!(p("ssh://h/~").unwrap().path, ".");
        let u = p("ssh://10.0.0.2/~/repo").unwrap();
        assert_eq!((u.user, u.port, u.path.as_str()), (None, None, "repo"));
        let u = p("ssh://[fe80::1]:22/r").unwrap();
        assert_eq!(u.host, "fe80::1");
        let u = p("alice@backup:repos/main").unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.path, "repos/main");
        assert_eq!(p("backup:/srv/r").unwrap().path, "/srv/r");
        assert!(p("/srv/repo").is_none());
        assert!(p("./a:b").is_none());
        assert!(p("ssh://-oProxyCommand=x/r").is_none());
        assert!(p("-oProxyCommand=x:r").is_none());
        assert!(p("ssh://host:notaport/r").is_none());
        assert!(p("ssh://host/r::snap").is_none());
        assert_eq!(
            p("ssh://u@h:2/x").unwrap().to_string(),
            "ssh://u@h:2/x".to_string()
        );
    }

    #[test]
    fn words() {
        assert_eq!(
            split_words("ssh -i '/a b/key' -o \"X=1 2\"  -p 22"),
            vec!["ssh", "-i", "/a b/key", "-o", "X=1 2", "-p", "22"]
        );
        assert_eq!(split_words("  "), Vec::<String>::new());
    }
}
