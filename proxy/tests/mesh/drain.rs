//! The end of a pod (issue 14), last in the scenario because it ends the server pod's proxy.
//! The server pod's application on 8110 (`drain-app`) is a well-behaved service: on SIGTERM it
//! stops accepting and finishes what it has. The test stops the pod in the order a kubelet
//! without native sidecars does (proxy and application told at once; here the proxy first), and
//! shows that:
//! - from SIGTERM on, the proxy tells callers to go elsewhere: an idle keep-alive connection is
//!   closed, a request under way finishes and its response says `connection: close`, and a new
//!   connection is still served (with `connection: close`) while the application listens;
//! - once the application has stopped, new connections are refused (the proxy stays to the end
//!   of its drain time, so that the pod's address keeps refusing rather than vanishing);
//! - a request whose destination's only endpoint is gone waits for the config that lists its
//!   successor (a rolling update's new pod) rather than failing;
//! - a client meanwhile calling a destination with that pod and another endpoint (the spare, on
//!   8111 in the client pod) sees every request succeed, GETs and POSTs alike: connections
//!   told to close, and a stopped application's refusals (`braid-proxy-unprocessed`), send its
//!   requests to the spare.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::pods::{CLIENT_IP, Pod, SERVER_IP, publish, run};

/// The drain test's application port (in the server pod; the spare listens on 8111 in the
/// client pod).
pub const APP_PORT: u16 = 8110;

/// `drain-app <port>`: answers `GET /slow` after a second and anything else at once, with the
/// port; on SIGTERM stops accepting, closes idle connections, finishes requests under way.
pub async fn app(port: &str) {
    let port: u16 = port.parse().expect("port");
    let listener = TcpListener::bind(("0.0.0.0", port)).await.expect("bind");
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    let (stopping, _) = tokio::sync::watch::channel(false);
    let open = Arc::new(AtomicU64::new(0));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = terminate.recv() => break,
        };
        let (mut stop, open) = (stopping.subscribe(), open.clone());
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: Request<hyper::body::Incoming>| async move {
                    let slow = request.uri().path() == "/slow";
                    let _ = request.into_body().collect().await;
                    if slow {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        format!("port {port}"),
                    ))))
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    stopping.send_replace(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn open(target: SocketAddr) -> std::io::Result<(Sender, tokio::task::JoinHandle<()>)> {
    let stream = TcpStream::connect(target).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, task))
}

/// One request: `<status>` and `,close` when the response says `connection: close`.
async fn ask(sender: &mut Sender, method: &str, path: &str) -> String {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "drain.shop")
        .body(Full::new(Bytes::from(if method == "POST" {
            "order"
        } else {
            ""
        })))
        .expect("request");
    match sender.send_request(request).await {
        Ok(response) => {
            let close = response
                .headers()
                .get("connection")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            format!("{status}{}", if close { ",close" } else { "" })
        }
        Err(error) => format!("error:{error}"),
    }
}

/// `drain-probe <server app>`, from the client pod without redirection, straight to the server
/// pod's proxy; the test sends SIGTERM to that proxy 300 ms after this starts and to the
/// application 1.8 s after. What each connection saw.
pub async fn probe(target: SocketAddr) -> String {
    let started = Instant::now();
    let at = |ms: u64| tokio::time::sleep_until((started + Duration::from_millis(ms)).into());
    let (mut idle, idle_task) = open(target).await.expect("connect");
    let first = ask(&mut idle, "GET", "/").await;
    let (mut slow, _slow_task) = open(target).await.expect("connect");
    let slow = tokio::spawn(async move { ask(&mut slow, "GET", "/slow").await });
    // The idle connection is closed once the drain starts.
    let idle_closed =
        tokio::time::timeout_at((started + Duration::from_millis(1_200)).into(), idle_task)
            .await
            .is_ok();
    let slow = slow.await.unwrap_or_else(|e| format!("panic:{e}"));
    at(1_200).await;
    let during = match open(target).await {
        Ok((mut sender, _)) => ask(&mut sender, "GET", "/").await,
        Err(error) => format!("error:{error}"),
    };
    at(2_600).await;
    let after = match TcpStream::connect(target).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused".to_string(),
        Err(e) => format!("error:{e}"),
        Ok(_) => "accepted".into(),
    };
    format!(
        "first={first} idle={} slow={slow} during={during} after={after}",
        if idle_closed { "closed" } else { "open" }
    )
}

