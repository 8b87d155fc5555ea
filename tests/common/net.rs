//! Several "hosts" on this one machine, for the ssh tests: one network
//! namespace per host, each with its own sshd, joined by veth pairs to a
//! bridge. The root namespace (the test process, "the master") has the
//! subnet's .1 and reaches every host; every host reaches every other.
//!
//! Layout of a `Net` in slot N (subnet 10.213.N.0/24):
//! - namespace `hbbtN.br` holds the bridge `br0`; every host's veth ends
//!   there as `h<i>`, and the master's as `mport`. The bridge lives in its own
//!   namespace rather than the root one so that the root namespace's
//!   firewall (br_netfilter hands bridged frames to iptables when the
//!   global `bridge-nf-call-iptables` is 1, as it is on Docker hosts) never
//!   sees the traffic between hosts: a fresh namespace has no rules.
//! - the root namespace has one interface, `hbbtNm`, with 10.213.N.1/24.
//! - namespace `hbbtN-<name>` per host: `lo` and `eth0` with
//!   10.213.N.(i+2)/24, and an sshd on port 22 of that address.
//!
//! Slots are lock files /run/hbb-test-net/slot-N held with flock(2) for
//! the lifetime of the `Net`, so parallel test processes never share a
//! name or a subnet, and a SIGKILLed test's slot is free again at once (the
//! kernel drops its lock). Whoever takes a slot next removes that run's
//! leftovers first (its namespaces and the processes in them, the master
//! interface, its temp dir); `Net::new` also sweeps leftovers of any other
//! slot nobody holds. Drop tears everything down, also when a test panics.
//!
//! Needs root, `ip`/`tc` (iproute2), `sshd` (openssh-server) and
//! `ssh`/`ssh-keygen` (openssh-client); scripts/test.sh installs them.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SLOT_DIR: &str = "/run/hbb-test-net";
const SLOTS: u32 = 250;
const SUBNET: &str = "10.213";
/// The PATH sessions get unless the caller gives one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long `new` waits for every sshd to accept a real ssh login.
const UP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Host {
    pub name: String,
    /// The network namespace (`ip netns exec <ns> ...`).
    pub ns: String,
    /// The host's IPv4 address; its sshd listens on port 22 there.
    pub ip: String,
}

pub struct Net {
    slot: u32,
    /// Holds the flock on /run/hbb-test-net/slot-N; closing it frees the slot.
    lock: File,
    dir: PathBuf,
    hosts: Vec<Host>,
    sshds: Vec<Child>,
    master_ip: String,
    rsh: String,
    /// The caller's pairs and HBB_RSH: what sessions get (SetEnv, with a
    /// default PATH added) and `command_on` sets.
    session_env: Vec<(String, String)>,
    tools: Tools,
}

#[derive(Clone)]
struct Tools {
    ip: PathBuf,
    sshd: PathBuf,
    ssh: PathBuf,
    ssh_keygen: PathBuf,
}

impl Net {
    /// A bridge, one namespace per name with its own sshd, all up and
    /// accepting logins when this returns. Names: `[a-z0-9_]`, at most 20.
    pub fn new(names: &[&str]) -> Net {
        Net::with_env(names, &[])
    }

