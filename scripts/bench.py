#!/usr/bin/python3
"""The harness behind scripts/bench.sh (issue 4): measures hbb against
tar|zstd, zstd, squashfs (+squashfuse), borg and restic, and renders
docs/BENCHMARKS.md and the docs/bench-*.png plots (gnuplot).

Standard library only. Subcommands:
  gen-small DIR N     generate the small-file tree of the scale figure
  run ...             measure the figures asked for, save their results as
                      JSON (CACHE/results-MODE/FIGURE.json), render the report
  report ...          render the report again from the saved results

How each number is taken:
  * wall time: time.monotonic around the command; user+sys and peak RSS:
    /usr/bin/time (the same counters as `time -v`); for a pipeline
    (`tar | zstd`) user+sys add up over its processes and the peak RSS is
    that of its largest process.
  * a timed command is repeated --reps times; the run with the median wall
    time is reported (its user, sys and RSS with it).
  * snapshots read a source already in the page cache (read once first);
    every snapshot's time includes getting the archive to disk (hbb, borg
    and restic fsync their output; the others are followed by `sync FILE`
    inside the timed command).
  * restores and everything read through a mount start with the page cache
    dropped (sync; echo 3 > /proc/sys/vm/drop_caches).
  * random reads: 4 KiB preads (posix_fadvise RANDOM, so no read-ahead) in
    one large file through each mount. Cold: the page cache dropped once,
    then each read falls in a part of the file no earlier read touched (a
    slot of max(block size, 8 MiB)), so it finds no decompressed block in
    any cache. Cached: after one read in a 128 KiB window, the other 31
    pages of that window, each read once (the block is decompressed in the
    mount's cache, the page is not in the kernel's).
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
KiB = 1 << 10
PAGE = 4096
FIGURES = ["snapshot", "restore", "mount", "sweep", "scale", "incremental", "remote"]


# --------------------------------------------------------------- helpers

def now():
    return datetime.datetime.now().strftime("%H:%M:%S")


def say(msg):
    print(f"   {msg}", flush=True)


def parse_size(s):
    m = re.fullmatch(r"(\d+)([KMG]?)", s.strip(), re.I)
    if not m:
        raise ValueError(f"bad size {s!r}")
    return int(m.group(1)) * {"": 1, "K": KiB, "M": MiB, "G": 1 << 30}[m.group(2).upper()]


def size_name(n):
    for unit, mult in (("G", 1 << 30), ("M", MiB), ("K", KiB)):
        if n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def tree_bytes(path):
    """Apparent bytes of the regular files under path, and the entry count."""
    total = 0
    entries = 0
    for dirpath, dirnames, filenames in os.walk(path):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if (st.st_mode & 0o170000) == 0o100000:
                total += st.st_size
    return total, entries


def count_files(path):
    """Regular files and their bytes under path (restore checks)."""
    files = 0
    total = 0
    for dirpath, _dirs, filenames in os.walk(path):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_mode & 0o170000) == 0o100000:
                files += 1
                total += st.st_size
    return files, total


def walk_stat(root):
    """Visit every entry under root and lstat it (what `ls -lR` or `find -ls`
    does); the number of entries."""
    count = 0
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                count += 1
                st = e.stat(follow_symlinks=False)
                if (st.st_mode & 0o170000) == 0o040000:
                    stack.append(e.path)
    return count


def path_bytes(path):
    if os.path.isdir(path):
        return sum(os.lstat(os.path.join(d, f)).st_size
                   for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def rm(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def out_of(cmd, **kw):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def first_line(s):
    return s.splitlines()[0].strip() if s else "?"


def proc_status(pid):
    """VmRSS and VmHWM of a process, in bytes."""
    res = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    res[k] = int(v.split()[0]) * KiB
    except OSError:
        pass
    return res.get("VmRSS"), res.get("VmHWM")


# --------------------------------------------------------------- small files

def gen_small(root, n):
    """n small files of text, 1000 to a directory, deterministic: sizes
    log-normal around 700 bytes (median), up to 64 KiB."""
    rnd = random.Random(1_000_003 + n)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    words = ["".join(rnd.choice(letters) for _ in range(rnd.randint(2, 10))) for _ in range(3000)]
    parts = []
    size = 0
    while size < 4 * MiB:
        line = " ".join(rnd.choice(words) for _ in range(rnd.randint(4, 14))) + "\n"
        parts.append(line)
        size += len(line)
    pool = "".join(parts).encode()
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        d = os.path.join(root, f"d{i // 1000:04d}")
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        sz = min(64 * KiB, int(rnd.lognormvariate(6.55, 1.0)))
        off = rnd.randrange(len(pool) - sz)
        data = b"file %d\n" % i + pool[off:off + sz]
        fd = os.open(os.path.join(d, f"f{i % 1000:03d}.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        if (i + 1) % 100_000 == 0:
            say(f"{i + 1} files")


def change_one_percent(files, rnd, k):
    """Appends a line to 1 % of files (picked by rnd), as between two
    snapshots of the incremental figures; the number changed."""
    pick = rnd.sample(files, max(1, len(files) // 100))
    for f in pick:
        with open(f, "ab") as fh:
            fh.write(f"\n/* hbb bench change {k} */\n".encode())
    return len(pick)


# --------------------------------------------------------------- mounts

def is_mounted(path):
    """From /proc/mounts, so that a dead FUSE mount (ENOTCONN) counts too."""
    path = os.path.abspath(path)
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and fields[1].encode().decode("unicode_escape") == path:
                return True
    return False


class MountError(Exception):
    pass


class Mount:
    """A FUSE mount run in the foreground under our control (so its pid is
    known), timed from start until its tree root answers a listing, and
    always unmounted on exit."""

    def __init__(self, bench, tool, cmd, mnt, root_rel="", env=None, cwd=None, daemon_hbb=False):
        self.b = bench
        self.tool = tool
        self.cmd = cmd
        self.mnt = mnt
        self.root = os.path.join(mnt, root_rel) if root_rel else mnt
        self.env = env
        self.cwd = cwd
        self.daemon_hbb = daemon_hbb
        self.proc = None
        self.pid = None
        self.mount_seconds = None

    def __enter__(self):
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)
        os.makedirs(self.mnt, exist_ok=True)
        log = open(self.b.logfile, "a")
        log.write(f"\n$ {shlex.join(self.cmd)}\n")
        log.flush()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     env=self.env, cwd=self.cwd)
        log.close()
        self.pid = self.proc.pid
        self.b.note_pid(self.pid)
        try:
            deadline = t0 + 600
            while True:
                if time.monotonic() > deadline:
                    raise MountError(f"{self.tool}: mount did not answer in 600 s")
                rc = self.proc.poll()
                if rc is not None and not (self.daemon_hbb and rc == 0):
                    raise MountError(f"{self.tool}: mount exited with {rc} (see {self.b.logfile})")
                if os.path.ismount(self.mnt):
                    try:
                        if os.listdir(self.root):
                            break
                    except OSError:
                        pass
                time.sleep(0.002)
            self.mount_seconds = time.monotonic() - t0
            if self.daemon_hbb and self.proc.poll() is not None:
                self.pid = find_mount_pid(self.mnt) or self.pid
                self.b.note_pid(self.pid)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def rss(self):
        return proc_status(self.pid)

    def __exit__(self, *exc):
        for attempt in range(50):
            if not is_mounted(self.mnt):
                break
            r = subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.pid and self.pid != self.proc.pid:
            for _ in range(150):
                if not os.path.exists(f"/proc/{self.pid}"):
                    break
                time.sleep(0.2)
        self.b.forget_pid(self.pid)
        if self.proc is not None:
            self.b.forget_pid(self.proc.pid)
        return False


def find_mount_pid(mnt):
    """The pid of a daemonized `hbb mount ... MNT`."""
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mount" in argv and os.fsencode(mnt) in argv:
            return int(p)
    return None


# --------------------------------------------------------------- random reads

def cold_reads(paths, file_size, slot, n_cold, rnd):
    """Cold 4 KiB read latencies (seconds) in files of the same content
    (one per mount): the page cache is dropped, then each read lands in a
    region of `slot` bytes no earlier read touched, at the same offset in
    every file, the files taking turns read by read (the first one first,
    then the second first…), so that each moment of the machine falls on
    all of them alike. Returns a list of latencies per path and the offsets
    read."""
    fds = []
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            fds.append(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        nslots = max(1, file_size // slot)
        slots = rnd.sample(range(nslots), min(n_cold, nslots))
        drop_caches()
        cold = [[] for _ in paths]
        touched = set()
        for i, s in enumerate(slots):
            lo = s * slot
            hi = min(file_size, lo + slot) - PAGE
            off = lo + rnd.randrange(0, max(1, (hi - lo) // PAGE)) * PAGE
            touched.add(off)
            for k in range(len(fds)):
                j = (i + k) % len(fds)
                t = time.perf_counter()
                data = os.pread(fds[j], PAGE, off)
                cold[j].append(time.perf_counter() - t)
                if len(data) != min(PAGE, file_size - off):
                    raise RuntimeError(f"short read at {off} of {paths[j]}")
        return cold, touched
    finally:
        for fd in fds:
            os.close(fd)


def cached_reads(path, file_size, n_windows, rnd, touched):
    """4 KiB read latencies (seconds) in blocks the mount has decoded: a
    read in a 128 KiB window, then each other page of it once (not in the
    kernel's page cache: `touched` holds the pages read before)."""
    touched = set(touched)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        cached = []
        win = 128 * KiB
        for _ in range(n_windows):
            start = rnd.randrange(0, file_size // win - 1) * win
            os.pread(fd, PAGE, start)
            pages = [start + i * PAGE for i in range(1, win // PAGE) if start + i * PAGE not in touched]
            rnd.shuffle(pages)
            for off in pages:
                t = time.perf_counter()
                os.pread(fd, PAGE, off)
                cached.append(time.perf_counter() - t)
                touched.add(off)
        return cached
    finally:
        os.close(fd)


def random_reads(path, file_size, slot, n_cold, n_windows, seed=4):
    """Cold and cached 4 KiB read latencies (seconds) in one file."""
    rnd = random.Random(seed)
    cold, touched = cold_reads([path], file_size, slot, n_cold, rnd)
    return cold[0], cached_reads(path, file_size, n_windows, rnd, touched)


def lat_summary(cold, cached):
    ms = 1000.0
    return {
        "cold_n": len(cold), "cold_p50_ms": percentile(cold, 50) * ms, "cold_p99_ms": percentile(cold, 99) * ms,
        "cold_max_ms": max(cold) * ms,
        "cached_n": len(cached), "cached_p50_ms": percentile(cached, 50) * ms,
        "cached_p99_ms": percentile(cached, 99) * ms,
    }


# --------------------------------------------------------------- another host

class NetError(RuntimeError):
    pass


def find_tool(name, package):
    """The absolute path of a tool (PATH, then the sbin dirs a non-login
    root PATH may lack)."""
    for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]:
        p = os.path.join(d, name)
        if d.startswith("/") and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise NetError(f"`{name}` is missing: apt-get install {package} (scripts/bench.sh installs it)")


def shq_sshd(word):
    """One double-quoted word of sshd_config (it splits lines like a shell)."""
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_rate(rate):
    """A tc rate (100mbit, 1gbit) in bits per second."""
    m = re.fullmatch(r"([\d.]+)(bit|kbit|mbit|gbit)?", rate.strip().lower())
    if not m:
        raise ValueError(f"bad rate {rate!r}")
    return int(float(m.group(1)) * {None: 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[m.group(2)])


class AgentHost:
    """Another host on this machine, for the remote figure (the recipe of
    tests/common/net.rs, in Python): a network namespace `hbbbench-agent`
    with its own sshd on 10.214.0.2:22, its veth pair ending on a bridge
    that lives in a namespace of its own (`hbbbench-br`, so that the root
    namespace's firewall, which br_netfilter may hand bridged frames to,
    never sees them); the root namespace (the source host, 10.214.0.1)
    reaches the bridge through the veth `hbbbench0`. `limit(RATE)` puts a
    token bucket (tc tbf) on both ends of the agent's veth pair, so both
    directions are limited. Only the network is apart: both hosts share the
    machine's cores, memory and disk. A context manager: leaving it (also on
    an error or a signal) kills the sshd and every process in the
    namespaces and deletes them; entering it first removes what a killed
    run left."""

    NS = "hbbbench-agent"
    BR = "hbbbench-br"
    IF = "hbbbench0"
    SUBNET = "10.214.0."
    IP = "10.214.0.2"
    MASTER_IP = "10.214.0.1"
    PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    def __init__(self, d, session_env):
        self.dir = d
        self.session_env = dict(session_env)
        self.session_env.setdefault("PATH", self.PATH)
        self.ipt = find_tool("ip", "iproute2")
        self.tc = find_tool("tc", "iproute2")
        self.sshd_bin = find_tool("sshd", "openssh-server")
        self.ssh_bin = find_tool("ssh", "openssh-client")
        self.keygen = find_tool("ssh-keygen", "openssh-client")
        self.config = os.path.join(d, "ssh_config")
        # The ssh command line, for HBB_RSH, BORG_RSH and restic's sftp.command.
        self.rsh = f"{self.ssh_bin} -F {self.config}"
        self.sshd = None
        self.rate = None

    # ---- plumbing
    def ip(self, *args, check=True):
        r = subprocess.run([self.ipt] + list(args), capture_output=True, text=True)
        if check and r.returncode != 0:
            raise NetError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")
        return r

    def netns_pids(self, ns):
        r = self.ip("netns", "pids", ns, check=False)
        return [int(p) for p in r.stdout.split() if p.isdigit()]

    def clean(self):
        """Removes our namespaces (killing the processes in them first: a
        namespace lives on while processes are in it) and our interface."""
        have = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
        for ns in (self.NS, self.BR):
            if ns not in have:
                continue
            for _ in range(50):
                pids = self.netns_pids(ns)
                if not pids:
                    break
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.02)
            self.ip("netns", "del", ns, check=False)
        if os.path.exists(f"/sys/class/net/{self.IF}"):
            self.ip("link", "del", "dev", self.IF, check=False)

    # ---- setup
    def __enter__(self):
        for line in open("/etc/shadow"):
            if line.startswith("root:") and line.split(":")[1].startswith("!"):
                raise NetError("root's account is locked (\"!\" in /etc/shadow), and sshd with UsePAM no refuses "
                               "it even with a key: unlock it with `usermod -p '*' root` (scripts/bench.sh does, "
                               "unless --no-install)")
        self.clean()
        routes = self.ip("-4", "-o", "route", "show").stdout
        if self.SUBNET in routes:
            raise NetError(f"the subnet {self.SUBNET}0/24 is already routed here:\n{routes}")
        try:
            self.make_links()
            self.make_configs()
            self.start_sshd()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def make_links(self):
        br, ns = self.BR, self.NS
        self.ip("netns", "add", br)
        self.ip("-n", br, "link", "set", "dev", "lo", "up")
        self.ip("-n", br, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        self.ip("-n", br, "link", "set", "dev", "br0", "up")
        self.ip("link", "add", self.IF, "type", "veth", "peer", "name", "mport", "netns", br)
        self.ip("-n", br, "link", "set", "dev", "mport", "master", "br0", "up")
        self.ip("addr", "add", f"{self.MASTER_IP}/24", "dev", self.IF)
        self.ip("link", "set", "dev", self.IF, "up")
        self.ip("netns", "add", ns)
        self.ip("-n", ns, "link", "set", "dev", "lo", "up")
        self.ip("-n", br, "link", "add", "h0", "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.ip("-n", br, "link", "set", "dev", "h0", "master", "br0", "up")
        self.ip("-n", ns, "addr", "add", f"{self.IP}/24", "dev", "eth0")
        self.ip("-n", ns, "link", "set", "dev", "eth0", "up")

    def make_configs(self):
        d = self.dir
        rm(d)
        os.makedirs(d)
        for key in ("id_ed25519", "host_ed25519"):
            subprocess.run([self.keygen, "-q", "-t", "ed25519", "-N", "", "-C", "hbb-bench", "-f",
                            os.path.join(d, key)], check=True, capture_output=True)
        shutil.copy(os.path.join(d, "id_ed25519.pub"), os.path.join(d, "authorized_keys"))
        with open(self.config, "w") as f:
            f.write("Host *\n" + "".join(f"\t{line}\n" for line in (
                "User root", f"IdentityFile {d}/id_ed25519", "IdentitiesOnly yes", "IdentityAgent none",
                "BatchMode yes", "StrictHostKeyChecking no", "UserKnownHostsFile /dev/null",
                "GlobalKnownHostsFile /dev/null", "CheckHostIP no", "LogLevel ERROR", "ConnectTimeout 10",
                "ConnectionAttempts 1", "ServerAliveInterval 10", "ServerAliveCountMax 6",
                "ControlMaster no", "ControlPath none", "ForwardAgent no", "ForwardX11 no",
                "AddressFamily inet")))
        setenv = " ".join(shq_sshd(f"{k}={v}") for k, v in self.session_env.items())
        with open(os.path.join(d, "sshd.conf"), "w") as f:
            f.write("".join(f"{line}\n" for line in (
                f"ListenAddress {self.IP}:22", f"HostKey {d}/host_ed25519", f"PidFile {d}/sshd.pid",
                f"AuthorizedKeysFile {d}/authorized_keys", "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "UsePAM no", "StrictModes no", "UseDNS no", "X11Forwarding no", "AllowAgentForwarding no",
                "PrintMotd no", "PrintLastLog no", "MaxStartups 100:30:200", "MaxSessions 100",
                "ClientAliveInterval 10", "ClientAliveCountMax 6", "LogLevel VERBOSE",
                "Subsystem sftp internal-sftp", f"SetEnv {setenv}")))

    def start_sshd(self):
        # Privilege separation chroots into /run/sshd: it must exist (root's, 0755).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        conf = os.path.join(self.dir, "sshd.conf")
        t = subprocess.run([self.sshd_bin, "-t", "-f", conf], capture_output=True, text=True)
        if t.returncode != 0:
            raise NetError(f"sshd rejects {conf}: {t.stderr.strip()}")
        # -D: sshd itself is the child (ip netns exec execs it); -E: its log.
        self.sshd = subprocess.Popen([self.ipt, "netns", "exec", self.NS, self.sshd_bin, "-D", "-f", conf,
                                      "-E", os.path.join(self.dir, "sshd.log")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        last = ""
        while True:
            if self.sshd.poll() is not None:
                raise NetError(f"the agent's sshd exited ({self.sshd.returncode}); its log: "
                               f"{open(os.path.join(self.dir, 'sshd.log')).read().strip()}")
            r = subprocess.run(self.ssh(["true"]), capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if r.returncode == 0:
                break
            last = r.stderr.strip()
            if time.monotonic() - t0 > 20:
                raise NetError(f"the agent's sshd ({self.IP}) took no login within 20 s; ssh said: {last}")
            time.sleep(0.05)

    def ssh(self, remote_cmd):
        return [self.ssh_bin, "-F", self.config, f"root@{self.IP}"] + remote_cmd

    # ---- the link
    def limit(self, rate):
        """tbf at `rate` (a tc rate: 100mbit, 1gbit) on both ends of the
        agent's veth pair, or none (rate None): burst 10 ms at the rate, at
        least 128 KiB so that a 64 KiB GSO packet fits whole."""
        self.rate = rate
        for ns, dev in ((self.BR, "h0"), (self.NS, "eth0")):
            if rate is None:
                subprocess.run([self.tc, "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True)
                continue
            burst = max(parse_rate(rate) // 8 // 100, 128 * KiB)
            r = subprocess.run([self.tc, "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                                "burst", str(burst), "latency", "100ms"], capture_output=True, text=True)
            if r.returncode != 0:
                raise NetError(f"tc tbf {rate} on {ns}/{dev}: {r.stderr.strip()}")

    def counters(self):
        """Bytes the source's veth sent (to the agent) and received."""
        def rd(k):
            with open(f"/sys/class/net/{self.IF}/statistics/{k}") as f:
                return int(f.read())
        return rd("tx_bytes"), rd("rx_bytes")

    def settle(self, timeout=60):
        """Waits until the sessions of the last command have ended on the
        agent (only the sshd listener left in its namespace)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if set(self.netns_pids(self.NS)) <= {self.sshd.pid}:
                return True
            time.sleep(0.05)
        return False

    def cpu(self):
        """CPU seconds spent on the agent: the sshd listener's own and its
        reaped descendants' (every session, and what ran in it: hbb serve,
        borg serve, the sftp server), from /proc/PID/stat (utime, stime,
        cutime, cstime). Read after `settle`, when those have been reaped."""
        with open(f"/proc/{self.sshd.pid}/stat") as f:
            s = f.read()
        fields = s[s.rfind(")") + 2:].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc):
        if self.sshd is not None:
            self.sshd.kill()
            self.sshd.wait()
        self.clean()
        return False


# --------------------------------------------------------------- the bench

class Bench:
    def __init__(self, a):
        self.a = a
        self.hbb = a.hbb
        self.mode = a.mode
        self.reps = a.reps
        self.cache = a.cache
        self.work = a.work
        self.out = a.out
        self.root = a.root
        self.K, self.V, self.L = a.K, a.V, a.L
        self.scale = [int(x) for x in a.scale.split()]
        self.sweep = [parse_size(x) for x in a.sweep.split()]
        self.only = a.only.split()
        self.results = os.path.join(self.cache, f"results-{self.mode}")
        self.arch = os.path.join(self.cache, f"archives-{self.mode}")
        self.mnt = os.path.join(self.work, "mnt")
        self.tmp = os.path.join(self.work, "tmp")
        self.logfile = os.path.join(self.work, "bench.log")
        self.threads = os.cpu_count() or 1
        for d in (self.results, self.arch, self.mnt, self.tmp):
            os.makedirs(d, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update({
            "BORG_BASE_DIR": os.path.join(self.work, "borg-base"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            "BORG_PASSPHRASE": "",
            "RESTIC_PASSWORD": "hbb-bench",
            "RESTIC_CACHE_DIR": os.path.join(self.work, "restic-cache"),
            "LC_ALL": "C",
        })
        self.pids_file = os.path.join(self.work, "pids")
        self.hbb_mount = self.detect_hbb_mount()
        self.hbb_stamp = self.stamp_of(self.hbb)

    # ---- bookkeeping
    def note_pid(self, pid):
        with open(self.pids_file, "a") as f:
            f.write(f"{pid}\n")

    def forget_pid(self, pid):
        try:
            with open(self.pids_file) as f:
                pids = [p for p in f.read().split() if p != str(pid)]
            with open(self.pids_file, "w") as f:
                f.write("".join(p + "\n" for p in pids))
        except FileNotFoundError:
            pass

    @staticmethod
    def stamp_of(path):
        st = os.stat(path)
        return f"{st.st_size}-{st.st_mtime_ns}"

    def detect_hbb_mount(self):
        r = subprocess.run([self.hbb, "mount", "--help"], capture_output=True, text=True)
        if r.returncode != 0:
            return None
        h = r.stdout
        return {
            "foreground": "--foreground" if "--foreground" in h else ("-f" if re.search(r"(^|\s)-f\b", h) else None),
            "umount": subprocess.run([self.hbb, "umount", "--help"], capture_output=True).returncode == 0,
        }

    def save(self, fig, data):
        data = {"figure": fig, "when": datetime.datetime.now().isoformat(timespec="seconds"),
                "reps": self.reps, "hbb": self.hbb_version(), "data": data}
        tmp = os.path.join(self.results, f".{fig}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, os.path.join(self.results, f"{fig}.json"))

    def hbb_version(self):
        v = first_line(out_of([self.hbb, "--version"]))
        env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
        rev = out_of(["git", "-C", self.root, "rev-parse", "--short", "HEAD"], env=env)
        dirty = out_of(["git", "-C", self.root, "status", "--porcelain", "--untracked-files=no"], env=env)
        return f"{v} (git {rev}{' + uncommitted changes' if dirty else ''})"

    # ---- running
    def log(self, text):
        with open(self.logfile, "a") as f:
            f.write(text)

    def run(self, cmd, cwd=None, check=True, env=None):
        """An untimed command."""
        self.log(f"\n$ {shlex.join(cmd)}\n")
        with open(self.logfile, "a") as log:
            r = subprocess.run(cmd, cwd=cwd, env=env or self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed with {r.returncode} (see {self.logfile})")
        return r.returncode

    def measure(self, cmd, cwd=None, ok=(0,), env=None, timeout=None):
        """One timed run: wall (monotonic), user, sys, peak RSS (/usr/bin/time).
        With a timeout, a command still running then is killed (its whole
        process group) and the run fails."""
        tf = os.path.join(self.tmp, "time.out")
        full = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", tf, "--"] + cmd
        self.log(f"\n$ {shlex.join(cmd)}\n")
        with open(self.logfile, "a") as log:
            t0 = time.monotonic()
            if timeout is None:
                r = subprocess.run(full, cwd=cwd, env=env or self.env, stdout=log, stderr=log,
                                   stdin=subprocess.DEVNULL)
            else:
                r = subprocess.Popen(full, cwd=cwd, env=env or self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
                try:
                    r.wait(timeout=timeout)
                except BaseException:
                    os.killpg(r.pid, signal.SIGKILL)
                    r.wait()
                    raise
            wall = time.monotonic() - t0
        if r.returncode not in ok:
            raise RuntimeError(f"{shlex.join(cmd)} failed with {r.returncode} (see {self.logfile})")
        with open(tf) as f:
            last = f.read().strip().splitlines()[-1].split()
        _e, user, sys_, rss = last
        return {"wall": wall, "user": float(user), "sys": float(sys_), "rss": int(rss) * KiB}

    def timed(self, cmd, setup=None, reps=None, cwd=None, cold=False, ok=(0,)):
        """Median-of-reps run of cmd (setup untimed before each)."""
        runs = []
        for _ in range(reps or self.reps):
            if setup:
                setup()
            if cold:
                drop_caches()
            else:
                os.sync()
            runs.append(self.measure(cmd, cwd=cwd, ok=ok))
        runs.sort(key=lambda r: r["wall"])
        med = dict(runs[(len(runs) - 1) // 2])
        med["walls"] = [r["wall"] for r in runs]
        return med

    def zstd_cpu(self, src):
        """CPU-seconds that zstd -3 itself (one thread, Debian's zstd) spends
        compressing src as a tar: the floor under any level-3 snapshot, so
        on N cores no snapshot of src beats zstd_cpu / N seconds. Median of reps."""
        tf = os.path.join(self.tmp, "zstd-cpu")
        sh = ('set -o pipefail; tar -cf - -C "$1" "$2" | /usr/bin/time -f "%U %S" -o "$3" '
              'zstd -T1 -3 -q -c >/dev/null')
        runs = []
        for _ in range(self.reps):
            self.run(["bash", "-c", sh, "-", os.path.dirname(src), os.path.basename(src), tf])
            with open(tf) as f:
                u, s_ = f.read().split()[-2:]
            runs.append(float(u) + float(s_))
        return sorted(runs)[(len(runs) - 1) // 2]

    def perf_stat(self, cmd):
        """One more run under `perf stat` (software counters: this VM has no
        hardware ones): CPUs utilized, context switches, page faults."""
        if not shutil.which("perf"):
            return None
        out = os.path.join(self.tmp, "perf.csv")
        os.sync()
        r = subprocess.run(["perf", "stat", "-x", ",", "-o", out, "-e",
                            "task-clock,context-switches,cpu-migrations,page-faults", "--"] + cmd,
                           capture_output=True, env=self.env)
        if r.returncode != 0:
            return None
        res = {}
        with open(out) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) >= 3 and parts[2]:
                    try:
                        res[parts[2]] = float(parts[0])
                    except ValueError:
                        continue
                    if parts[2] == "task-clock" and len(parts) >= 7:
                        try:
                            res["cpus_utilized"] = float(parts[5])
                        except ValueError:
                            pass
        return res

    def baseline_rss(self):
        """Peak RSS of hbb snapshotting a one-file tree: the process's fixed
        cost (binary, libraries, runtime), subtracted before the memory bound
        is checked, since the bound counts blocks and index only."""
        if getattr(self, "_baseline", None) is None:
            d = os.path.join(self.tmp, "tiny")
            rm(d)
            os.makedirs(d)
            with open(os.path.join(d, "f"), "w") as f:
                f.write("x\n")
            arc = os.path.join(self.tmp, "tiny.hbb")
            runs = [self.measure([self.hbb, "snapshot", d, arc, "--quiet"])["rss"] for _ in range(3)]
            rm(arc)
            rm(d)
            self._baseline = sorted(runs)[1]
        return self._baseline

    def warm(self, path):
        """Read a source once so snapshots start from the page cache."""
        if os.path.isdir(path):
            subprocess.run(["bash", "-c", 'tar -cf - -C "$1" . | cat >/dev/null', "-", path], check=True)
        else:
            subprocess.run(["bash", "-c", 'cat "$1" >/dev/null', "-", path], check=True)

    def corpus_stats(self, path):
        f = os.path.join(self.cache, "corpus", "stats.json")
        try:
            with open(f) as fh:
                stats = json.load(fh)
        except (OSError, ValueError):
            stats = {}
        key = f"{path}@{os.stat(path).st_mtime_ns}"
        if key not in stats:
            if os.path.isdir(path):
                b, e = tree_bytes(path)
            else:
                st = os.stat(path)
                b, e = st.st_size, 1
                stats[key + ":alloc"] = st.st_blocks * 512
            stats[key] = {"bytes": b, "entries": e}
            with open(f, "w") as fh:
                json.dump(stats, fh, indent=1)
        return stats[key]

    # ---- tools: snapshot commands (archive path -> command, setup)
    def snap_cmd(self, tool, src, dst, bs=None):
        """(setup, cmd, cwd) of a snapshot of src into dst by tool."""
        p = self.threads
        if tool in ("hbb", "hbb -t1"):
            cmd = [self.hbb, "snapshot", src, dst, "--level", "3", "--quiet"]
            if tool == "hbb -t1":
                cmd += ["--threads", "1"]
            if bs:
                cmd += ["--block-size", str(bs)]
            if not os.path.isdir(src):
                cmd += ["--mode", "volume"]
            return (lambda: rm(dst)), cmd, None
        if tool == "tar+zstd":
            sh = ('set -o pipefail; tar -cf - -C "$1" "$2" | zstd -T0 -3 -q -c >"$3" && sync "$3"')
            return (lambda: rm(dst)), ["bash", "-c", sh, "-", os.path.dirname(src), os.path.basename(src), dst], None
        if tool == "zstd":
            sh = 'zstd -T0 -3 -q -f "$1" -o "$2" && sync "$2"'
            return (lambda: rm(dst)), ["bash", "-c", sh, "-", src, dst], None
        if tool.startswith("squashfs"):
            b = ["-b", size_name(bs)] if bs else []
            sh = ('mksquashfs "$1" "$2" -comp zstd -Xcompression-level 3 -processors "$3" -noappend '
                  '-quiet -no-progress "${@:4}" >/dev/null && sync "$2"')
            return (lambda: rm(dst)), ["bash", "-c", sh, "-", src, dst, str(p)] + b, None
        if tool == "borg":
            def setup():
                rm(dst)
                rm(self.env["BORG_BASE_DIR"])
                self.run(["borg", "init", "-e", "none", dst])
            return setup, ["borg", "create", "--compression", "zstd,3", dst + "::a", "."], src
        if tool == "restic":
            def setup():
                rm(dst)
                rm(self.env["RESTIC_CACHE_DIR"])
                self.run(["restic", "-r", dst, "init", "--repository-version", "2"])
            return setup, ["restic", "-r", dst, "--compression", "auto", "backup", "-q", src], None
        raise ValueError(tool)

    def snapshot(self, tool, src, dst, bs=None, reps=None, cold=False):
        setup, cmd, cwd = self.snap_cmd(tool, src, dst, bs)
        r = self.timed(cmd, setup=setup, cwd=cwd, reps=reps, cold=cold)
        r["bytes"] = path_bytes(dst)
        return r

    def ensure(self, tool, src, dst, bs=None):
        """An archive for restore/mount figures: kept between runs unless its
        source changed or (for hbb) the binary changed."""
        stamp_file = dst + ".stamp"
        want = f"{src}@{os.stat(src).st_mtime_ns}|{bs}|" + (self.hbb_stamp if tool == "hbb" else "")
        try:
            with open(stamp_file) as f:
                if f.read() == want and os.path.exists(dst):
                    return
        except OSError:
            pass
        say(f"making {os.path.basename(dst)} ({tool})")
        setup, cmd, cwd = self.snap_cmd(tool, src, dst, bs)
        setup()
        self.run(cmd, cwd=cwd)
        with open(stamp_file, "w") as f:
            f.write(want)

    def stamp(self, tool, src, dst, bs=None):
        want = f"{src}@{os.stat(src).st_mtime_ns}|{bs}|" + (self.hbb_stamp if tool == "hbb" else "")
        with open(dst + ".stamp", "w") as f:
            f.write(want)

    def restore_cmd(self, tool, arc, dest):
        """(setup, cmd, cwd) of a full restore."""
        def fresh_dir():
            rm(dest)
            os.makedirs(dest)
        if tool == "hbb":
            return (lambda: rm(dest)), [self.hbb, "restore", arc, dest, "--quiet"], None
        if tool == "tar+zstd":
            sh = 'set -o pipefail; zstd -d -q -c "$1" | tar -xf - -C "$2"'
            return fresh_dir, ["bash", "-c", sh, "-", arc, dest], None
        if tool == "zstd":
            sh = 'zstd -d -q -f "$1" -o "$2" && sync "$2"'
            return (lambda: rm(dest)), ["bash", "-c", sh, "-", arc, dest], None
        if tool.startswith("squashfs"):
            return (lambda: rm(dest)), ["unsquashfs", "-p", str(self.threads), "-q", "-n", "-d", dest, arc], None
        if tool == "borg":
            return fresh_dir, ["borg", "extract", arc + "::a"], dest
        if tool == "restic":
            return fresh_dir, ["restic", "-r", arc, "restore", "latest", "--target", dest], None
        raise ValueError(tool)

    def mount_of(self, tool, arc, src, name=None):
        """A Mount of arc by tool; src is the snapshotted path (restic keeps it);
        mounted on MNT/name (default: the tool's name)."""
        mnt = os.path.join(self.mnt, name or tool)
        if tool == "hbb":
            h = self.hbb_mount
            cmd = [self.hbb, "mount", arc, mnt]
            if h["foreground"]:
                cmd.insert(2, h["foreground"])
            return Mount(self, tool, cmd, mnt, daemon_hbb=not h["foreground"])
        if tool in ("squashfuse", "squashfuse_ll"):
            return Mount(self, tool, [tool, "-f", arc, mnt], mnt)
        if tool == "borg":
            return Mount(self, tool, ["borg", "mount", "-f", arc + "::a", mnt], mnt, env=self.env)
        if tool == "restic":
            rel = os.path.join("snapshots", "latest", os.path.abspath(src).lstrip("/"))
            return Mount(self, tool, ["restic", "-r", arc, "mount", mnt], mnt, root_rel=rel, env=self.env)
        raise ValueError(tool)

    # ================================================================ figures

    def fig_snapshot(self):
        """Figure 1: snapshot of K and of V, every tool."""
        res = {"K": {}, "V": {}}
        kin = self.corpus_stats(self.K)
        vin = self.corpus_stats(self.V)
        res["K_input"] = kin
        res["V_input"] = vin
        self.warm(self.K)
        tools_k = [("hbb", "K.hbb", None), ("hbb -t1", "K-t1.hbb", None), ("tar+zstd", "K.tar.zst", None),
                   ("squashfs", "K-128K.sqfs", None), ("squashfs-1M", "K-1M.sqfs", MiB),
                   ("borg", "K.borg", None), ("restic", "K.restic", None)]
        for tool, name, bs in tools_k:
            say(f"snapshot K: {tool}")
            dst = os.path.join(self.arch, name)
            r = self.snapshot(tool, self.K, dst, bs=bs)
            r["ratio"] = kin["bytes"] / r["bytes"]
            r["mbps"] = kin["bytes"] / r["wall"] / 1e6
            self.stamp(tool, self.K, dst, bs)
            if tool == "hbb -t1":
                rm(dst)
            if tool == "hbb":
                r["info"] = json.loads(out_of([self.hbb, "info", "--json", dst]))
                r["rss_base"] = self.baseline_rss()
            res["K"][tool] = r
            say(f"  {r['wall']:.2f} s, {r['bytes'] / 1e6:.1f} MB, ratio {r['ratio']:.3f}, "
                f"user+sys {r['user'] + r['sys']:.1f} s, rss {r['rss'] / MiB:.0f} MiB")
        res["K_zstd_cpu"] = self.zstd_cpu(self.K)
        say(f"zstd -3 alone on K: {res['K_zstd_cpu']:.2f} CPU-s; best case on {self.threads} cores "
            f"{res['K_zstd_cpu'] / self.threads:.2f} s")
        res["K_perf"] = self.perf_stat(self.snap_cmd("hbb", self.K, os.path.join(self.tmp, "perf.hbb"))[1])
        rm(os.path.join(self.tmp, "perf.hbb"))
        # What a nightly backup meets: nothing of the source cached, not
        # even its directories and inodes (drop_caches before each run).
        res["K_cold"] = {}
        for tool, bs in (("hbb", None), ("tar+zstd", None), ("squashfs-1M", MiB)):
            say(f"snapshot K, cold cache: {tool}")
            dst = os.path.join(self.tmp, "cold-snapshot")
            r = self.snapshot(tool, self.K, dst, bs=bs, cold=True)
            rm(dst)
            res["K_cold"][tool] = r
            say(f"  {r['wall']:.2f} s, user+sys {r['user'] + r['sys']:.1f} s")
        self.warm(self.V)
        for tool, name in (("hbb", "V.hbb"), ("zstd", "V.img.zst")):
            say(f"snapshot V: {tool}")
            dst = os.path.join(self.arch, name)
            r = self.snapshot(tool, self.V, dst)
            r["ratio"] = vin["bytes"] / r["bytes"]
            r["mbps"] = vin["bytes"] / r["wall"] / 1e6
            self.stamp(tool, self.V, dst)
            if tool == "hbb":
                r["info"] = json.loads(out_of([self.hbb, "info", "--json", dst]))
                r["rss_base"] = self.baseline_rss()
            res["V"][tool] = r
            say(f"  {r['wall']:.2f} s, {r['bytes'] / 1e6:.1f} MB, ratio {r['ratio']:.3f}, "
                f"user+sys {r['user'] + r['sys']:.1f} s, rss {r['rss'] / MiB:.0f} MiB")
        self.save("snapshot", res)

    def fresh_restore_fs(self):
        """A new, empty ext4 filesystem for each restore: restoring into a
        filesystem that just deleted the previous restore's 80k files makes
        ext4's inode allocator skip its recently freed inodes (the kernel's
        recently_deleted()), and would charge that to whichever tool came
        next."""
        fs_dir = os.path.join(self.work, "restore-fs")
        img = os.path.join(self.cache, "restore-fs.img")
        os.makedirs(fs_dir, exist_ok=True)
        subprocess.run(["umount", fs_dir], capture_output=True)
        rm(img)
        with open(img, "wb") as f:
            f.truncate(8 << 30)
        # Inode tables and journal initialised now, not by a kernel thread
        # writing in the background while a restore is timed.
        self.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img])
        self.run(["mount", "-o", "loop", img, fs_dir])
        return fs_dir

    def drop_restore_fs(self):
        fs_dir = os.path.join(self.work, "restore-fs")
        subprocess.run(["umount", fs_dir], capture_output=True)
        rm(os.path.join(self.cache, "restore-fs.img"))

    def fig_restore(self):
        """Figure 2: restore of the whole archive, page cache dropped first,
        each run into a new ext4 filesystem."""
        res = {"K": {}, "V": {}}
        kfiles = count_files(self.K)
        dest = os.path.join(self.fresh_restore_fs(), "out")
        for tool, name, bs in (("hbb", "K.hbb", None), ("tar+zstd", "K.tar.zst", None),
                               ("squashfs", "K-128K.sqfs", None), ("squashfs-1M", "K-1M.sqfs", MiB),
                               ("borg", "K.borg", None), ("restic", "K.restic", None)):
            arc = os.path.join(self.arch, name)
            self.ensure(tool, self.K, arc, bs)
            say(f"restore K: {tool}")
            setup, cmd, cwd = self.restore_cmd(tool, arc, dest)
            r = self.timed(cmd, setup=lambda: (self.fresh_restore_fs(), setup()), cwd=cwd, cold=True)
            got = count_files(dest)
            r["check"] = "ok" if got == kfiles else f"MISMATCH: {got} files/bytes, source {kfiles}"
            say(f"  {r['wall']:.2f} s, user+sys {r['user'] + r['sys']:.1f} s; files {r['check']}")
            res["K"][tool] = r
            rm(dest)
        vsize = os.path.getsize(self.V)
        for tool, name in (("hbb", "V.hbb"), ("zstd", "V.img.zst")):
            arc = os.path.join(self.arch, name)
            self.ensure(tool, self.V, arc)
            say(f"restore V: {tool}")
            setup, cmd, cwd = self.restore_cmd(tool, arc, dest)
            r = self.timed(cmd, setup=lambda: (self.fresh_restore_fs(), setup()), cwd=cwd, cold=True)
            r["check"] = "ok" if os.path.getsize(dest) == vsize else "MISMATCH: size"
            say(f"  {r['wall']:.2f} s, user+sys {r['user'] + r['sys']:.1f} s; size {r['check']}")
            res["V"][tool] = r
            rm(dest)
        self.drop_restore_fs()
        self.save("restore", res)

    def mount_tools(self):
        tools = ["squashfuse", "squashfuse_ll", "borg", "restic"]
        return (["hbb"] if self.hbb_mount else []) + tools

    def fig_mount(self):
        """Figure 3: through the mount: mount time and memory, reading the
        whole tree (cold), random 4 KiB reads in a large file (cold, cached)."""
        res = {"hbb_mount": bool(self.hbb_mount), "tree": {}, "random": {}}
        if not self.hbb_mount:
            print("   skipped: hbb mount not available (hbb mount --help fails); competitors only")
        arcs = {"hbb": ("hbb", "K.hbb", None), "squashfuse": ("squashfs", "K-128K.sqfs", None),
                "squashfuse_ll": ("squashfs", "K-128K.sqfs", None),
                "borg": ("borg", "K.borg", None), "restic": ("restic", "K.restic", None)}
        for m in self.mount_tools():
            tool, name, bs = arcs[m]
            arc = os.path.join(self.arch, name)
            self.ensure(tool, self.K, arc, bs)
            say(f"read K through the mount: {m}")
            # Each repetition on a new mount with the page cache dropped;
            # the median read is shown (with its mount's memory).
            runs = []
            for _ in range(self.reps):
                drop_caches()
                with self.mount_of(m, arc, self.K) as mo:
                    r = {"mount_s": mo.mount_seconds, "rss_after_mount": mo.rss()[0]}
                    sh = 'set -o pipefail; tar -cf - -C "$1" . | wc -c >"$2"'
                    wc = os.path.join(self.tmp, "wc")
                    t = self.measure(["bash", "-c", sh, "-", mo.root, wc])
                    r["read_s"] = t["wall"]
                    with open(wc) as f:
                        r["tar_bytes"] = int(f.read())
                    r["rss"], r["hwm"] = mo.rss()
                runs.append(r)
            runs.sort(key=lambda x: x["read_s"])
            r = dict(runs[len(runs) // 2])
            r["walls"] = [x["read_s"] for x in runs]
            say(f"  mount {r['mount_s']:.2f} s, read {r['read_s']:.2f} s (runs {spread(r)}; "
                f"{r['tar_bytes'] / 1e6:.0f} MB tar), rss {r['rss'] / MiB:.0f} MiB (peak {r['hwm'] / MiB:.0f} MiB)")
            res["tree"][m] = r
        # Random reads in one large file.
        lsize = os.path.getsize(self.L)
        lrel = os.path.basename(self.L)
        ldir = os.path.dirname(self.L)
        linput = self.corpus_stats(ldir)["bytes"]
        res["L_input"] = linput
        cases = []
        if self.hbb_mount:
            cases += [("hbb", "hbb", None), ("hbb", "hbb", 128 * KiB), ("hbb", "hbb", MiB)]
        cases += [("squashfuse", "squashfs", None), ("squashfuse", "squashfs", MiB),
                  ("squashfuse_ll", "squashfs", None),
                  ("borg", "borg", None), ("restic", "restic", None)]
        n_cold = 200 if self.mode == "full" else 40
        n_win = 8 if self.mode == "full" else 3
        self.cold_passes = 3 if self.mode == "full" else 1
        # Every case first (archive made, label known), then the passes: pass
        # k of every case before pass k + 1 of any, starting at another case
        # each time, so that a slow stretch of this shared machine falls on
        # every tool alike instead of on whichever was being measured.
        todo = []
        for m, tool, bs in cases:
            ext = {"hbb": "hbb", "squashfs": "sqfs", "borg": "borg", "restic": "restic"}[tool]
            eff_bs = bs or {"hbb": 2 * MiB, "squashfs": 128 * KiB}.get(tool)
            name = f"L-{size_name(bs) if bs else 'default'}.{ext}"
            arc = os.path.join(self.arch, name)
            self.ensure(tool, ldir, arc, bs)
            if tool == "hbb":
                eff_bs = json.loads(out_of([self.hbb, "info", "--json", arc]))["block_size"]
            label = f"{m} {size_name(eff_bs) if eff_bs else ''}".strip()
            if any(c["label"] == label for c in todo):
                # hbb's default block is one of the sizes asked for: the
                # same archive and mount, measured once.
                say(f"random 4 KiB reads in L: {label}: the default block, measured as such")
                continue
            if any(c["arc"] == arc for c in todo):
                # Two mounts of one file would share its page cache: the
                # second to read a region would find the frame read already.
                # Each mount reads a copy of its own.
                copy = f"{arc}.{m}"
                if not os.path.exists(copy) or os.path.getmtime(copy) < os.path.getmtime(arc):
                    shutil.copyfile(arc, copy)
                arc = copy
            todo.append({"m": m, "arc": arc, "bs": bs, "eff_bs": eff_bs, "label": label,
                         "cold": [], "cached": []})
        # Archives made just now are flushed first (the first pass would
        # otherwise share the disk with their writeback and journal), and
        # dropped from the page cache: every mount then starts cold, the
        # first one too (each pass drops the cache after its mount).
        os.sync()
        drop_caches()
        time.sleep(2)
        # L has room for only ~160 untouched regions, so a p99 of one pass is
        # its second-slowest read: the cold reads are made in several passes,
        # each on new mounts after the page cache is dropped, at other
        # offsets (another seed), and pooled. In each pass every tool is
        # mounted at once and the tools take turns read by read, on the same
        # offsets: a slow stretch of this shared machine then falls on all
        # of them alike (taking turns pass by pass, a stretch of a few
        # seconds could move one tool's p99 by a millisecond).
        slot = max(max(c["eff_bs"] or 8 * MiB, 8 * MiB) for c in todo)
        for k in range(self.cold_passes):
            say(f"random 4 KiB reads in L: pass {k + 1} of {self.cold_passes}: "
                f"{', '.join(c['label'] for c in todo)}, mounted at once, reads interleaved")
            with contextlib.ExitStack() as stack:
                mounts = []
                for j, c in enumerate(todo):
                    mo = stack.enter_context(self.mount_of(c["m"], c["arc"], ldir, name=f"random-{j}"))
                    if k == 0:
                        c["mount_s"] = mo.mount_seconds
                    mounts.append(mo)
                paths = [os.path.join(mo.root, lrel) for mo in mounts]
                cold, touched = cold_reads(paths, lsize, slot, n_cold, random.Random(4 + k))
                for c, lat in zip(todo, cold):
                    c["cold"] += lat
                if k == 0:
                    for c, mo, path in zip(todo, mounts, paths):
                        c["cached"] += cached_reads(path, lsize, n_win, random.Random(1004), touched)
                        c["rss_pair"] = mo.rss()
        for c in todo:
            r = lat_summary(c["cold"], c["cached"])
            r["mount_s"] = c["mount_s"]
            r["rss"], r["hwm"] = c["rss_pair"]
            r["archive_bytes"] = path_bytes(c["arc"])
            r["ratio"] = linput / r["archive_bytes"]
            r["block"] = c["eff_bs"]
            r["tool"] = c["m"]
            r["default"] = c["bs"] is None
            say(f"random 4 KiB reads in L: {c['label']}: cold p50 {r['cold_p50_ms']:.2f} ms p99 "
                f"{r['cold_p99_ms']:.2f} ms; cached p50 {r['cached_p50_ms']:.3f} ms p99 "
                f"{r['cached_p99_ms']:.3f} ms; ratio {r['ratio']:.3f}")
            res["random"][c["label"]] = r
        self.save("mount", res)

    def fig_sweep(self):
        """Figure 4: hbb's block size: snapshot speed, ratio, memory,
        restore time, random-read latency."""
        res = {"points": [], "threads": self.threads, "hbb_mount": bool(self.hbb_mount)}
        kin = self.corpus_stats(self.K)
        res["K_input"] = kin
        if not self.hbb_mount:
            print("   skipped (random reads of the sweep): hbb mount not available")
        ldir = os.path.dirname(self.L)
        lsize = os.path.getsize(self.L)
        dest = os.path.join(self.work, "restore")
        self.warm(self.K)
        n_cold = 200 if self.mode == "full" else 40
        n_win = 8 if self.mode == "full" else 3
        for bs in self.sweep:
            say(f"block size {size_name(bs)}: snapshot K")
            arc = os.path.join(self.tmp, "sweep.hbb")
            r = self.snapshot("hbb", self.K, arc, bs=bs)
            info = json.loads(out_of([self.hbb, "info", "--json", arc]))
            p = {"block": bs, "snap_s": r["wall"], "user": r["user"], "sys": r["sys"], "rss": r["rss"],
                 "bytes": r["bytes"], "ratio": kin["bytes"] / r["bytes"], "mbps": kin["bytes"] / r["wall"] / 1e6,
                 "index_bytes": info.get("index_bytes"), "walls": r["walls"]}
            p["rss_bound"] = (2 * self.threads + 4) * bs + (info.get("index_bytes") or 0)
            p["rss_base"] = self.baseline_rss()
            p["rss_net"] = p["rss"] - p["rss_base"]
            say(f"  {p['snap_s']:.2f} s, ratio {p['ratio']:.3f}, rss {p['rss'] / MiB:.0f} MiB, less the "
                f"{p['rss_base'] / MiB:.0f} MiB baseline {p['rss_net'] / MiB:.0f} MiB (bound {p['rss_bound'] / MiB:.0f} MiB); restore")
            setup, cmd, cwd = self.restore_cmd("hbb", arc, dest)
            rr = self.timed(cmd, setup=setup, cold=True)
            p["restore_s"] = rr["wall"]
            rm(dest)
            rm(arc)
            if self.hbb_mount:
                larc = os.path.join(self.tmp, "sweep-L.hbb")
                setup, cmd, cwd = self.snap_cmd("hbb", ldir, larc, bs)
                setup()
                self.run(cmd)
                with self.mount_of("hbb", larc, ldir) as mo:
                    cold, cached = random_reads(os.path.join(mo.root, os.path.basename(self.L)), lsize,
                                                max(bs, 8 * MiB), n_cold, n_win)
                    p.update(lat_summary(cold, cached))
                    p["mount_rss"], p["mount_hwm"] = mo.rss()
                rm(larc)
                say(f"  restore {p['restore_s']:.2f} s; cold p50 {p['cold_p50_ms']:.2f} ms p99 "
                    f"{p['cold_p99_ms']:.2f} ms; cached p50 {p['cached_p50_ms']:.3f} ms")
            res["points"].append(p)
        self.save("sweep", res)

    def fig_scale(self):
        """Figure 5: snapshot time from 10k to 1M small files; mount time and
        memory of the largest."""
        res = {"points": [], "hbb_mount": bool(self.hbb_mount), "mount": {}}
        for n in self.scale:
            src = os.path.join(self.cache, "corpus", f"S-{n}", "tree")
            st = self.corpus_stats(src)
            self.warm(src)
            p = {"files": n, "entries": st["entries"], "bytes": st["bytes"]}
            todo = [("hbb", f"S-{n}.hbb"), ("tar+zstd", f"S-{n}.tar.zst"), ("squashfs", f"S-{n}.sqfs")]
            if n != self.scale[-1]:
                todo += [("borg", f"S-{n}.borg"), ("restic", f"S-{n}.restic")]
            for tool, name in todo:
                say(f"{n} files: snapshot {tool}")
                dst = os.path.join(self.arch, name)
                r = self.snapshot(tool, src, dst, reps=1 if tool in ("borg", "restic") else None)
                self.stamp(tool, src, dst)
                p[tool] = {"wall": r["wall"], "user": r["user"], "sys": r["sys"], "rss": r["rss"],
                           "bytes": r["bytes"], "ratio": st["bytes"] / r["bytes"]}
                say(f"  {r['wall']:.2f} s, rss {r['rss'] / MiB:.0f} MiB, {r['bytes'] / 1e6:.1f} MB")
                if n != self.scale[-1]:
                    rm(dst)
            res["points"].append(p)
        n = self.scale[-1]
        src = os.path.join(self.cache, "corpus", f"S-{n}", "tree")
        # The largest tree again from a cold cache (drop_caches: pages,
        # dentries and inodes), once each: tar | zstd takes minutes.
        res["cold"] = {"files": n}
        for tool in ("hbb", "tar+zstd"):
            say(f"{n} files, cold cache: snapshot {tool}")
            dst = os.path.join(self.tmp, "cold-scale")
            r = self.snapshot(tool, src, dst, reps=1, cold=True)
            rm(dst)
            res["cold"][tool] = r
            say(f"  {r['wall']:.2f} s, user+sys {r['user'] + r['sys']:.1f} s")
        tools = (["hbb"] if self.hbb_mount else []) + ["squashfuse", "squashfuse_ll"]
        if not self.hbb_mount:
            print("   skipped: hbb mount not available (the 1M-file mount); squashfuse only")
        for m in tools:
            arc = os.path.join(self.arch, f"S-{n}.hbb" if m == "hbb" else f"S-{n}.sqfs")
            say(f"mount the {n}-file archive: {m}")
            drop_caches()
            with self.mount_of(m, arc, src) as mo:
                r = {"mount_ls_s": mo.mount_seconds}
                r["rss_after_ls"] = mo.rss()[0]
                t = time.monotonic()
                entries = os.listdir(os.path.join(mo.root, "d0000"))
                r["ls_dir_s"] = time.monotonic() - t
                r["ls_dir_entries"] = len(entries)
                t = time.monotonic()
                count = walk_stat(mo.root)
                r["walk_s"] = time.monotonic() - t
                r["walk_entries"] = count
                r["rss"], r["hwm"] = mo.rss()
            r["archive_bytes"] = path_bytes(arc)
            say(f"  mounted and answering ls in {r['mount_ls_s']:.3f} s, rss {r['rss_after_ls'] / MiB:.0f} MiB; "
                f"walk of {count} entries {r['walk_s']:.2f} s, rss {r['rss'] / MiB:.0f} MiB")
            res["mount"][m] = r
        self.save("scale", res)


    # ================================================================ incremental

    def changeable_copy(self, work):
        """A fresh copy of K under work (emptied first), to change files in:
        the copy's path and the sorted list of its regular files."""
        rm(work)
        os.makedirs(work)
        tree = os.path.join(work, os.path.basename(self.K.rstrip("/")))
        self.run(["cp", "-a", self.K, tree])
        files = []
        for d, _dirs, names in os.walk(tree):
            for n in names:
                p = os.path.join(d, n)
                if os.path.isfile(p) and not os.path.islink(p):
                    files.append(p)
        files.sort()
        return tree, files

    def fig_incremental(self):
        """Figure 6: a second snapshot of K after 1% of its files changed, by
        hbb into a repository, borg and restic (time, bytes added); then each
        repository grown to 30 snapshots and mounted whole (time, memory)."""
        work = os.path.join(self.work, "inc")
        tree, files = self.changeable_copy(work)
        rnd = random.Random(6)

        def touch(k):
            return change_one_percent(files, rnd, k)

        tools = ["hbb", "borg", "restic"]
        repos = {t: os.path.join(work, f"repo-{t}") for t in tools}

        def snap(t, k):
            r = repos[t]
            if t == "hbb":
                return [self.hbb, "snapshot", tree, r, "--level", "3", "--quiet", "--name", f"s{k:02}"], None
            if t == "borg":
                return ["borg", "create", "--compression", "zstd,3", f"{r}::s{k:02}", "."], tree
            return ["restic", "-r", r, "--compression", "auto", "backup", "-q", tree], None

        self.run([self.hbb, "repo", "init", "--quiet", repos["hbb"]])
        rm(self.env["BORG_BASE_DIR"])
        self.run(["borg", "init", "-e", "none", repos["borg"]])
        rm(self.env["RESTIC_CACHE_DIR"])
        self.run(["restic", "-r", repos["restic"], "init", "--repository-version", "2"])
        res = {"files": len(files), "bytes": tree_bytes(tree)[0], "first": {}, "second": {}, "mount30": {}}
        for t in tools:
            say(f"first snapshot: {t}")
            self.warm(tree)
            cmd, cwd = snap(t, 1)
            r = self.measure(cmd, cwd=cwd)
            res["first"][t] = {"wall": r["wall"], "bytes": path_bytes(repos[t])}
        res["changed"] = touch(2)
        for t in tools:
            say(f"second snapshot, {res['changed']} files changed: {t}")
            self.warm(tree)
            before = path_bytes(repos[t])
            cmd, cwd = snap(t, 2)
            r = self.measure(cmd, cwd=cwd)
            r["added"] = path_bytes(repos[t]) - before
            res["second"][t] = r
            say(f"  {r['wall']:.2f} s, {r['added'] / 1e6:.2f} MB added, rss {r['rss'] / MiB:.0f} MiB")
        say("growing each repository to 30 snapshots")
        for k in range(3, 31):
            touch(k)
            for t in tools:
                cmd, cwd = snap(t, k)
                self.run(cmd, cwd=cwd)
        for t in tools:
            r = repos[t]
            mnt = os.path.join(self.mnt, f"{t}-repo")
            if t == "hbb":
                if not self.hbb_mount:
                    continue
                cmd = [self.hbb, "mount", r, mnt]
                if self.hbb_mount["foreground"]:
                    cmd.insert(2, self.hbb_mount["foreground"])
                m = Mount(self, t, cmd, mnt, daemon_hbb=not self.hbb_mount["foreground"])
                inside = lambda root: os.path.join(root, "s30")
            elif t == "borg":
                m = Mount(self, t, ["borg", "mount", "-f", r, mnt], mnt, env=self.env)
                inside = lambda root: os.path.join(root, "s30")
            else:
                m = Mount(self, t, ["restic", "-r", r, "mount", mnt], mnt, env=self.env)
                inside = lambda root: os.path.join(root, "snapshots", "latest", tree.lstrip("/"))
            say(f"mount the 30-snapshot repository: {t}")
            drop_caches()
            with m as mo:
                x = {"mount_ls_s": mo.mount_seconds, "rss_after_ls": mo.rss()[0],
                     "entries": len(os.listdir(mo.root))}
                t0 = time.monotonic()
                x["ls_snapshot_entries"] = len(os.listdir(inside(mo.root)))
                x["ls_snapshot_s"] = time.monotonic() - t0
                x["rss"], x["hwm"] = mo.rss()
            x["repo_bytes"] = path_bytes(r)
            res["mount30"][t] = x
            say(f"  mounted and listing in {x['mount_ls_s']:.3f} s, rss {x['rss_after_ls'] / MiB:.0f} MiB; "
                f"one snapshot's root listed in {x['ls_snapshot_s']:.3f} s; repository {x['repo_bytes'] / 1e6:.0f} MB")
        self.save("incremental", res)
        rm(work)

    # ================================================================ remote

    REMOTE_TOOLS = ["hbb source", "hbb agent", "borg", "restic"]
    REMOTE_LINKS = [None, "1gbit", "100mbit"]   # None: no limit

    def fig_remote(self):
        """Figure 7: a snapshot of K into a repository on another host, over
        ssh (an sshd in a network namespace, reached over a veth pair and a
        bridge), at three link speeds, by hbb (compressing on the source or
        on the agent), borg (borg serve) and restic (sftp); then, at the
        slowest link, a second snapshot after 1 % of the files changed.
        Wall time, bytes over the link both ways, CPU on each end."""
        work = os.path.join(self.work, "remote")
        tree, files = self.changeable_copy(os.path.join(work, "src"))
        repos = os.path.join(work, "repos")     # the agent's disk (only the network is apart)
        kb, ke = tree_bytes(tree)
        res = {"files": len(files), "bytes": kb, "entries": ke, "links": {}, "second": {},
               "ssh": out_of(["ssh", "-V"]), "threads": self.threads}
        hbb = os.path.abspath(self.hbb)
        # The agent's sessions: borg serve keeps its own files here, not in ~root.
        agent_env = {"BORG_BASE_DIR": os.path.join(work, "agent-borg-base"), "LC_ALL": "C"}
        try:
            with AgentHost(os.path.join(work, "ssh"), agent_env) as agent:
                env = dict(self.env, HBB_RSH=agent.rsh, HBB_REMOTE_PATH=hbb, BORG_RSH=agent.rsh)
                sftp = ["-o", f"sftp.command={agent.rsh} root@{agent.IP} -s sftp"]
                host = f"root@{agent.IP}"

                def repo(tool):
                    d = os.path.join(repos, tool.replace(" ", "-"))
                    return d, (f"sftp:{host}:{d}" if tool == "restic" else f"ssh://{host}{d}")

                def init(tool):
                    d, url = repo(tool)
                    rm(d)
                    if tool.startswith("hbb"):
                        self.run([hbb, "repo", "init", "--quiet", url], env=env)
                    elif tool == "borg":
                        rm(self.env["BORG_BASE_DIR"])
                        rm(agent_env["BORG_BASE_DIR"])
                        self.run(["borg", "init", "-e", "none", url], env=env)
                    else:
                        rm(self.env["RESTIC_CACHE_DIR"])
                        self.run(["restic", "-r", url] + sftp + ["init", "--repository-version", "2"], env=env)

                def snap(tool, name):
                    d, url = repo(tool)
                    if tool.startswith("hbb"):
                        return [hbb, "snapshot", tree, url, "--level", "3", "--quiet", "--name", name,
                                "--compress-on", tool.split()[1]], None
                    if tool == "borg":
                        return ["borg", "create", "--compression", "zstd,3", f"{url}::{name}", "."], tree
                    return ["restic", "-r", url] + sftp + ["--compression", "auto", "backup", "-q", tree], None

                def measured(tool, name):
                    cmd, cwd = snap(tool, name)
                    if not agent.settle():
                        say("  (warning: sessions of the previous command still run on the agent)")
                    self.warm(tree)
                    c0, a0 = agent.counters(), agent.cpu()
                    try:
                        r = self.measure(cmd, cwd=cwd, env=env, timeout=900)
                    except subprocess.TimeoutExpired:
                        raise RuntimeError(f"{shlex.join(cmd)} still running after 900 s: killed (see {self.logfile})")
                    settled = agent.settle()
                    c1, a1 = agent.counters(), agent.cpu()
                    r.update({"tx": c1[0] - c0[0], "rx": c1[1] - c0[1], "agent_cpu": a1 - a0,
                              "agent_settled": settled, "repo_bytes": path_bytes(repo(tool)[0])})
                    return r

                for link in self.REMOTE_LINKS:
                    label = link or "unlimited"
                    agent.limit(link)
                    res["links"][label] = {}
                    res.setdefault("ssh_alone", {})[label] = self.ssh_alone(agent, 100 if link == "100mbit" else 400)
                    say(f"link {label}: ssh alone carries {res['ssh_alone'][label] / 1e6:.0f} MB/s")
                    for tool in self.REMOTE_TOOLS:
                        say(f"link {label}: first snapshot, {tool}")
                        init(tool)
                        r = measured(tool, "first")
                        res["links"][label][tool] = r
                        say(f"  {r['wall']:.2f} s; sent {r['tx'] / 1e6:.1f} MB, received {r['rx'] / 1e6:.1f} MB; "
                            f"CPU here {r['user'] + r['sys']:.1f} s, on the agent {r['agent_cpu']:.1f} s; "
                            f"repository {r['repo_bytes'] / 1e6:.1f} MB")
                        if link != self.REMOTE_LINKS[-1]:
                            rm(repo(tool)[0])
                label = self.REMOTE_LINKS[-1] or "unlimited"
                res["second_link"] = label
                res["changed"] = change_one_percent(files, random.Random(7), 2)
                for tool in self.REMOTE_TOOLS:
                    say(f"link {label}: second snapshot, {res['changed']} files changed: {tool}")
                    before = path_bytes(repo(tool)[0])
                    r = measured(tool, "second")
                    r["added"] = r["repo_bytes"] - before
                    res["second"][tool] = r
                    say(f"  {r['wall']:.2f} s; sent {r['tx'] / 1e6:.2f} MB, received {r['rx'] / 1e6:.2f} MB; "
                        f"{r['added'] / 1e6:.2f} MB added")
        finally:
            rm(work)
        self.save("remote", res)

    def ssh_alone(self, agent, mib_count):
        """Bytes per second ssh alone carries to the agent over the link as
        it is: `head -c N /dev/zero | ssh AGENT 'cat >/dev/null'`."""
        agent.settle()
        sh = f'head -c {mib_count}M /dev/zero | {agent.rsh} root@{agent.IP} "cat >/dev/null"'
        t0 = time.monotonic()
        self.run(["bash", "-c", sh])
        return mib_count * MiB / (time.monotonic() - t0)

    # ================================================================ meta

    def meta(self):
        def v(cmd, pat=None):
            s = out_of(cmd)
            if pat:
                m = re.search(pat, s)
                return m.group(0) if m else first_line(s)
            return first_line(s)

        def pkg(p):
            return out_of(["dpkg-query", "-W", "-f=${Version}", p]) or "?"
        cpu = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * KiB
        fs = out_of(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", self.cache])
        return {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host_cpu": cpu, "cores": self.threads, "mem": mem,
            "kernel": platform.release(), "os": out_of(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "cache_fs": fs, "loadavg": open("/proc/loadavg").read().split()[:3],
            "versions": {
                "hbb": self.hbb_version(),
                "rustc": v(["rustc", "--version"]),
                "zstd": v(["zstd", "--version"], r"v[\d.]+"),
                "tar": v(["tar", "--version"]),
                "squashfs-tools (mksquashfs, unsquashfs)": pkg("squashfs-tools"),
                "squashfuse": pkg("squashfuse"),
                "borg": v(["borg", "--version"]) + " (Debian " + pkg("borgbackup") + ", pyfuse3 " + pkg("python3-pyfuse3") + ")",
                "restic": v(["restic", "version"]),
                "fuse3": pkg("fuse3"),
                "e2fsprogs": pkg("e2fsprogs"),
                "python3": v(["/usr/bin/python3", "--version"]),
                "gnuplot": v(["gnuplot", "--version"]),
                "openssh (client, server)": pkg("openssh-client") + ", " + pkg("openssh-server"),
                "iproute2 (ip, tc)": pkg("iproute2"),
            },
        }


# ==================================================================== report

def load_results(results):
    r = {}
    for fig in FIGURES + ["meta"]:
        try:
            with open(os.path.join(results, f"{fig}.json")) as f:
                r[fig] = json.load(f)
        except (OSError, ValueError):
            pass
    return r


def when(fig):
    """'(date, N rep., took M min)' for a figure's heading."""
    bits = [fig["when"].replace("T", " ")]
    if "reps" in fig and fig.get("figure") not in ("mount", "remote"):
        bits.append(f"{fig['reps']} rep.")
    if "seconds" in fig:
        bits.append(f"took {fig['seconds'] / 60:.1f} min")
    return "<sub>(" + ", ".join(bits) + ")</sub>"


def spread(r):
    """'min–max' of a timed command's runs, to show the noise."""
    ws = r.get("walls") or []
    if len(ws) < 2:
        return "–"
    return f"{min(ws):.2f}–{max(ws):.2f}"


def fmt_s(x):
    if x is None:
        return "–"
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def fmt_ms(x):
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}"


def mb(x):
    return "–" if x is None else f"{x / 1e6:.1f}"


def mib(x):
    return "–" if x is None else f"{x / MiB:.0f}"


def times(x, base):
    """How many times base (hbb) is better than x."""
    if x is None or base is None or base == 0:
        return "–"
    return f"{x / base:.2f}×"


TOOL_DESC = {
    "hbb": "`hbb snapshot SRC A --level 3` (its default block size and threads, one per core)",
    "tar+zstd": "`tar -cf - SRC | zstd -T0 -3`",
    "zstd": "`zstd -T0 -3 IMAGE`",
    "squashfs": "`mksquashfs -comp zstd -Xcompression-level 3 -processors 2` (block 128 KiB)",
    "squashfs-1M": "the same with `-b 1M`",
    "borg": "`borg create --compression zstd,3` (repo `-e none`; one thread)",
    "restic": "`restic --compression auto backup` (repo v2, zstd at its default speed; encrypted: restic has no unencrypted mode)",
}


def render(results_dir, out, mode):
    R = load_results(results_dir)
    meta = R.get("meta", {})
    L = []
    w = L.append
    w("# Benchmarks")
    w("")
    w(f"Generated by `scripts/bench.sh{' --quick' if mode == 'quick' else ''}` "
      f"(harness `scripts/bench.py`); rebuild with `scripts/bench.sh`, one figure with `--only FIGURE`. "
      f"Each figure's table says when it was measured.")
    w("")
    if mode == "quick":
        w("> **Quick run**: small corpora and one repetition, to check that the script works. "
          "These numbers are not the benchmark.")
        w("")
    w("> The machine is a shared 2-core VM whose timings vary from run to run (the *runs s* columns show "
      "each figure's fastest and slowest repetition); compare tools within one table, as ratios, and re-run on a quiet "
      "machine before quoting a figure measured under load (see the load average below).")
    w("")
    if meta:
        w("## Machine and versions")
        w("")
        w(f"- {meta['host_cpu']}, {meta['cores']} cores, {meta['mem'] / (1 << 30):.0f} GiB RAM; "
          f"kernel {meta['kernel']}; {meta['os']}; corpora and archives on {meta['cache_fs']}")
        w(f"- load average when the last run started: {' '.join(meta['loadavg'])}; date {meta['date']}")
        for k, v in meta["versions"].items():
            w(f"- {k}: {v}")
        w("")
    w("## How it is measured")
    w("")
    w("- **K**: the Linux 6.1 source tree from Debian's `linux-source-6.1` (the tarball inside, unpacked). "
      "**V**: an ext4 image (`mkfs.ext4 -d`) holding K, most of it free. **L**: K as one uncompressed tar "
      "(the large file of the random reads). **S-n**: n generated small text files (log-normal sizes, "
      "median 700 B), 1000 to a directory.")
    w("- Tools at zstd level 3 where they have it: " + "; ".join(f"{k}: {v}" for k, v in TOOL_DESC.items()) + ".")
    w("- Wall time by the harness's monotonic clock; user+sys and peak RSS by `/usr/bin/time` "
      "(for a pipeline, user+sys over its processes, peak RSS of its largest process). "
      "A timed command runs `--reps` times; the median run is shown.")
    w("- Snapshots read a source already in the page cache (except the *cold cache* rows, measured after "
      "`echo 3 > /proc/sys/vm/drop_caches`); their time includes getting the archive to disk "
      "(hbb, borg and restic fsync; the other commands are followed by `sync FILE` inside the timing). "
      "Restores and reads through a mount start with the page cache dropped (`echo 3 > /proc/sys/vm/drop_caches`); "
      "each restore writes into a new, empty ext4 filesystem (a loop image), since ext4 slows down creating files "
      "right after deleting many (its allocator skips recently freed inodes).")
    w("- Random reads: 4 KiB `pread`s with `POSIX_FADV_RANDOM` in L through each mount. *Cold*: page cache "
      "dropped, then every read lands in a region of the file (max(block, 8 MiB)) that no earlier read "
      "touched; L has room for ~160 such reads, so figure 3 pools three such passes (a full run), each on "
      "new mounts, at other offsets (*cold n* reads in all). In each pass of figure 3 every tool is mounted at once "
      "and the tools take turns read by read, at the same offsets, so that a slow moment of the machine falls on "
      "all of them alike; two mounts of the same archive (squashfuse and squashfuse_ll) each read a copy of their own, "
      "so that neither finds a frame in the page cache that the other just read. *Cached*: a read in a 128 KiB window, then each other page of that window once (the block is "
      "decompressed in the mount's cache, the page is not in the kernel's).")
    w("- Ratios: *× hbb* is the tool's figure divided by hbb's: above 1 means hbb is faster (or smaller). "
      "*runs s*: the fastest and slowest of the repetitions, to show the noise.")
    w("- Mounts: `hbb mount -f`, `squashfuse -f` (and `squashfuse_ll -f`, its faster low-level variant, for reference), "
      "`borg mount -f`, `restic mount`, each run in the foreground by the harness so that its memory (VmRSS, VmHWM) "
      "can be read from /proc; *mount s* is the time from starting it until its tree's root lists.")
    w("")
    targets(R, w)
    snap = R.get("snapshot")
    if snap:
        d = snap["data"]
        w(f"## 1. Snapshot  {when(snap)}")
        w("")
        for corp, label in (("K", "K"), ("V", "V")):
            inp = d[f"{corp}_input"]
            w(f"**{label}**: {inp['bytes'] / 1e6:.0f} MB in {inp['entries']} entries" if corp == "K" else
              f"**{label}**: a {inp['bytes'] / (1 << 30):.0f} GiB image")
            w("")
            w("| tool | wall s | runs s | × hbb | MB/s | archive MB | ratio | user+sys s | CPU | peak RSS MiB |")
            w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            base = d[corp].get("hbb", {}).get("wall")
            for tool, r in d[corp].items():
                cpu = (r["user"] + r["sys"]) / r["wall"]
                if tool == "hbb" and "info" in r:
                    tool = f"hbb (block {size_name(r['info']['block_size'])}, {r['info'].get('threads', '?')} threads)"
                tool = {"hbb -t1": "hbb `--threads 1`"}.get(tool, tool)
                w(f"| {tool} | {fmt_s(r['wall'])} | {spread(r)} | {times(r['wall'], base)} | {r['mbps']:.0f} | {mb(r['bytes'])} | "
                  f"{r['ratio']:.3f} | {r['user'] + r['sys']:.1f} | {cpu * 100:.0f}% | {mib(r['rss'])} |")
            w("")
            zc = d.get("K_zstd_cpu") if corp == "K" else None
            if zc:
                th = d["K"].get("hbb", {}).get("info", {}).get("threads", 2)
                w(f"The floor: `zstd -T1 -3` alone spends {zc:.2f} CPU-s compressing K (as a tar, to /dev/null), so "
                  f"no level-3 snapshot of K can take less than {zc / th:.2f} s on {th} cores; that is "
                  f"{d['K']['tar+zstd']['wall'] / (zc / th):.2f}× faster than tar|zstd here." if "tar+zstd" in d["K"] else "")
                w("")
            kc = d.get("K_cold") if corp == "K" else None
            if kc:
                w("From a cold cache (page cache, dentries and inodes dropped before each run, as a nightly "
                  "backup finds them):")
                w("")
                w("| tool | wall s | runs s | × hbb | user+sys s |")
                w("|---|---:|---:|---:|---:|")
                cb = kc.get("hbb", {}).get("wall")
                for tool, r in kc.items():
                    w(f"| {tool} | {fmt_s(r['wall'])} | {spread(r)} | {times(r['wall'], cb)} | "
                      f"{r['user'] + r['sys']:.1f} |")
                w("")
            pf = d.get("K_perf") if corp == "K" else None
            if pf:
                w(f"`perf stat` of one more hbb snapshot of K: {pf.get('task-clock', 0) / 1000:.2f} s task-clock, "
                  f"{pf.get('cpus_utilized', 0):.2f} CPUs utilized, {pf.get('context-switches', 0):.0f} context switches, "
                  f"{pf.get('cpu-migrations', 0):.0f} migrations, {pf.get('page-faults', 0):.0f} page faults.")
                w("")
    rest = R.get("restore")
    if rest:
        d = rest["data"]
        w(f"## 2. Restore of the whole archive, page cache dropped  {when(rest)}")
        w("")
        w("| corpus | tool | command | wall s | runs s | × hbb | user+sys s | peak RSS MiB | restored files |")
        w("|---|---|---|---:|---:|---:|---:|---:|---|")
        cmds = {"hbb": "hbb restore", "tar+zstd": "zstd -d \\| tar -x", "squashfs": "unsquashfs -p 2",
                "squashfs-1M": "unsquashfs -p 2", "borg": "borg extract", "restic": "restic restore",
                "zstd": "zstd -d"}
        for corp in ("K", "V"):
            base = d[corp].get("hbb", {}).get("wall")
            for tool, r in d[corp].items():
                w(f"| {corp} | {tool} | `{cmds[tool]}` | {fmt_s(r['wall'])} | {spread(r)} | {times(r['wall'], base)} | "
                  f"{r['user'] + r['sys']:.1f} | {mib(r['rss'])} | {r['check']} |")
        w("")
    mnt = R.get("mount")
    if mnt:
        d = mnt["data"]
        w(f"## 3. Through the mount  {when(mnt)}")
        w("")
        if not d["hbb_mount"]:
            w("**skipped: hbb mount not available** (`hbb mount --help` failed when this was measured); "
              "the competitors' figures stand alone.")
            w("")
        w("Reading all of K, cache dropped before mounting: `tar -cf - -C MNT . | wc -c`, each repetition on a "
          "new mount (median shown).")
        w("")
        w("| mount | mount s | read all of K s | runs s | × hbb | MB/s | RSS after mount MiB | RSS after read MiB | peak MiB |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        base = d["tree"].get("hbb", {}).get("read_s")
        for m, r in d["tree"].items():
            w(f"| {m} | {fmt_s(r['mount_s'])} | {fmt_s(r['read_s'])} | {spread(r)} | {times(r['read_s'], base)} | "
              f"{r['tar_bytes'] / r['read_s'] / 1e6:.0f} | {mib(r['rss_after_mount'])} | {mib(r['rss'])} | {mib(r['hwm'])} |")
        w("")
        w(f"Random 4 KiB reads in L ({d['L_input'] / 1e6:.0f} MB, one file).")
        w("")
        w("| mount, block | archive MB | ratio | cold p50 ms | cold p99 ms | cold n | cached p50 ms | cached p99 ms | mount s | peak RSS MiB |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, r in d["random"].items():
            w(f"| {label} | {mb(r['archive_bytes'])} | {r['ratio']:.3f} | {fmt_ms(r['cold_p50_ms'])} | "
              f"{fmt_ms(r['cold_p99_ms'])} | {r['cold_n']} | {fmt_ms(r['cached_p50_ms'])} | "
              f"{fmt_ms(r['cached_p99_ms'])} | {fmt_s(r['mount_s'])} | {mib(r['hwm'])} |")
        w("")
        w("borg and restic cut files into content-defined chunks (borg ~2 MiB on average, restic ~1 MiB), "
          "squashfs into fixed blocks.")
        w("")
    sw = R.get("sweep")
    if sw:
        d = sw["data"]
        w(f"## 4. hbb block-size sweep (K, level 3, {d['threads']} threads)  {when(sw)}")
        w("")
        if not d["hbb_mount"]:
            w("Random-read columns **skipped: hbb mount not available** when this was measured.")
            w("")
        w("| block | snapshot s | runs s | MB/s | ratio | user+sys s | peak RSS MiB | less baseline | bound MiB | restore s | cold p50 ms | cold p99 ms | cached p50 ms | cached p99 ms | mount peak RSS MiB |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for p in d["points"]:
            w(f"| {size_name(p['block'])} | {fmt_s(p['snap_s'])} | {spread(p)} | {p['mbps']:.0f} | {p['ratio']:.3f} | "
              f"{p['user'] + p['sys']:.1f} | {mib(p['rss'])} | {mib(p['rss_net'])} | {mib(p['rss_bound'])} | "
              f"{fmt_s(p['restore_s'])} | {fmt_ms(p.get('cold_p50_ms'))} | {fmt_ms(p.get('cold_p99_ms'))} | "
              f"{fmt_ms(p.get('cached_p50_ms'))} | {fmt_ms(p.get('cached_p99_ms'))} | {mib(p.get('mount_hwm'))} |")
        w("")
        if d["points"]:
            w(f"*bound*: the memory target, (2 × threads + 4) × block + index (compressed size on disk). *less baseline*: "
              f"peak RSS less {mib(d['points'][0]['rss_base'])} MiB, the peak RSS of hbb snapshotting a one-file tree "
              f"(binary, libraries, runtime), which the target does not count. The harness only sees the index's "
              f"compressed size; in memory it is larger, so at small blocks the bound is too tight and the comparison "
              f"means most where blocks dominate (16M and up). Random reads on L through `hbb mount`, "
              f"restore of K with the page cache dropped.")
        w("")
    sc = R.get("scale")
    if sc:
        d = sc["data"]
        w(f"## 5. Scale: small files  {when(sc)}")
        w("")
        w("| files | MB | hbb s | files/s | hbb RSS MiB | hbb ratio | tar+zstd s | × hbb | mksquashfs s | × hbb | borg s | × hbb | restic s | × hbb | tar+zstd ratio |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for p in d["points"]:
            h = p["hbb"]
            row = [str(p["files"]), f"{p['bytes'] / 1e6:.0f}", fmt_s(h["wall"]), f"{p['files'] / h['wall']:.0f}",
                   mib(h["rss"]), f"{h['ratio']:.3f}"]
            for t in ("tar+zstd", "squashfs", "borg", "restic"):
                x = p.get(t, {}).get("wall")
                row += [fmt_s(x), times(x, h["wall"])]
            row.append(f"{p['tar+zstd']['ratio']:.3f}")
            w("| " + " | ".join(row) + " |")
        w("")
        w("borg and restic: one run each, and not at the largest point, to keep the run short.")
        w("")
        cold = d.get("cold")
        if cold:
            hb = cold.get("hbb", {}).get("wall")
            tz = cold.get("tar+zstd", {}).get("wall")
            w(f"The {cold['files']}-file tree from a cold cache (page cache, dentries and inodes dropped; one run "
              f"each): hbb {fmt_s(hb)} s (user+sys {cold['hbb']['user'] + cold['hbb']['sys']:.1f} s), "
              f"`tar | zstd` {fmt_s(tz)} s (user+sys {cold['tar+zstd']['user'] + cold['tar+zstd']['sys']:.1f} s): "
              f"hbb {times(tz, hb)} faster.")
            w("")
        n = d["points"][-1]["files"] if d["points"] else 0
        if not d["hbb_mount"]:
            w(f"hbb's mount of the {n}-file archive: **skipped: hbb mount not available**.")
            w("")
        w(f"Mounting the {n}-file archive (cache dropped): time until the root lists, memory.")
        w("")
        w("| mount | mounted + `ls` s | RSS then MiB | `ls` of a 1000-entry dir s | walk + lstat of every entry s | entries | RSS after walk MiB | peak MiB |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for m, r in d["mount"].items():
            w(f"| {m} | {r['mount_ls_s']:.3f} | {mib(r['rss_after_ls'])} | {r['ls_dir_s']:.3f} | {fmt_s(r['walk_s'])} | "
              f"{r['walk_entries']} | {mib(r['rss'])} | {mib(r['hwm'])} |")
        w("")

    inc = R.get("incremental")
    if inc:
        d = inc["data"]
        w(f"## 6. Incremental: second snapshot of K, and a repository of 30 snapshots  {when(inc)}")
        w("")
        w(f"A copy of K ({d['files']} files, {d['bytes'] / 1e6:.0f} MB); {d['changed']} files (1 %) get a line "
          f"appended before each snapshot after the first. One run of each (the repositories change with every run); "
          f"page cache warm.")
        w("")
        w("| tool | first s | first MB | second s | × hbb | bytes added MB | second user+sys s | second peak RSS MiB |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        h2 = d["second"].get("hbb", {}).get("wall")
        for t in ("hbb", "borg", "restic"):
            f1, s2 = d["first"].get(t), d["second"].get(t)
            if not f1 or not s2:
                continue
            w(f"| {t} | {fmt_s(f1['wall'])} | {f1['bytes'] / 1e6:.1f} | {fmt_s(s2['wall'])} | {times(s2['wall'], h2)} | "
              f"{s2['added'] / 1e6:.2f} | {s2['user'] + s2['sys']:.1f} | {mib(s2['rss'])} |")
        w("")
        w("Each repository then holds 30 snapshots; mounted whole with the page cache dropped:")
        w("")
        w("| mount | mounted + `ls` s | RSS then MiB | `ls` of the newest snapshot's root s | RSS after MiB | repository MB |")
        w("|---|---:|---:|---:|---:|---:|")
        for t, x in d["mount30"].items():
            w(f"| {t} | {x['mount_ls_s']:.3f} | {mib(x['rss_after_ls'])} | {x['ls_snapshot_s']:.3f} | {mib(x['rss'])} | "
              f"{x['repo_bytes'] / 1e6:.0f} |")
        w("")

    rem = R.get("remote")
    if rem:
        render_remote(rem, w)

    w("## Plots")
    w("")
    for png, cap in (("bench-tools.png", "Tools side by side (K)"), ("bench-latency.png", "Random 4 KiB reads (L)"),
                     ("bench-sweep.png", "hbb block-size sweep"), ("bench-scale.png", "Snapshot time vs file count")):
        if os.path.exists(os.path.join(out, png)):
            w(f"![{cap}]({png})")
            w("")
    with open(os.path.join(out, "BENCHMARKS.md"), "w") as f:
        f.write("\n".join(L))


def render_remote(rem, w):
    d = rem["data"]
    w(f"## 7. Remote: snapshot of K to another host over ssh  {when(rem)}")
    w("")
    ssh = d.get("ssh", "").split(",")[0]
    w(f"A copy of K ({d['files']} files, {d['bytes'] / 1e6:.0f} MB) snapshotted from this host (the root network "
      f"namespace) into a fresh repository on *agent*: a network namespace with its own sshd ({ssh}), reached over "
      f"a veth pair and a bridge. *1gbit*, *100mbit*: a token bucket (`tc tbf`, burst 10 ms at the rate) on both "
      f"ends of the agent's veth pair; *unlimited*: none. Every tool goes through the same ssh config "
      f"(OpenSSH's default cipher, chacha20-poly1305):")
    w("")
    w("- hbb source: `hbb snapshot K ssh://root@AGENT/…/repo --level 3 --compress-on source` "
      "(`HBB_RSH` = that ssh, `HBB_REMOTE_PATH` = the same binary, `hbb serve` on the agent; default block size "
      f"and threads, {d.get('threads', 2)}); hbb agent: the same with `--compress-on agent`;")
    w("- borg: `borg create --compression zstd,3 ssh://root@AGENT/…/borgrepo::first .` (`BORG_RSH` = that ssh, "
      "`borg serve` on the agent; repo `borg init -e none`);")
    w("- restic: `restic -r sftp:root@AGENT:/…/resticrepo -o sftp.command='ssh … root@AGENT -s sftp' "
      "--compression auto backup K` (repo v2, encrypted; the agent's sshd serves sftp itself, `internal-sftp`).")
    w("")
    w("Page cache warm (the tree read once before each snapshot). One run of each (each run changes its "
      "repository), so this machine's noise is not averaged out: read the ratios, not the last digit. "
      "*sent*, *received*: the source's veth byte counters (`/sys/class/net/…/statistics`) before and after "
      "(Ethernet frames: ssh, TCP and IP included). *link use*: the busier direction's bits per second over the "
      "limit. *CPU here*: user+sys of the snapshot command and its children (ssh included); *CPU agent*: of the "
      "agent's sshd and all its sessions ran (`hbb serve`, `borg serve`, the sftp server). Only the network is "
      "apart: both hosts share this machine's cores, so `--compress-on agent` moves the compressing but adds no "
      "core, and the repositories are on the same disk.")
    w("")
    alone = d.get("ssh_alone")
    if alone:
        w("What ssh alone carries over each link (`head -c 400M /dev/zero | ssh AGENT 'cat >/dev/null'`, 100M at "
          "100mbit): " + ", ".join(f"{k} {v / 1e6:.0f} MB/s" for k, v in alone.items()) + ".")
        w("")
    w("| link | tool | wall s | × hbb source | MB/s of K | sent MB | received MB | link use | repository MB | ratio | "
      "CPU here s | CPU agent s |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, tools in d["links"].items():
        rate = None if label == "unlimited" else parse_rate(label)
        base = tools.get("hbb source", {}).get("wall")
        for tool, r in tools.items():
            use = f"{max(r['tx'], r['rx']) * 8 / r['wall'] / rate * 100:.0f}%" if rate else "–"
            w(f"| {label} | {tool} | {fmt_s(r['wall'])} | {times(r['wall'], base)} | {d['bytes'] / r['wall'] / 1e6:.0f} | "
              f"{mb(r['tx'])} | {mb(r['rx'])} | {use} | {mb(r['repo_bytes'])} | {d['bytes'] / r['repo_bytes']:.3f} | "
              f"{r['user'] + r['sys']:.1f} | {r['agent_cpu']:.1f} |")
    w("")
    cmp = []
    for label, tools in d["links"].items():
        hs, ha = tools.get("hbb source"), tools.get("hbb agent")
        if hs and ha:
            faster = "source" if hs["wall"] <= ha["wall"] else "agent"
            x = max(hs["wall"], ha["wall"]) / min(hs["wall"], ha["wall"])
            cmp.append(f"{label}: `--compress-on {faster}` {x:.2f}× faster")
    if cmp:
        first = next(iter(d["links"].values()))
        hs, ha = first.get("hbb source"), first.get("hbb agent")
        sent = f" (the agent placement sends {ha['tx'] / hs['tx']:.1f}× the bytes: blocks go raw)" if hs and ha else ""
        w("Which end compresses, hbb against itself: " + "; ".join(cmp) + sent + ".")
        w("")
    if d.get("second"):
        label = d.get("second_link", "100mbit")
        w(f"Then, at {label}, {d['changed']} files (1 %) get a line appended (as in figure 6) and each tool takes a "
          f"second snapshot into the repository of its first.")
        w("")
        w("| tool | second s | × hbb source | sent MB | received MB | bytes added MB | CPU here s | CPU agent s |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        base = d["second"].get("hbb source", {}).get("wall")
        for tool, r in d["second"].items():
            w(f"| {tool} | {fmt_s(r['wall'])} | {times(r['wall'], base)} | {r['tx'] / 1e6:.2f} | {r['rx'] / 1e6:.2f} | "
              f"{r['added'] / 1e6:.2f} | {r['user'] + r['sys']:.1f} | {r['agent_cpu']:.1f} |")
        w("")


def targets(R, w):
    rows = []

    def add(name, value, ok):
        rows.append((name, value, "met" if ok else ("**missed**" if ok is not None else "not measured")))
    snap = R.get("snapshot", {}).get("data")
    if snap:
        h, t = snap["K"].get("hbb"), snap["K"].get("tar+zstd")
        if h and t:
            add("Snapshot K ≥ 1.8× faster than `tar | zstd -T0 -3`",
                f"{t['wall'] / h['wall']:.2f}× ({fmt_s(h['wall'])} s vs {fmt_s(t['wall'])} s)", t["wall"] / h["wall"] >= 1.8)
            add("… at a ratio no worse than tar|zstd's", f"{h['ratio']:.3f} vs {t['ratio']:.3f}", h["ratio"] >= t["ratio"])
        h, z = snap["V"].get("hbb"), snap["V"].get("zstd")
        if h and z:
            add("Snapshot V ≥ 1.5× faster than `zstd -T0 -3`",
                f"{z['wall'] / h['wall']:.2f}× ({fmt_s(h['wall'])} s vs {fmt_s(z['wall'])} s)", z["wall"] / h["wall"] >= 1.5)
        for corp in ("K", "V"):
            h = snap[corp].get("hbb")
            if h and "info" in h:
                bs = h["info"]["block_size"]
                th = h["info"].get("threads", 2)
                bound = (2 * th + 4) * bs + h["info"].get("index_bytes", 0)
                net = h["rss"] - h.get("rss_base", 0)
                add(f"Snapshot memory of {corp} ≤ (2×threads+4)×block + index",
                    f"{mib(net)} MiB ({mib(h['rss'])} MiB peak RSS less the {mib(h.get('rss_base', 0))} MiB "
                    f"of hbb snapshotting one tiny file) vs {mib(bound)} MiB", net <= bound)
    rest = R.get("restore", {}).get("data")
    if rest:
        h, u = rest["K"].get("hbb"), rest["K"].get("squashfs")
        if h and u:
            add("Restore K ≥ 1.25× faster than `unsquashfs -p 2`",
                f"{u['wall'] / h['wall']:.2f}× ({fmt_s(h['wall'])} s vs {fmt_s(u['wall'])} s)", u["wall"] / h["wall"] >= 1.25)
    mnt = R.get("mount", {}).get("data")
    if mnt:
        h = mnt["tree"].get("hbb")
        for m in ("squashfuse", "borg", "restic"):
            o = mnt["tree"].get(m)
            if o:
                add(f"Reading all of K through the mount ≥ 4× faster than {m}",
                    f"{o['read_s'] / h['read_s']:.2f}× ({fmt_s(h['read_s'])} s vs {fmt_s(o['read_s'])} s)" if h else
                    f"hbb not measured ({m}: {fmt_s(o['read_s'])} s)", (o["read_s"] / h["read_s"] >= 4) if h else None)
        rnd = mnt["random"]
        for bs in ("128K", "1M"):
            hb, sq = rnd.get(f"hbb {bs}"), rnd.get(f"squashfuse {bs}")
            if sq:
                add(f"Random read, block {bs}: hbb cold p99 ≤ squashfuse's",
                    f"{fmt_ms(hb['cold_p99_ms'])} ms vs {fmt_ms(sq['cold_p99_ms'])} ms" if hb else "hbb not measured",
                    (hb["cold_p99_ms"] <= sq["cold_p99_ms"]) if hb else None)
                add(f"… and ratio ≥ mksquashfs's (L, block {bs})",
                    f"{hb['ratio']:.3f} vs {sq['ratio']:.3f}" if hb else "hbb not measured",
                    (hb["ratio"] >= sq["ratio"]) if hb else None)
        hd = next((r for r in rnd.values() if r.get("tool") == "hbb" and r.get("default")), None)
        if hd is None and snap:
            # The default block size may equal one of squashfs's, whose row
            # then stands for it: take it from the snapshot of K.
            dbs = (snap["K"].get("hbb") or {}).get("info", {}).get("block_size")
            hd = next((r for r in rnd.values() if r.get("tool") == "hbb" and r.get("block") == dbs), None)
        add(f"Random read at hbb's default block ({size_name(hd['block']) if hd else '?'}): cold p99 ≤ 3 ms",
            f"{fmt_ms(hd['cold_p99_ms'])} ms" if hd else "hbb mount not available", (hd["cold_p99_ms"] <= 3) if hd else None)
        add("… in a cached block: p50 ≤ 0.1 ms",
            f"{fmt_ms(hd['cached_p50_ms'])} ms" if hd else "hbb mount not available", (hd["cached_p50_ms"] <= 0.1) if hd else None)
    sw = R.get("sweep", {}).get("data")
    if sw and sw["points"]:
        bad = [size_name(p["block"]) for p in sw["points"] if p["rss_net"] > p["rss_bound"]]
        add("Snapshot memory bound at every block size of the sweep",
            "within at every size" if not bad else "over at " + ", ".join(bad), not bad)
    sc = R.get("scale", {}).get("data")
    if sc and sc["points"]:
        n = sc["points"][-1]["files"]
        h = sc["mount"].get("hbb")
        add(f"{n}-file archive mounted and answering `ls` ≤ 1 s",
            f"{h['mount_ls_s']:.3f} s" if h else "hbb mount not available", (h["mount_ls_s"] <= 1) if h else None)
        add(f"… mount process ≤ 300 MB resident",
            f"{h['rss_after_ls'] / 1e6:.0f} MB after `ls`, {h['rss'] / 1e6:.0f} MB after an lstat of every entry, "
            f"{h['hwm'] / 1e6:.1f} MB at its peak" if h else "hbb mount not available",
            (max(h["rss_after_ls"], h["rss"], h["hwm"] or 0) <= 300e6) if h else None)
    if not rows:
        return
    w("## Targets (issue 4)")
    w("")
    w("| target | measured | |")
    w("|---|---|---|")
    for name, value, state in rows:
        name, value = name.replace("|", "\\|"), value.replace("|", "\\|")
        w(f"| {name} | {value} | {state} |")
    w("")


# ==================================================================== plots

def gnuplot(script, cwd):
    r = subprocess.run(["gnuplot"], input=script.encode(), capture_output=True, cwd=cwd)
    if r.returncode != 0 or r.stdout:
        print(f"   gnuplot failed: {r.stderr.decode(errors='replace').strip()[:500]}")


def plots(results_dir, out):
    R = load_results(results_dir)
    data = os.path.join(results_dir, "plots")
    os.makedirs(data, exist_ok=True)
    head = ("set terminal pngcairo size 1100,650 font 'DejaVu Sans,11'\n"
            "set grid ytics lc rgb '#dddddd'\nset key top left\n")
    tools = ["hbb", "tar+zstd", "squashfs", "borg", "restic"]
    snap = R.get("snapshot", {}).get("data", {})
    rest = R.get("restore", {}).get("data", {})
    mnt = R.get("mount", {}).get("data", {})
    if snap or rest or mnt:
        mtool = {"hbb": "hbb", "squashfs": "squashfuse", "borg": "borg", "restic": "restic"}
        cols = [("snapshot (cache warm)", lambda t: snap.get("K", {}).get(t, {}).get("wall")),
                ("restore (cache dropped)", lambda t: rest.get("K", {}).get(t, {}).get("wall")),
                ("read all through the mount (cache dropped)",
                 lambda t: mnt.get("tree", {}).get(mtool.get(t, ""), {}).get("read_s"))]
        cols = [c for c in cols if any(c[1](t) is not None for t in tools)]
        with open(os.path.join(data, "tools.dat"), "w") as f:
            for t in tools:
                f.write(f'"{t}" ' + " ".join("NaN" if c[1](t) is None else f"{c[1](t):.3f}" for c in cols) + "\n")
        series = ", ".join(f"'{data}/tools.dat' using {i + 2}" + (":xtic(1)" if i == 0 else "") + f" title '{c[0]}'"
                           for i, c in enumerate(cols))
        gnuplot(head + f"""set output '{out}/bench-tools.png'
set title 'Linux 6.1 source (K): seconds, lower is better'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set ylabel 'seconds'
set yrange [0:*]
set xrange [-0.6:{len(tools) - 0.4}]
plot {series}
""", data)
    if mnt.get("random"):
        with open(os.path.join(data, "latency.dat"), "w") as f:
            f.write("label cold50 cold99 cached50\n")
            for label, r in mnt["random"].items():
                f.write(f'"{label}" {r["cold_p50_ms"]:.4f} {r["cold_p99_ms"]:.4f} {r["cached_p50_ms"]:.4f}\n')
        gnuplot(head + f"""set output '{out}/bench-latency.png'
set title 'Random 4 KiB reads in one large file through the mount (ms, log scale, lower is better)'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set ylabel 'ms'
set xtics rotate by -30
set xrange [-0.6:{len(mnt["random"]) - 0.4}]
plot '{data}/latency.dat' using 2:xtic(1) title 'cold p50', '' using 3 title 'cold p99', '' using 4 title 'cached p50'
""", data)
    sw = R.get("sweep", {}).get("data", {})
    if sw.get("points"):
        with open(os.path.join(data, "sweep.dat"), "w") as f:
            f.write("kib mbps ratio rss_mib bound_mib restore_s cold50 cold99 cached50\n")
            for p in sw["points"]:
                vals = [p["block"] / KiB, p["mbps"], p["ratio"], p["rss_net"] / MiB, p["rss_bound"] / MiB, p["restore_s"],
                        p.get("cold_p50_ms"), p.get("cold_p99_ms"), p.get("cached_p50_ms")]
                f.write(" ".join("NaN" if v is None else f"{v:.4f}" for v in vals) + "\n")
        has_lat = any(p.get("cold_p50_ms") is not None for p in sw["points"])
        lat = (f"""set title 'random 4 KiB read through the mount (ms)'
set logscale y
plot '{data}/sweep.dat' using 1:7 with linespoints lw 2 title 'cold p50', '' using 1:8 with linespoints lw 2 title 'cold p99', '' using 1:9 with linespoints lw 2 title 'cached p50'
""" if has_lat else """set title 'random 4 KiB read through the mount'
set label 1 'skipped: hbb mount not available' at graph 0.5,0.5 center
unset ytics
set yrange [0:1]
plot 2 notitle
""")
        gnuplot(f"""set terminal pngcairo size 1200,850 font 'DejaVu Sans,10'
set output '{out}/bench-sweep.png'
set multiplot layout 2,2 title 'hbb block-size sweep on K (x: block size in KiB, log scale)'
set logscale x 2
set grid lc rgb '#dddddd'
set key top left
set xlabel 'block KiB'
set title 'snapshot throughput (MB/s of input) and restore time'
set ytics nomirror
set y2tics
set ylabel 'MB/s'
set y2label 'restore s'
plot '{data}/sweep.dat' using 1:2 with linespoints lw 2 title 'snapshot MB/s', '' using 1:6 axes x1y2 with linespoints lw 2 title 'restore s (right)'
unset y2tics
unset y2label
set ytics mirror
set ylabel ''
set title 'compression ratio'
plot '{data}/sweep.dat' using 1:3 with linespoints lw 2 title 'ratio'
set title 'snapshot peak RSS (MiB)'
set key top left
plot '{data}/sweep.dat' using 1:4 with linespoints lw 2 title 'peak RSS − baseline', '' using 1:5 with lines dt 2 lw 2 title '(2×threads+4)×block + index'
{lat}unset multiplot
""", data)
    sc = R.get("scale", {}).get("data", {})
    if sc.get("points"):
        with open(os.path.join(data, "scale.dat"), "w") as f:
            f.write("files hbb tar squashfs borg restic\n")
            for p in sc["points"]:
                vals = [p.get(t, {}).get("wall") for t in ("hbb", "tar+zstd", "squashfs", "borg", "restic")]
                f.write(f"{p['files']} " + " ".join("NaN" if v is None else f"{v:.4f}" for v in vals) + "\n")
        gnuplot(head + f"""set output '{out}/bench-scale.png'
set title 'Snapshot of n small files (log-log, lower is better)'
set logscale xy
set xlabel 'files'
set ylabel 'seconds'
plot '{data}/scale.dat' using 1:2 with linespoints lw 2 title 'hbb', '' using 1:3 with linespoints lw 2 title 'tar | zstd -T0 -3', '' using 1:4 with linespoints lw 2 title 'mksquashfs', '' using 1:5 with linespoints lw 2 title 'borg', '' using 1:6 with linespoints lw 2 title 'restic'
""", data)


# ==================================================================== main

def on_term(*_):
    raise KeyboardInterrupt

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen-small")
    g.add_argument("dir")
    g.add_argument("n", type=int)
    for name in ("run", "report"):
        r = sub.add_parser(name)
        r.add_argument("--hbb")
        r.add_argument("--mode", choices=["quick", "full"], default="full")
        r.add_argument("--reps", type=int, default=3)
        r.add_argument("--cache", required=True)
        r.add_argument("--work")
        r.add_argument("--out", required=True)
        r.add_argument("--root", default=os.getcwd())
        r.add_argument("--K")
        r.add_argument("--V")
        r.add_argument("--L")
        r.add_argument("--scale", default="")
        r.add_argument("--sweep", default="")
        r.add_argument("--only", default=" ".join(FIGURES))
    a = ap.parse_args()
    for k in ("out", "cache", "work", "root"):
        if getattr(a, k, None):
            setattr(a, k, os.path.abspath(getattr(a, k)))
    if a.cmd == "gen-small":
        gen_small(a.dir, a.n)
        return 0
    results = os.path.join(a.cache, f"results-{a.mode}")
    if a.cmd == "run":
        b = Bench(a)
        # SIGTERM becomes an exception, so every open mount's __exit__ runs.
        signal.signal(signal.SIGTERM, on_term)
        meta = b.meta()
        meta["hbb_mount"] = bool(b.hbb_mount)
        with open(os.path.join(results, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        failed = []
        for fig in FIGURES:
            if fig not in b.only:
                continue
            print(f"\n== figure: {fig}  [{now()}]", flush=True)
            t0 = time.monotonic()
            try:
                getattr(b, f"fig_{fig}")()
            except KeyboardInterrupt:
                print(f"\n   interrupted during {fig}; mounts unmounted", flush=True)
                return 130
            except (RuntimeError, MountError, OSError, subprocess.SubprocessError) as e:
                print(f"   FAILED: {e}", flush=True)
                failed.append(fig)
            took = time.monotonic() - t0
            print(f"   ({fig}: {took:.0f} s)", flush=True)
            f = os.path.join(results, f"{fig}.json")
            if fig not in failed and os.path.exists(f):
                with open(f) as fh:
                    saved = json.load(fh)
                saved["seconds"] = took
                with open(f, "w") as fh:
                    json.dump(saved, fh, indent=1)
    plots(results, a.out)
    render(results, a.out, a.mode)
    print(f"\nreport: {os.path.join(a.out, 'BENCHMARKS.md')}")
    if a.cmd == "run" and failed:
        print(f"figures that failed: {' '.join(failed)} (log: {b.logfile})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
