//! `braid-proxy init` in a real network namespace, with real iptables (needs root; run by
//! `make netns-test`). The namespace this test creates has only loopback and a veth pair whose
//! both ends are inside it, so no packet can leave it. The test re-runs its own binary inside the namespace as a helper
//! (`BRAID_NETNS_HELPER=1`), which opens real sockets there.

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::Duration;

const TARGET: &str = "10.250.0.1:80";

struct Netns(String);

impl Netns {
    fn create() -> Self {
        let name = format!("braid-init-test-{}", std::process::id());
        let netns = Self(name);
        netns.ip(&["netns", "add", &netns.0]);
        for args in [
            vec!["link", "set", "lo", "up"],
            vec![
                "link", "add", "braid-t0", "type", "veth", "peer", "name", "braid-t1",
            ],
            vec!["addr", "add", "10.250.0.2/24", "dev", "braid-t0"],
            vec!["link", "set", "braid-t0", "up"],
            vec!["link", "set", "braid-t1", "up"],
        ] {
            let mut full = vec!["netns", "exec", netns.0.as_str(), "ip"];
            full.extend(args);
            netns.ip(&full);
        }
        netns
    }

    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip").args(args).status().expect("ip runs");
        assert!(status.success(), "ip {} failed", args.join(" "));
    }

    fn run(&self, program: &str, args: &[&str]) -> (bool, String, String) {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.0, program])
            .args(args)
            .output()
            .expect("runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn jumps(saved: &str) -> usize {
    saved
        .lines()
        .filter(|l| l.contains("-j BRAID_INBOUND") || l.contains("-j BRAID_OUTPUT"))
        .count()
}

#[test]
fn init_installs_idempotent_rules_that_redirect_outbound_tcp_but_not_the_proxys_own() {
    if std::env::var_os("BRAID_NETNS_HELPER").is_some() {
        return helper();
    }
    let netns = Netns::create();
    let proxy = env!("CARGO_BIN_EXE_braid-proxy");
    let (ok, _, stderr) = netns.run(proxy, &["init"]);
    assert!(ok, "init failed: {stderr}");
    let (_, saved, _) = netns.run("iptables-save", &["-t", "nat"]);
    for chain in [
        ":BRAID_INBOUND",
        ":BRAID_OUTPUT",
        ":BRAID_IN_REDIRECT",
        ":BRAID_OUT_REDIRECT",
    ] {
        assert!(saved.contains(chain), "{chain} missing:\n{saved}");
    }
    assert!(
        saved.contains("--uid-owner 1337")
            && saved.contains("--to-ports 15001")
            && saved.contains("--to-ports 15006")
    );
    assert_eq!(jumps(&saved), 2);

    let (ok, _, stderr) = netns.run(proxy, &["init"]);
    assert!(ok, "second init failed: {stderr}");
    let (_, again, _) = netns.run("iptables-save", &["-t", "nat"]);
    assert_eq!(
        jumps(&again),
        2,
        "a second run duplicated the jumps:\n{again}"
    );
    let rules = |s: &str| s.lines().filter(|l| l.starts_with("-A")).count();
    assert_eq!(
        rules(&again),
        rules(&saved),
        "a second run changed the rule count"
    );

    let test_binary = std::env::current_exe().expect("test binary");
    let (ok, stdout, stderr) = netns.run(
        "env",
        &[
            "BRAID_NETNS_HELPER=1",
            &test_binary.to_string_lossy(),
            "--exact",
            "init_installs_idempotent_rules_that_redirect_outbound_tcp_but_not_the_proxys_own",
            "--nocapture",
        ],
    );
    assert!(ok, "helper failed: {stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("original destination {TARGET}")),
        "redirect not seen: {stdout}"
    );
    assert!(
        stdout.contains("uid 1337 not redirected"),
        "the proxy's own traffic was redirected: {stdout}"
    );

    let (ok, _, stderr) = netns.run(
        proxy,
        &["init", "--exclude-outbound-ports=http", "--backend=fast"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--exclude-outbound-ports") && stderr.contains("--backend"),
        "every bad flag is reported: {stderr}"
    );
}

/// Inside the namespace: a listener on the outbound port; a connection to TARGET must land on it
/// with TARGET as its original destination; one made as UID 1337 must not.
fn helper() {
    if std::env::var_os("BRAID_NETNS_UID_CHILD").is_some() {
        // As uid 1337: not redirected, so the connection goes out the veth, where nobody answers.
        let target: SocketAddr = TARGET.parse().expect("addr");
        let _ = TcpStream::connect_timeout(&target, Duration::from_millis(700));
        return;
    }
    let listener = TcpListener::bind("0.0.0.0:15001").expect("bind the outbound port");
    let target: SocketAddr = TARGET.parse().expect("addr");
    let _client =
        TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("redirected connect");
    let (accepted, _) = listener.accept().expect("accept");
    let original = socket2::SockRef::from(&accepted)
        .original_dst_v4()
        .expect("SO_ORIGINAL_DST");
    println!(
        "original destination {}",
        original.as_socket().expect("inet")
    );

    listener.set_nonblocking(true).expect("nonblocking");
    let status = Command::new(std::env::current_exe().expect("exe"))
        .args(std::env::args().skip(1))
        .env("BRAID_NETNS_UID_CHILD", "1")
        .uid(1337)
        .gid(1337)
        .status()
        .expect("child as uid 1337");
    assert!(status.success());
    match listener.accept() {
        Ok((mut stream, _)) => {
            let mut buffer = [0u8; 1];
            let _ = stream.read(&mut buffer);
            println!("uid 1337 redirected");
        }
        Err(_) => println!("uid 1337 not redirected"),
    }
}