    /// Like `new`, and every ssh session on every host also gets `env`
    /// (through sshd_config `SetEnv`). Sessions always get `HBB_RSH` =
    /// `rsh()` and `PATH` = the usual system dirs, unless `env` names them.
    pub fn with_env(names: &[&str], env: &[(&str, &str)]) -> Net {
        let tools = Tools::find();
        assert!(!names.is_empty(), "Net::new: no hosts");
        assert!(names.len() <= 200, "Net::new: too many hosts");
        for (i, n) in names.iter().enumerate() {
            assert!(
                !n.is_empty()
                    && n.len() <= 20
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "Net::new: bad host name {n:?} (use [a-z0-9_], at most 20)"
            );
            assert!(!names[..i].contains(n), "Net::new: host {n:?} twice");
        }
        for (k, v) in env {
            assert!(
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "Net::with_env: bad variable name {k:?}"
            );
            assert!(
                !v.contains('\n') && !v.contains('\0'),
                "Net::with_env: {k} has a newline or NUL, sshd_config cannot carry it"
            );
        }
        check_root_unlocked();

        let (slot, lock) = take_slot(&tools);
        let dir = std::env::temp_dir().join(format!("hbb-net-{slot}-{}", std::process::id()));
        let ds = dir.to_str().expect("temp dir is not UTF-8");
        assert!(
            !ds.contains(|c: char| c.is_whitespace() || "\"'\\%#$".contains(c)),
            "Net::new: the temp dir {ds:?} has characters ssh configs or HBB_RSH cannot carry; set TMPDIR"
        );
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        record_slot(&lock, &dir);

        let master_ip = format!("{SUBNET}.{slot}.1");
        let rsh = format!(
            "{} -F {}",
            tools.ssh.display(),
            dir.join("ssh_config").display()
        );
        let hosts = names
            .iter()
            .enumerate()
            .map(|(i, n)| Host {
                name: n.to_string(),
                ns: format!("hbbt{slot}-{n}"),
                ip: format!("{SUBNET}.{slot}.{}", i + 2),
            })
            .collect();
        // From here on a panic drops `net`, which tears down what exists.
        let mut net = Net {
            slot,
            lock,
            dir,
            hosts,
            sshds: Vec::new(),
            master_ip,
            rsh,
            session_env: Vec::new(),
            tools,
        };
        net.make_links();
        net.make_keys_and_configs(env);
        net.start_sshds();
        net.wait_up();
        net
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("Net: no host {name:?}"))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The root namespace's address on the bridge (10.213.N.1).
    pub fn master_ip(&self) -> &str {
        &self.master_ip
    }

    /// The test's temp dir: keys, ssh_config, sshd_<name>.conf/.log/.pid.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sshd log of `host` (sshd -E), for failure messages.
    pub fn sshd_log(&self, host: &str) -> String {
        let h = self.host(host);
        fs::read_to_string(self.dir.join(format!("sshd_{}.log", h.name))).unwrap_or_default()
    }

    /// The ssh command line for HBB_RSH: "/usr/bin/ssh -F <dir>/ssh_config".
    /// Use as `$HBB_RSH root@IP cmd...` (User root is the default, too).
    pub fn rsh(&self) -> String {
        self.rsh.clone()
    }

    /// `ssh -F <dir>/ssh_config root@<host's ip>` from the root namespace;
    /// add the remote command with `.arg(...)`.
    pub fn ssh(&self, host: &str) -> Command {
        let mut c = Command::new(&self.tools.ssh);
        c.arg("-F").arg(self.dir.join("ssh_config"));
        c.arg(format!("root@{}", self.host(host).ip));
        c
    }

    /// Runs `program` inside `host`'s namespace (`ip netns exec NS program`).
    /// Like an ssh session there, it gets HBB_RSH and the pairs given to
    /// `with_env` (but keeps the test's PATH unless those name PATH).
    pub fn command_on(&self, host: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(&self.tools.ip);
        c.args(["netns", "exec", &self.host(host).ns]).arg(program);
        for (k, v) in &self.session_env {
            c.env(k, v);
        }
        c
    }

    /// Pulls `host`'s cable: its port on the bridge goes down, its eth0
    /// loses carrier but keeps its address. Packets to and from it are
    /// dropped, so connections stall (they are not reset), new ones time out.
    pub fn cut(&self, host: &str) {
        let port = self.port(host);
        self.ip_ok(&["-n", &self.bridge_ns(), "link", "set", "dev", &port, "down"]);
    }

