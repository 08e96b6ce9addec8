//! Two "pods" on one machine, meshed by braid-proxy (needs root; `make netns-test` runs it).
//!
//! Each pod is a network namespace this test creates, joined by one veth pair and nothing else:
//! no default route, so no packet can leave them. The client pod routes the test's Service range
//! (10.96.0.0/16) onto the veth, as a node would, so that a missing redirect sends packets only
//! into the server namespace, where nothing answers them. In each pod `braid-proxy init` installs
//! the real iptables rules and `braid-proxy run` runs as UID 1337. The server pod runs plain
//! applications (`apps`); the client pod's application is this binary (`client ...`), so every
//! request goes app → iptables → proxy → mTLS → proxy → app. The certificates come from a mesh
//! CA the test makes with rcgen, as the operator does.
//!
//! What it shows: HTTP/1.1, h2c, gRPC unary and streaming, websockets, opaque TCP (client- and
//! server-speaks-first) and passthrough all pass; a capture between the pods sees only TLS for
//! meshed calls; the wrong peer identity is refused; STRICT refuses a caller without a certificate
//! and one from another CA, PERMISSIVE serves plaintext; a weight change 100/0 → 80/20 in the file
//! applies without a restart within ±5 points over 1,000 requests; a corrupt file is refused,
//! counted, and the old config kept; rotating both pods' certificates under load fails nothing.

mod apps;
mod client;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLIENT_IP: &str = "10.251.0.2";
const SERVER_IP: &str = "10.251.0.3";
const ORDER: &str = "spiffe://cluster.local/ns/shop/sa/order";
const PAYMENT: &str = "spiffe://cluster.local/ns/shop/sa/payment";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The mesh CA, and leaves issued by it.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("ca");
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// `(tls.crt, tls.key)` for `spiffe`, valid until the 1st of January of `until_year`.
    fn leaf(&self, spiffe: &str, until_year: i32) -> (String, String) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.subject_alt_names = vec![SanType::URI(spiffe.try_into().expect("uri"))];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_after = rcgen::date_time_ymd(until_year, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// Unix time of 1 January `year` 00:00 UTC.
fn new_year(year: i64) -> i64 {
    let days: i64 = (1970..year)
        .map(|y| {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                366
            } else {
                365
            }
        })
        .sum();
    days * 86_400
}

