//! The network test harness itself (tests/common/net.rs): namespaces on a
//! bridge, an sshd in each, ssh between them, cutting and restoring links.

mod common;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::net::Net;

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        o.status,
        out(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    out(&o)
}

fn netns_list() -> String {
    out(&std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap())
}

#[test]
fn hosts_ssh_env_cut_restore_teardown() {
    let extra = "two  words \"quoted\" $dollar \\back 'single' #hash";
    let t = Instant::now();
    let net = Net::with_env(
        &["a", "b"],
        &[("HBB_REMOTE_PATH", "/opt/hbb dir/hbb"), ("HBB_X", extra)],
    );
    eprintln!("up after {:?}", t.elapsed());
    let (a, b) = (net.host("a"), net.host("b"));
    let names = [a.ns.clone(), b.ns.clone()];
    assert_ne!(a.ip, b.ip);
    let listed = netns_list();
    for ns in &names {
        assert!(
            listed.contains(ns.as_str()),
            "{ns} not in `ip netns list`:\n{listed}"
        );
    }

    // Root namespace -> a: runs there and sees a's address.
    let addrs = ok(
        net.ssh("a").args(["ip", "-4", "addr"]).output().unwrap(),
        "ssh a ip addr",
    );
    assert!(addrs.contains(&format!("inet {}/24", a.ip)), "{addrs}");
    assert!(!addrs.contains(&net.master_ip().to_string()), "{addrs}");

    // Same through the HBB_RSH string, the way hbb will use it.
    let rsh = net.rsh();
    let mut words = rsh.split_whitespace();
    let mut c = std::process::Command::new(words.next().unwrap());
    c.args(words)
        .arg(format!("root@{}", b.ip))
        .arg("hostname -I");
    assert!(ok(c.output().unwrap(), "rsh b hostname").contains(&b.ip));

    // a (its namespace) -> b over the bridge, with the test's key; the
    // session on b has the environment sshd_config gives.
    let script = format!("$HBB_RSH root@{} 'env; echo \"X=[$HBB_X]\"'", b.ip);
    let env = ok(
        net.command_on("a", "sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap(),
        "a->b",
    );
    assert!(env.contains(&format!("HBB_RSH={rsh}\n")), "{env}");
    assert!(env.contains("HBB_REMOTE_PATH=/opt/hbb dir/hbb\n"), "{env}");
    assert!(env.contains(&format!("X=[{extra}]")), "{env}");
    assert!(
        env.contains(&format!("SSH_CONNECTION={} ", a.ip)),
        "came from a: {env}"
    );
    assert!(env.contains("PATH=") && env.contains("/usr/sbin"), "{env}");

    // A session on a hops on to b using only what sshd gave it (HBB_RSH).
    let hop = format!(
        "$HBB_RSH root@{} 'echo hop-$HBB_REMOTE_PATH; ip -4 -o addr show eth0'",
        b.ip
    );
    let hop = ok(net.ssh("a").arg(hop).output().unwrap(), "root->a->b");
    assert!(
        hop.contains("hop-/opt/hbb dir/hbb") && hop.contains(&b.ip),
        "{hop}"
    );
    // And b back to the master.
    let back = format!("$HBB_RSH root@{} true; echo rc=$?", net.master_ip());
    let back = ok(net.ssh("b").arg(back).output().unwrap(), "b->master");
    assert!(
        back.contains("rc=255"),
        "no sshd on the master, but it is reachable: {back}"
    );

    // An ssh session to b that is open across a cut notices it (ServerAlive).
    let mut long = net
        .ssh("b")
        .arg("sleep 60")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    net.cut("b");
    let t0 = Instant::now();
    // New logins to b, from the root namespace and from a, at the same time.
    let mut from_root = net
        .ssh("b")
        .arg("true")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut from_a = net
        .command_on("a", "sh")
        .arg("-c")
        .arg(format!("exec $HBB_RSH root@{} true", b.ip))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // a itself is still fine.
    ok(net.ssh("a").arg("true").output().unwrap(), "a during cut");
    for (what, child) in [
        ("new ssh root->b", &mut from_root),
        ("new ssh a->b", &mut from_a),
        ("open session root->b", &mut long),
    ] {
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "{what}: still running after the cut"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!st.success(), "{what} worked across a cut");
        eprintln!("cut: {what} failed after {:?} ({st})", t0.elapsed());
    }

    eprintln!("cut checks done at {:?}", t.elapsed());
    net.restore("b");
    ok(
        net.ssh("b").arg("true").output().unwrap(),
        "b after restore",
    );

    // limit/unlimit take (the rate is not measured here).
    net.limit("b", "100mbit");
    ok(net.ssh("b").arg("true").output().unwrap(), "b limited");
    net.unlimit("b");
    net.unlimit("b");

    let dir = net.dir().to_path_buf();
    eprintln!("dropping at {:?}", t.elapsed());
    drop(net);
    eprintln!("dropped at {:?}", t.elapsed());
    let listed = netns_list();
    for ns in &names {
        assert!(
            !listed.contains(ns.as_str()),
            "{ns} still in `ip netns list`:\n{listed}"
        );
    }
    assert!(!dir.exists(), "{} is still there", dir.display());
}

#[test]
fn two_nets_at_once_and_teardown_on_panic() {
    let n1 = Net::new(&["x"]);
    let n2 = Net::new(&["x"]);
    assert_ne!(n1.host("x").ns, n2.host("x").ns);
    assert_ne!(n1.host("x").ip, n2.host("x").ip);
    let o1 = ok(
        n1.ssh("x")
            .args(["ip", "-4", "-o", "addr"])
            .output()
            .unwrap(),
        "n1",
    );
    let o2 = ok(
        n2.ssh("x")
            .args(["ip", "-4", "-o", "addr"])
            .output()
            .unwrap(),
        "n2",
    );
    assert!(
        o1.contains(&n1.host("x").ip) && !o1.contains(&n2.host("x").ip),
        "{o1}"
    );
    assert!(o2.contains(&n2.host("x").ip), "{o2}");
    // Separate subnets: n1's host cannot reach n2's.
    let cross = format!("$HBB_RSH -o ConnectTimeout=1 root@{} true", n2.host("x").ip);
    assert!(!n1.ssh("x").arg(cross).output().unwrap().status.success());

    // A panicking test still tears down.
    let ns = n2.host("x").ns.clone();
    let r = std::panic::catch_unwind(move || {
        let _n = n2;
        panic!("on purpose");
    });
    assert!(r.is_err());
    assert!(
        !netns_list().contains(ns.as_str()),
        "{ns} left behind after a panic"
    );
    drop(n1);
}