    /// Plugs the cable back in; returns once the link is up again.
    pub fn restore(&self, host: &str) {
        let port = self.port(host);
        let ns = self.host(host).ns.clone();
        self.ip_ok(&["-n", &self.bridge_ns(), "link", "set", "dev", &port, "up"]);
        let t0 = Instant::now();
        loop {
            let o = self.ip(&["-n", &ns, "-o", "link", "show", "eth0"]);
            if String::from_utf8_lossy(&o.stdout).contains("LOWER_UP") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "Net::restore({host}): eth0 has no carrier"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Limits `host`'s link to `rate` (a tc rate: "100mbit", "1gbit",
    /// "50mbps") in both directions, with a token bucket on each veth end.
    pub fn limit(&self, host: &str, rate: &str) {
        let bits = parse_rate(rate).unwrap_or_else(|| panic!("Net::limit: bad rate {rate:?}"));
        // A burst of 10 ms at the rate, at least 128 KiB so that a 64 KiB
        // GSO packet fits whole.
        let burst = (bits / 8 / 100).max(128 << 10);
        let h = self.host(host);
        for (ns, dev) in [
            (self.bridge_ns(), self.port(host)),
            (h.ns.clone(), "eth0".to_string()),
        ] {
            let o = self.tc(&[
                "-n",
                &ns,
                "qdisc",
                "replace",
                "dev",
                &dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                &burst.to_string(),
                "latency",
                "100ms",
            ]);
            assert!(
                o.status.success(),
                "Net::limit({host}, {rate}): tc on {ns}/{dev}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    /// Removes the limit `limit` set (a no-op when there is none).
    pub fn unlimit(&self, host: &str) {
        let h = self.host(host);
        for (ns, dev) in [
            (self.bridge_ns(), self.port(host)),
            (h.ns.clone(), "eth0".to_string()),
        ] {
            let _ = self.tc(&["-n", &ns, "qdisc", "del", "dev", &dev, "root"]);
        }
    }

    // ---- setup ----

    fn bridge_ns(&self) -> String {
        format!("hbbt{}.br", self.slot)
    }

    fn master_if(&self) -> String {
        format!("hbbt{}m", self.slot)
    }

    /// The host's veth end on the bridge, in the bridge namespace.
    fn port(&self, host: &str) -> String {
        let i = self.hosts.iter().position(|h| h.name == host);
        format!("h{}", i.unwrap_or_else(|| panic!("Net: no host {host:?}")))
    }

    fn ip(&self, args: &[&str]) -> Output {
        Command::new(&self.tools.ip)
            .args(args)
            .output()
            .expect("run ip")
    }

    #[track_caller]
    fn ip_ok(&self, args: &[&str]) {
        let o = self.ip(args);
        assert!(
            o.status.success(),
            "Net: `ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }

    fn tc(&self, args: &[&str]) -> Output {
        let tc = find_tool("tc", "iproute2");
        Command::new(tc).args(args).output().expect("run tc")
    }

    fn make_links(&mut self) {
        let br = self.bridge_ns();
        let m = self.master_if();
        let prefix = format!("{SUBNET}.{}", self.slot);
        self.ip_ok(&["netns", "add", &br]);
        self.ip_ok(&["-n", &br, "link", "set", "dev", "lo", "up"]);
        // forward_delay 0 (STP is off anyway): ports forward as soon as
        // they are up, also after restore().
        self.ip_ok(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        self.ip_ok(&["-n", &br, "link", "set", "dev", "br0", "up"]);
        // The master's leg: hbbtNm in the root namespace, `mport` on the bridge.
        self.ip_ok(&[
            "link", "add", &m, "type", "veth", "peer", "name", "mport", "netns", &br,
        ]);
        self.ip_ok(&[
            "-n", &br, "link", "set", "dev", "mport", "master", "br0", "up",
        ]);
        self.ip_ok(&["addr", "add", &format!("{prefix}.1/24"), "dev", &m]);
        self.ip_ok(&["link", "set", "dev", &m, "up"]);
        for i in 0..self.hosts.len() {
            let ns = self.hosts[i].ns.clone();
            let addr = format!("{}/24", self.hosts[i].ip);
            let port = format!("h{i}");
            self.ip_ok(&["netns", "add", &ns]);
            self.ip_ok(&["-n", &ns, "link", "set", "dev", "lo", "up"]);
            self.ip_ok(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            self.ip_ok(&[
                "-n", &br, "link", "set", "dev", &port, "master", "br0", "up",
            ]);
            self.ip_ok(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            self.ip_ok(&["-n", &ns, "link", "set", "dev", "eth0", "up"]);
        }
    }

    fn make_keys_and_configs(&mut self, env: &[(&str, &str)]) {
        let d = self.dir.clone();
        for key in ["id_ed25519", "host_ed25519"] {
            let o = Command::new(&self.tools.ssh_keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "hbb-test", "-f"])
                .arg(d.join(key))
                .output()
                .expect("run ssh-keygen");
            assert!(
                o.status.success(),
                "ssh-keygen: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys")).unwrap();
        fs::write(
            d.join("ssh_config"),
            format!(
                "Host *\n\
                 \tUser root\n\
                 \tIdentityFile {id}\n\
                 \tIdentitiesOnly yes\n\
                 \tIdentityAgent none\n\
                 \tBatchMode yes\n\
                 \tStrictHostKeyChecking no\n\
                 \tUserKnownHostsFile /dev/null\n\
                 \tGlobalKnownHostsFile /dev/null\n\
                 \tCheckHostIP no\n\
                 \tLogLevel ERROR\n\
                 \tConnectTimeout 5\n\
                 \tConnectionAttempts 1\n\
                 \tServerAliveInterval 2\n\
                 \tServerAliveCountMax 3\n\
                 \tControlMaster no\n\
                 \tControlPath none\n\
                 \tForwardAgent no\n\
                 \tForwardX11 no\n\
                 \tAddressFamily inet\n",
                id = d.join("id_ed25519").display()
            ),
        )
        .unwrap();

        // The sessions' environment. sshd_config splits lines like a shell
        // (argv_split): one double-quoted word per NAME=VALUE, with \ and "
        // escaped, keeps spaces in values.
        let mut vars: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if !vars.iter().any(|(k, _)| k == "HBB_RSH") {
            vars.push(("HBB_RSH".into(), self.rsh.clone()));
        }
        self.session_env = vars.clone();
        if !vars.iter().any(|(k, _)| k == "PATH") {
            vars.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        let setenv: String = vars
            .iter()
            .map(|(k, v)| {
                format!(
                    " \"{}\"",
                    format!("{k}={v}")
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                )
            })
            .collect();
        for h in &self.hosts {
            let n = &h.name;
            fs::write(
                d.join(format!("sshd_{n}.conf")),
                format!(
                    "ListenAddress {ip}:22\n\
                     HostKey {d}/host_ed25519\n\
                     PidFile {d}/sshd_{n}.pid\n\
                     AuthorizedKeysFile {d}/authorized_keys\n\
                     PermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     UseDNS no\n\
                     X11Forwarding no\n\
                     AllowAgentForwarding no\n\
                     PrintMotd no\n\
                     PrintLastLog no\n\
                     MaxStartups 100:30:200\n\
                     MaxSessions 100\n\
                     ClientAliveInterval 2\n\
                     ClientAliveCountMax 3\n\
                     LogLevel VERBOSE\n\
                     Subsystem sftp internal-sftp\n\
                     SetEnv{setenv}\n",
                    ip = h.ip,
                    d = d.display(),
                ),
            )
            .unwrap();
        }
    }

    fn start_sshds(&mut self) {
        // Privilege separation chroots into /run/sshd; it must exist and be
        // root's, not group/world writable. Shared by every sshd: never removed.
        fs::create_dir_all("/run/sshd").unwrap();
        for i in 0..self.hosts.len() {
            let n = self.hosts[i].name.clone();
            let conf = self.dir.join(format!("sshd_{n}.conf"));
            let t = Command::new(&self.tools.sshd)
                .arg("-t")
                .arg("-f")
                .arg(&conf)
                .output()
                .expect("run sshd -t");
            assert!(
                t.status.success(),
                "Net: sshd rejects {}: {}",
                conf.display(),
                String::from_utf8_lossy(&t.stderr)
            );
            // -D: stays in the foreground, so the child is sshd itself;
            // -E: logs to the file. sshd must be run by its absolute path
            // (it re-executes itself for every connection).
            let child = self
                .command_on(&n, &self.tools.sshd)
                .arg("-D")
                .arg("-f")
                .arg(&conf)
                .arg("-E")
                .arg(self.dir.join(format!("sshd_{n}.log")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start sshd");
            self.sshds.push(child);
        }
    }

    /// Waits until every sshd takes a real login from the root namespace.
    fn wait_up(&mut self) {
        let t0 = Instant::now();
        for i in 0..self.hosts.len() {
            let (name, ip) = (self.hosts[i].name.clone(), self.hosts[i].ip.clone());
            let addr: SocketAddr = format!("{ip}:22").parse().unwrap();
            let mut last = String::new();
            loop {
                if let Ok(Some(st)) = self.sshds[i].try_wait() {
                    panic!(
                        "Net: sshd of {name} exited ({st}); its log:\n{}",
                        self.sshd_log(&name)
                    );
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                    let o = self
                        .ssh(&name)
                        .arg("true")
                        .stdin(Stdio::null())
                        .output()
                        .expect("run ssh");
                    if o.status.success() {
                        break;
                    }
                    last = String::from_utf8_lossy(&o.stderr).into_owned();
                }
                assert!(
                    t0.elapsed() < UP_TIMEOUT,
                    "Net: sshd of {name} ({ip}) did not take a login within {UP_TIMEOUT:?}; \
                     last ssh said: {last}\nsshd log:\n{}",
                    self.sshd_log(&name)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.sshds {
            let _ = c.kill();
            let _ = c.wait();
        }
        clean_slot(&self.tools, self.slot, Some(&self.dir));
        let _ = self.lock.set_len(0);
        // Closing `lock` (dropped after this) releases the slot.
    }
}

impl Tools {
    fn find() -> Tools {
        Tools {
            ip: find_tool("ip", "iproute2"),
            sshd: find_tool("sshd", "openssh-server"),
            ssh: find_tool("ssh", "openssh-client"),
            ssh_keygen: find_tool("ssh-keygen", "openssh-client"),
        }
    }
}

/// The absolute path of `name` (PATH, then the sbin dirs, which a
/// non-login root PATH may lack); panics naming the package when missing.
fn find_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "Net: `{name}` is missing: apt-get install {package} (scripts/test.sh installs it)"
            )
        })
}

/// sshd without PAM refuses accounts whose password starts with "!"
/// (locked), even for key logins.
fn check_root_unlocked() {
    if let Ok(s) = fs::read_to_string("/etc/shadow") {
        for l in s.lines() {
            if let Some(rest) = l.strip_prefix("root:") {
                assert!(
                    !rest.starts_with('!'),
                    "Net: root's account is locked (\"!\" in /etc/shadow), and sshd with UsePAM no \
                     refuses it even with a key; unlock it with `usermod -p '*' root`"
                );
            }
        }
    }
}

/// Takes the first free slot (flock), cleans what an earlier holder left,
/// and sweeps other unheld slots' leftovers.
fn take_slot(tools: &Tools) -> (u32, File) {
    fs::create_dir_all(SLOT_DIR).unwrap();
    let mut taken = None;
    for n in 1..=SLOTS {
        let Some(f) = try_lock_slot(n) else { continue };
        clean_slot(tools, n, None);
        // The subnet may be in use by something else on this machine.
        let routes = Command::new(&tools.ip)
            .args(["-4", "-o", "route", "show"])
            .output()
            .expect("run ip");
        let prefix = format!("{SUBNET}.{n}.");
        if String::from_utf8_lossy(&routes.stdout)
            .lines()
            .any(|l| l.contains(&prefix))
        {
            continue; // drops `f`: unlocks
        }
        taken = Some((n, f));
        break;
    }
    let (slot, lock) =
        taken.unwrap_or_else(|| panic!("Net: all {SLOTS} slots in {SLOT_DIR} are taken"));
    // Sweep: leftovers of slots nobody holds (runs that were SIGKILLed).
    let netns = list_netns();
    if let Ok(rd) = fs::read_dir(SLOT_DIR) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_prefix("slot-"))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if n == slot {
                continue;
            }
            let used = fs::metadata(e.path()).map(|m| m.len() > 0).unwrap_or(false)
                || netns.iter().any(|ns| ns_of_slot(ns, n));
            if used && let Some(f) = try_lock_slot(n) {
                clean_slot(tools, n, None);
                let _ = f.set_len(0);
            }
        }
    }
    (slot, lock)
}

fn try_lock_slot(n: u32) -> Option<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(Path::new(SLOT_DIR).join(format!("slot-{n}")))
        .unwrap();
    f.try_lock().ok().map(|()| f)
}

/// Writes "pid dir" into the (locked) slot file, for the next holder's
/// cleanup and for people looking.
fn record_slot(mut lock: &File, dir: &Path) {
    lock.set_len(0).unwrap();
    lock.rewind().unwrap();
    writeln!(lock, "{} {}", std::process::id(), dir.display()).unwrap();
}

fn ns_of_slot(ns: &str, n: u32) -> bool {
    ns == format!("hbbt{n}.br") || ns.starts_with(&format!("hbbt{n}-"))
}

fn list_netns() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes everything slot `n` may have: the processes in its namespaces
/// (sshds, sessions), the namespaces (which takes their interfaces and the
/// bridge along), the master's interface and the temp dir. The caller
/// holds the slot's lock. Never panics (runs in Drop).
fn clean_slot(tools: &Tools, n: u32, dir: Option<&Path>) {
    let mut dirs: Vec<PathBuf> = dir.map(Path::to_path_buf).into_iter().collect();
    if let Ok(mut f) = File::open(Path::new(SLOT_DIR).join(format!("slot-{n}"))) {
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        if let Some(d) = s.split_whitespace().nth(1) {
            dirs.push(PathBuf::from(d));
        }
    }
    for ns in list_netns().into_iter().filter(|ns| ns_of_slot(ns, n)) {
        // A namespace lives on while processes are in it: kill them first.
        for _ in 0..3 {
            let o = Command::new(&tools.ip)
                .args(["netns", "pids", &ns])
                .output();
            let pids: Vec<i32> = o
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) on a pid that `ip netns pids` listed.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = Command::new(&tools.ip)
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
    }
    // Its peer was in the bridge namespace, whose destruction is
    // asynchronous: delete it now so the name is free for the next holder.
    let m = format!("hbbt{n}m");
    if Path::new("/sys/class/net").join(&m).exists() {
        let _ = Command::new(&tools.ip)
            .args(["link", "del", "dev", &m])
            .stderr(Stdio::null())
            .status();
    }
    for d in dirs {
        // Only what Net::new makes: <tmp>/hbb-net-N-PID.
        let ok = d
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with(&format!("hbb-net-{n}-")));
        if ok {
            let _ = fs::remove_dir_all(&d);
        }
    }
}

/// A tc rate ("100mbit", "1gbit", "50mbps", "1000000") in bits per second.
fn parse_rate(rate: &str) -> Option<u64> {
    let r = rate.trim().to_ascii_lowercase();
    let split = r
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(r.len());
    let (num, unit) = r.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "kibit" => 1024.0,
        "mibit" => 1024.0 * 1024.0,
        "gibit" => 1024.0 * 1024.0 * 1024.0,
        "" | "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return None,
    };
    let bits = num * mult;
    (bits >= 1.0).then_some(bits as u64)
}