/// Writes `files` as the kubelet updates a volume: a new timestamp directory, then an atomic
/// `..data` swap; each file is a link through `..data`.
fn publish(dir: &Path, version: u32, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("dir");
    let timestamped = dir.join(format!("..2026_11_26_00_00_{version:02}"));
    std::fs::create_dir(&timestamped).expect("timestamp dir");
    for (name, content) in files {
        std::fs::write(timestamped.join(name), content).expect("write");
    }
    let staging = dir.join("..data_tmp");
    std::os::unix::fs::symlink(timestamped.file_name().expect("name"), &staging).expect("symlink");
    std::fs::rename(&staging, dir.join("..data")).expect("swap ..data");
    for (name, _) in files {
        if !dir.join(name).exists() {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("link");
        }
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect("runs");
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A pod: a network namespace, its directories and its processes.
struct Pod {
    netns: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Pod {
    fn new(role: &str, root: &Path) -> Self {
        let netns = format!("braid-mesh-{role}-{}", std::process::id());
        run("ip", &["netns", "add", &netns]);
        let pod = Self {
            netns,
            dir: root.join(role),
            children: Vec::new(),
        };
        pod.ip(&["link", "set", "lo", "up"]);
        pod
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", self.netns.as_str(), "ip"];
        full.extend(args);
        run("ip", &full);
    }

    fn command(&self, as_proxy: bool, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]);
        if as_proxy {
            command.args(["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"]);
        }
        command.arg(program);
        command
    }

    fn start_proxy(&mut self) {
        let log = std::fs::File::create(self.dir.join("proxy.log")).expect("log");
        let child = self
            .command(true, env!("CARGO_BIN_EXE_braid-proxy"))
            .arg("run")
            .env("BRAID_CONFIG_DIR", self.dir.join("config"))
            .env("BRAID_IDENTITY_DIR", self.dir.join("identity"))
            .stderr(log)
            .spawn()
            .expect("proxy starts");
        self.children.push(child);
    }

    /// Runs a client command of this binary in the pod; its `result:` line.
    fn client(&self, as_proxy: bool, args: &[&str]) -> String {
        let output = self
            .command(
                as_proxy,
                &std::env::current_exe().expect("self").to_string_lossy(),
            )
            .arg("client")
            .args(args)
            .output()
            .expect("client runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("result: "))
            .unwrap_or_else(|| {
                panic!(
                    "client {args:?} printed no result: {stdout}{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
            .replace("\\n", "\n")
    }

    /// GETs an admin path of the pod's proxy.
    fn admin(&self, path: &str) -> String {
        self.client(false, &["plain", "127.0.0.1:15020", path])
    }

    /// The value of one series (`name{labels}`) of the proxy's metrics; -1 when absent.
    fn metric(&self, series: &str) -> f64 {
        self.admin("/metrics")
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                line.rsplit_once(' ')
                    .filter(|(name, _)| name.ends_with(series))
            })
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(-1.0)
    }

    fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn endpoint(port: u16, identity: &str) -> serde_json::Value {
    serde_json::json!({"ip": SERVER_IP, "port": port, "identity": identity})
}

fn destination(
    name: &str,
    cluster_ip: &str,
    port: u16,
    endpoint: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({"name": name, "clusterIps": [cluster_ip],
                       "ports": [{"port": port, "endpoints": [endpoint]}]})
}

/// The client pod's config, with `payment.shop` split `v1`/`v2` by weight.
fn client_config(v1: u32, v2: u32) -> String {
    let mut payment = destination("payment.shop", "10.96.0.10", 80, endpoint(8081, PAYMENT));
    payment["routes"] = serde_json::json!([{"backends": [
        {"destination": "payment-v1.shop", "weight": v1},
        {"destination": "payment-v2.shop", "weight": v2}]}]);
    serde_json::json!({
        "version": 1,
        "workload": {"namespace": "shop", "name": "order", "identity": ORDER},
        "inbound": {"mtlsMode": "PERMISSIVE"},
        "destinations": [
            payment,
            destination("payment-v1.shop", "10.96.0.11", 80, endpoint(8081, PAYMENT)),
            destination("payment-v2.shop", "10.96.0.12", 80, endpoint(8082, PAYMENT)),
            destination("grpc.shop", "10.96.0.20", 9000, endpoint(9000, PAYMENT)),
            destination("ws.shop", "10.96.0.21", 80, endpoint(8090, PAYMENT)),
            destination("echo.shop", "10.96.0.22", 7000, endpoint(7000, PAYMENT)),
            destination("banner.shop", "10.96.0.23", 7001, endpoint(7001, PAYMENT)),
            destination("impostor.shop", "10.96.0.30", 80,
                        serde_json::json!({"ip": SERVER_IP, "port": 8081,
                                           "identity": "spiffe://cluster.local/ns/shop/sa/someone-else"})),
        ]
    })
    .to_string()
}

fn server_config(mode: &str) -> String {
    serde_json::json!({
        "version": 1,
        "workload": {"namespace": "shop", "name": "payment", "identity": PAYMENT},
        "inbound": {"mtlsMode": mode},
    })
    .to_string()
}

fn count(result: &str, key: &str) -> usize {
    result
        .split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("apps") => return runtime().block_on(apps::run()),
        Some("client") => return runtime().block_on(client::run(&args[1..])),
        _ => {}
    }
    assert_eq!(
        run("id", &["-u"]).trim(),
        "0",
        "this test needs root (network namespaces, iptables): run it with `make netns-test`"
    );
    let started = Instant::now();
    let root = std::env::temp_dir().join(format!("braid-mesh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("temp dir");
    let result = std::panic::catch_unwind(|| scenario(&root));
    let _ = std::fs::remove_dir_all(&root);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    println!(
        "mesh: every check passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn scenario(root: &Path) {
    let mut client = Pod::new("client", root);
    let mut server = Pod::new("server", root);
    let (veth_client, veth_server) = (
        format!("bmc{}", std::process::id()),
        format!("bms{}", std::process::id()),
    );
    run(
        "ip",
        &[
            "link",
            "add",
            &veth_client,
            "type",
            "veth",
            "peer",
            "name",
            &veth_server,
        ],
    );
    run("ip", &["link", "set", &veth_client, "netns", &client.netns]);
    run("ip", &["link", "set", &veth_server, "netns", &server.netns]);
    client.ip(&[
        "addr",
        "add",
        &format!("{CLIENT_IP}/24"),
        "dev",
        &veth_client,
    ]);
    client.ip(&["link", "set", &veth_client, "up"]);
    client.ip(&["route", "add", "10.96.0.0/16", "dev", &veth_client]);
    server.ip(&[
        "addr",
        "add",
        &format!("{SERVER_IP}/24"),
        "dev",
        &veth_server,
    ]);
    server.ip(&["link", "set", &veth_server, "up"]);

    let ca = Ca::new();
    let identity = |pod: &Pod, id: &str, year: i32, version: u32| {
        let (cert, key) = ca.leaf(id, year);
        publish(
            &pod.dir.join("identity"),
            version,
            &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca.pem)],
        );
    };
    identity(&client, ORDER, 2030, 1);
    identity(&server, PAYMENT, 2030, 1);
    publish(
        &client.dir.join("config"),
        1,
        &[("proxy.json", &client_config(100, 0))],
    );
    publish(
        &server.dir.join("config"),
        1,
        &[("proxy.json", &server_config("PERMISSIVE"))],
    );

    for pod in [&client, &server] {
        let init = pod
            .command(false, env!("CARGO_BIN_EXE_braid-proxy"))
            .arg("init")
            .output()
            .expect("init runs");
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let apps = server
        .command(
            false,
            &std::env::current_exe().expect("self").to_string_lossy(),
        )
        .arg("apps")
        .spawn()
        .expect("apps start");
    server.children.push(apps);
    client.start_proxy();
    server.start_proxy();
    for pod in [&client, &server] {
        eventually("the proxy to be ready", || {
            pod.admin("/ready").starts_with("HTTP/1.1 200")
        });
    }

    // Every protocol, app to app through both proxies.
    assert_eq!(
        client.client(false, &["http", "10.96.0.11:80", "/hello", "3"]),
        "v1=3"
    );
    let h2 = client.client(false, &["h2", "10.96.0.11:80", "20"]);
    assert!(h2.starts_with("ok=20 sample=v1 /h2/"), "h2c: {h2}");
    assert_eq!(
        client.client(false, &["grpc", "10.96.0.20:9000"]),
        "unary=ok stream=ok"
    );
    assert_eq!(
        client.client(false, &["ws", "10.96.0.21:80"]),
        "upgraded=true echo=true"
    );
    assert_eq!(
        client.client(false, &["tcp", "10.96.0.22:7000"]),
        "banner= echo=true"
    );
    assert_eq!(
        client.client(false, &["tcp", "10.96.0.23:7001", "banner"]),
        "banner=HELLO echo=true",
        "a server-speaks-first protocol must not stall in detection"
    );
    assert_eq!(
        client.client(
            false,
            &["http", &format!("{SERVER_IP}:8082"), "/direct", "1"]
        ),
        "v2=1",
        "a call to a pod IP is meshed too"
    );
    assert_eq!(
        client.client(false, &["tcp", &format!("{SERVER_IP}:7002")]),
        "banner= echo=true",
        "a destination the config does not name passes through"
    );
    let impostor = client.client(false, &["http", "10.96.0.30:80", "/", "1"]);
    assert!(
        impostor.starts_with("status:502:")
            && impostor.contains("expected spiffe://cluster.local/ns/shop/sa/someone-else"),
        "a peer with another identity must be refused: {impostor}"
    );

    // A capture between the pods: meshed bytes are TLS; the plaintext control shows it sees all.
    let pcap = root.join("between-pods.pcap");
    let mut dump = server
        .command(false, "tcpdump")
        .args([
            "-i",
            &veth_server,
            "--immediate-mode",
            "-U",
            "-w",
            &pcap.to_string_lossy(),
            "tcp",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let mut lines = BufReader::new(dump.stderr.take().expect("stderr")).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("listening on"))),
        "tcpdump did not start"
    );
    assert_eq!(
        client.client(
            false,
            &["http", "10.96.0.11:80", "/mesh-secret-marker", "1"]
        ),
        "v1=1"
    );
    let plain = client.client(
        true,
        &[
            "plain",
            &format!("{SERVER_IP}:8081"),
            "/plain-control-marker",
        ],
    );
    assert!(
        plain.starts_with("HTTP/1.1 200"),
        "PERMISSIVE serves plaintext: {plain}"
    );
    std::thread::sleep(Duration::from_millis(300));
    run("kill", &[&dump.id().to_string()]);
    let _ = dump.wait();
    let tail: Vec<String> = lines.map_while(Result::ok).collect();
    let captured = std::fs::read(&pcap).expect("pcap");
    let contains = |needle: &[u8]| captured.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(b"plain-control-marker"),
        "the capture missed the plaintext control ({} bytes, {tail:?}): {}",
        captured.len(),
        run("tcpdump", &["-nr", &pcap.to_string_lossy()])
    );
    assert!(
        !contains(b"mesh-secret-marker"),
        "meshed bytes crossed in the clear"
    );
    assert!(
        contains(&[0x17, 0x03, 0x03]),
        "no TLS application data between the pods"
    );
    let mtls = server.metric("braid_proxy_inbound_connections_total{accepted=\"mtls\"}");
    assert!(mtls >= 1.0, "{mtls}: {}", server.admin("/metrics"));

    // STRICT: no certificate or another CA's is refused; the mesh still works.
    publish(
        &server.dir.join("config"),
        2,
        &[("proxy.json", &server_config("STRICT"))],
    );
    eventually("STRICT in force", || {
        server.admin("/config").contains("\"mtlsMode\":\"STRICT\"")
    });
    assert_eq!(
        client.client(true, &["plain", &format!("{SERVER_IP}:8081"), "/"]),
        "refused",
        "STRICT must refuse a caller without a certificate"
    );
    assert_eq!(
        client.client(false, &["http", "10.96.0.11:80", "/strict", "5"]),
        "v1=5"
    );
    let write_client_identity = |name: &str, cert: &str, key: &str| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        for (file, content) in [
            ("tls.crt", cert),
            ("tls.key", key),
            ("ca.crt", ca.pem.as_str()),
        ] {
            std::fs::write(dir.join(file), content).expect("write");
        }
        dir.to_string_lossy().into_owned()
    };
    let (cert, key) = ca.leaf(ORDER, 2030);
    let ours = write_client_identity("ours", &cert, &key);
    let served = client.client(true, &["tls", &format!("{SERVER_IP}:8081"), &ours]);
    assert!(
        served.starts_with("HTTP/1.1 200"),
        "a mesh certificate is served: {served}"
    );
    let foreign = Ca::new();
    let (cert, key) = foreign.leaf(ORDER, 2030);
    let theirs = write_client_identity("theirs", &cert, &key);
    let refused = client.client(true, &["tls", &format!("{SERVER_IP}:8081"), &theirs]);
    assert!(
        refused.starts_with("refused"),
        "another CA's certificate must be refused: {refused}"
    );
    assert!(server.metric("braid_proxy_inbound_connections_total{accepted=\"refused\"}") >= 2.0);

    // Weights: 100/0, then 80/20 written to the file, on the same running proxy.
    let all_v1 = client.client(false, &["http", "10.96.0.10:80", "/split", "1000"]);
    assert_eq!(all_v1, "v1=1000");
    publish(
        &client.dir.join("config"),
        2,
        &[("proxy.json", &client_config(80, 20))],
    );
    eventually("generation 2", || {
        client.admin("/config").contains("\"generation\":2")
    });
    let split = client.client(false, &["http", "10.96.0.10:80", "/split", "1000"]);
    let v2 = count(&split, "v2");
    assert_eq!(count(&split, "v1") + v2, 1000, "{split}");
    assert!(
        (150..=250).contains(&v2),
        "80/20 off by more than 5 points: {split}"
    );
    println!("mesh: 80/20 split measured {}/{}", 1000 - v2, v2);
    assert!(
        client.children[0].try_wait().expect("status").is_none(),
        "the proxy restarted"
    );

    // A corrupt file is refused whole, counted, and the 80/20 config stays.
    publish(
        &client.dir.join("config"),
        3,
        &[("proxy.json", "{\"version\": 1, \"workload\": ")],
    );
    eventually("the refusal", || {
        client.metric("braid_proxy_config_reload_errors_total") == 1.0
    });
    assert!(client.admin("/config").contains("\"generation\":2"));
    let after = client.client(false, &["http", "10.96.0.10:80", "/after", "200"]);
    assert_eq!(count(&after, "v1") + count(&after, "v2"), 200, "{after}");
    assert!(
        count(&after, "v2") > 0,
        "the old split is still in force: {after}"
    );

    // Rotating both pods' certificates under steady load fails no request.
    let load = client
        .command(
            false,
            &std::env::current_exe().expect("self").to_string_lossy(),
        )
        .args(["client", "load", "10.96.0.11:80", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("load");
    std::thread::sleep(Duration::from_millis(1500));
    identity(&client, ORDER, 2031, 2);
    identity(&server, PAYMENT, 2031, 2);
    let load = load.wait_with_output().expect("load ends");
    let load = String::from_utf8_lossy(&load.stdout);
    let load = load
        .lines()
        .find_map(|l| l.strip_prefix("result: "))
        .unwrap_or_default();
    println!("mesh: load during rotation: {load}");
    assert!(
        load.contains("failed=0 "),
        "requests failed during rotation: {load}"
    );
    assert!(
        count(load, "ok") > 100,
        "too little load to prove anything: {load}"
    );
    for pod in [&client, &server] {
        let expiry = pod.metric("braid_proxy_certificate_expiry_seconds");
        assert_eq!(
            expiry as i64,
            new_year(2031),
            "{} did not load its new certificate",
            pod.netns
        );
    }
    let rotated = client.client(true, &["tls", &format!("{SERVER_IP}:8081"), &ours]);
    assert!(
        rotated.contains(&format!("peer-expiry={}", new_year(2031))),
        "new handshakes must get the new certificate: {rotated}"
    );
    let logs = client.proxy_log() + &server.proxy_log();
    assert!(
        !logs.contains("PRIVATE KEY"),
        "a private key reached the log"
    );
}