/// `drain-load <target> <seconds>`: four clients, each alternating GETs and POSTs on a
/// keep-alive connection (reopened when the proxy closes it): `<outcome>=<n> …`, the outcome a
/// status or `error`, and `from-<port>=<n>` by answering application.
pub async fn load(target: SocketAddr, seconds: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            tokio::spawn(async move {
                let mut counts = BTreeMap::<String, usize>::new();
                let mut sender: Option<Sender> = None;
                let mut n = worker;
                while Instant::now() < deadline {
                    if sender.as_ref().is_none_or(|s| s.is_closed()) {
                        sender = open(target).await.ok().map(|(s, _)| s);
                    }
                    let Some(s) = sender.as_mut() else {
                        *counts.entry("error".into()).or_default() += 1;
                        continue;
                    };
                    let method = if n % 2 == 0 { "GET" } else { "POST" };
                    n += 1;
                    let request = Request::builder()
                        .method(method)
                        .uri("/")
                        .header("host", "drain.shop")
                        .body(Full::new(Bytes::from_static(b"order")))
                        .expect("request");
                    let key = match s.send_request(request).await {
                        Ok(response) => {
                            let status = response.status().as_u16().to_string();
                            let body = response.into_body().collect().await;
                            if let Ok(body) = body {
                                let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                                if let Some(port) = text.strip_prefix("port ") {
                                    *counts.entry(format!("from-{port}")).or_default() += 1;
                                }
                            }
                            format!("{method}-{status}")
                        }
                        Err(_) => {
                            sender = None;
                            format!("{method}-error")
                        }
                    };
                    *counts.entry(key).or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut all = BTreeMap::<String, usize>::new();
    for worker in workers {
        for (key, n) in worker.await.unwrap_or_default() {
            *all.entry(key).or_default() += n;
        }
    }
    let counts: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
    counts.join(" ")
}

/// The client commands of this module, if `command` is one.
pub async fn command(command: &str, arg: impl Fn(usize) -> String) -> Option<String> {
    let addr = |i: usize| arg(i).parse::<SocketAddr>().expect("host:port");
    Some(match command {
        "drain-probe" => probe(addr(1)).await,
        "drain-load" => load(addr(1), arg(2).parse().expect("seconds")).await,
        _ => return None,
    })
}

/// Runs the checks; the server pod's proxy has stopped when this returns.
pub fn check(client: &mut Pod, server: &mut Pod, server_config: &str, version: u32) {
    let me = std::env::current_exe().expect("self");
    let me = me.to_string_lossy();
    // Plaintext callers are served (the probe calls the server's proxy without mTLS).
    let generation = || server.metric("braid_proxy_config_generation");
    let before = generation();
    publish(
        &server.dir.join("config"),
        version,
        &[("proxy.json", server_config)],
    );
    crate::eventually("the server's PERMISSIVE config", || generation() > before);
    let app = server
        .command(false, &me)
        .args(["drain-app", &APP_PORT.to_string()])
        .spawn()
        .expect("drain app starts");
    server.children.push(app);
    let spare = client
        .command(false, &me)
        .args(["drain-app", "8111"])
        .spawn()
        .expect("spare starts");
    client.children.push(spare);
    let target = format!("{SERVER_IP}:{APP_PORT}");
    let spare = format!("{CLIENT_IP}:8111");
    for app in [&target, &spare] {
        crate::eventually("the drain apps", || {
            client.client(true, &["http", app, "/", "1"]) == "port=1"
        });
    }

    let spawn = |as_proxy: bool, args: &[&str]| {
        client
            .command(as_proxy, &me)
            .arg("client")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("client starts")
    };
    let result = |child: std::process::Child| {
        let output = child.wait_with_output().expect("client ends");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("result: "))
            .unwrap_or_default()
            .to_string()
    };

    // A destination whose only endpoint's application is gone: the request waits for the
    // config that lists its successor (a rolling update's new pod) instead of failing.
    let waiting = spawn(false, &["calls", "GET", "10.96.1.13:80", "/", "1", "0"]);
    std::thread::sleep(Duration::from_millis(500));
    let mut config: serde_json::Value =
        serde_json::from_str(&crate::configs::client_config(100, 0)).expect("json");
    for destination in config["destinations"].as_array_mut().expect("destinations") {
        if destination["name"] == "successor.shop" {
            destination["ports"][0]["endpoints"][0]["port"] = 8105.into();
        }
    }
    publish(
        &client.dir.join("config"),
        version + 1,
        &[("proxy.json", &config.to_string())],
    );
    assert_eq!(
        result(waiting),
        "200=1",
        "the request waited for its successor"
    );

    let load = spawn(false, &["drain-load", "10.96.1.20:80", "4"]);
    std::thread::sleep(Duration::from_millis(500));
    let probe = spawn(true, &["drain-probe", &target]);
    let proxy = server
        .children
        .iter()
        .position(|child| {
            std::fs::read(format!("/proc/{}/cmdline", child.id()))
                .is_ok_and(|cmdline| cmdline.ends_with(b"braid-proxy\0run\0"))
        })
        .expect("the server's proxy");
    std::thread::sleep(Duration::from_millis(300));
    run("kill", &["-TERM", &server.children[proxy].id().to_string()]);
    std::thread::sleep(Duration::from_millis(1_500));
    // The pod's applications stop: the drain app, and every other one the scenario started in
    // the server pod (the proxy keeps accepting while any of the ports it served listens).
    for child in &server.children {
        if child.id() != server.children[proxy].id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }
    let app_stopped = Instant::now();
    let mut exited = None;
    while app_stopped.elapsed() < Duration::from_secs(6) {
        if server.children[proxy].try_wait().expect("status").is_some() {
            exited = Some(app_stopped.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (probe, load) = (result(probe), result(load));
    println!("drain: probe {probe}; load {load}; proxy exited {exited:?} after its application");
    assert_eq!(
        probe, "first=200 idle=closed slow=200,close during=200,close after=refused",
        "the draining proxy's connections"
    );
    // It stays to the end of its drain time (5 s from its SIGTERM, 1.5 s before the
    // application's), refusing connections meanwhile, and not longer.
    let exited = exited.expect("the proxy exits at the end of its drain time");
    assert!(
        exited > Duration::from_secs(3) && exited < Duration::from_millis(4_500),
        "exited {exited:?} after its application (its drain time ended 3.5 s after it)"
    );
    let count = |key: &str| crate::count(&load, key);
    for failure in [
        "GET-error",
        "POST-error",
        "GET-502",
        "POST-502",
        "GET-503",
        "POST-503",
    ] {
        assert_eq!(count(failure), 0, "{failure} during the drain: {load}");
    }
    assert!(
        count("GET-200") > 20 && count("POST-200") > 20,
        "too little load to show anything: {load}"
    );
    assert!(
        count(&format!("from-{APP_PORT}")) > 0 && count("from-8111") > 0,
        "both endpoints served: {load}"
    );
    assert!(
        server
            .proxy_log()
            .contains("draining: the application has stopped"),
        "{}",
        server.proxy_log()
    );
}
