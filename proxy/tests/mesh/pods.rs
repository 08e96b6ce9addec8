//! Network-namespace "pods" for the proxy's integration test and benchmark: each a namespace this
//! process creates (deleted on drop), with its own directories and processes, joined by one veth
//! pair and nothing else, so that no packet can leave them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The client pod's address.
pub const CLIENT_IP: &str = "10.251.0.2";
/// The server pod's address.
pub const SERVER_IP: &str = "10.251.0.3";

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The mesh CA, and leaves issued by it.
pub struct Ca {
    pub pem: String,
    pub issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub fn new() -> Self {
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
    pub fn leaf(&self, spiffe: &str, until_year: i32) -> (String, String) {
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

    /// Writes a leaf for `spiffe` (valid until 2030) and this CA to `dir`, as a caller's
    /// `tls.crt`, `tls.key` and `ca.crt`; the directory, for the client's `tls` command.
    pub fn identity_dir(&self, dir: &Path, spiffe: &str) -> String {
        let (cert, key) = self.leaf(spiffe, 2030);
        std::fs::create_dir_all(dir).expect("dir");
        for (file, content) in [
            ("tls.crt", cert.as_str()),
            ("tls.key", &key),
            ("ca.crt", &self.pem),
        ] {
            std::fs::write(dir.join(file), content).expect("write");
        }
        dir.to_string_lossy().into_owned()
    }
}

/// Unix time of 1 January `year` 00:00 UTC.
pub fn new_year(year: i64) -> i64 {
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
pub fn publish(dir: &Path, version: u32, files: &[(&str, &str)]) {
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

pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect("runs");
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `result:` line a client command printed (multi-line results are printed escaped).
fn result_line(output: &Output) -> Option<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("result: "))
        .map(|result| result.replace("\\n", "\n"))
}

/// The `result:` line of a client command started with [`Pod::spawn_client`], once it ends
/// (empty when it printed none).
pub fn finished(client: Child) -> String {
    let output = client.wait_with_output().expect("the client ends");
    result_line(&output).unwrap_or_default()
}

/// A pod: a network namespace, its directories and its processes.
pub struct Pod {
    pub netns: String,
    pub dir: PathBuf,
    pub children: Vec<Child>,
}

impl Pod {
    pub fn new(role: &str, root: &Path) -> Self {
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

    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", self.netns.as_str(), "ip"];
        full.extend(args);
        run("ip", &full);
    }

    pub fn command(&self, as_proxy: bool, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]);
        if as_proxy {
            command.args(["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"]);
        }
        command.arg(program);
        command
    }

    pub fn start_proxy(&mut self) {
        self.start_proxy_binary(env!("CARGO_BIN_EXE_braid-proxy"));
    }

    /// Starts `binary run` as the pod's proxy (a build of braid-proxy: this one's, or another).
    pub fn start_proxy_binary(&mut self, binary: &str) {
        let log = std::fs::File::create(self.dir.join("proxy.log")).expect("log");
        let child = self
            .command(true, binary)
            .arg("run")
            .env("BRAID_CONFIG_DIR", self.dir.join("config"))
            .env("BRAID_IDENTITY_DIR", self.dir.join("identity"))
            .stderr(log)
            .spawn()
            .expect("proxy starts");
        self.children.push(child);
    }

    /// A client command of this binary in the pod (`client <args>`), not started yet.
    fn client_command(&self, as_proxy: bool, args: &[&str]) -> Command {
        let exe = std::env::current_exe().expect("self");
        let mut command = self.command(as_proxy, &exe.to_string_lossy());
        command.arg("client").args(args);
        command
    }

    /// Runs a client command of this binary in the pod; its `result:` line.
    pub fn client(&self, as_proxy: bool, args: &[&str]) -> String {
        let output = self
            .client_command(as_proxy, args)
            .output()
            .expect("client runs");
        result_line(&output).unwrap_or_else(|| {
            panic!(
                "client {args:?} printed no result: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// Starts a client command of this binary in the pod, to run while the test goes on;
    /// [`finished`] waits for its `result:` line.
    pub fn spawn_client(&self, as_proxy: bool, args: &[&str]) -> Child {
        self.client_command(as_proxy, args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("client starts")
    }

    /// GETs an admin path of the pod's proxy with curl: the status line, headers and body.
    pub fn admin(&self, path: &str) -> String {
        let output = self
            .command(false, "curl")
            .args(["-s", "-i", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:15020{path}"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The value of one series (`name{labels}`) of the proxy's metrics; -1 when absent.
    pub fn metric(&self, series: &str) -> f64 {
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

    pub fn proxy_log(&self) -> String {
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

pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two pods joined by a veth pair; the client routes the test Service range (10.96.0.0/16) onto
/// it, as a node would, so that a missing redirect sends packets only into the server namespace.
/// Returns the pods and the server side's interface name (for captures).
pub fn pair(root: &Path) -> (Pod, Pod, String) {
    let client = Pod::new("client", root);
    let server = Pod::new("server", root);
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
    (client, server, veth_server)
}

/// Runs `braid-proxy init` with `flags` in the pod.
pub fn init(pod: &Pod, proxy: &str, flags: &[&str]) {
    let init = pod
        .command(false, proxy)
        .arg("init")
        .args(flags)
        .output()
        .expect("init runs");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
}
