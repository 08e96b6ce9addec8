//! The `braid-proxy` binary.
//!
//! ```text
//! braid-proxy init [--proxy-uid=1337] [--inbound-port=15006] [--outbound-port=15001]
//!                  [--exclude-inbound-ports=P,..] [--exclude-outbound-ports=P,..]
//!                  [--exclude-outbound-cidrs=CIDR,..] [--exclude-uids=U,..]
//!                  [--backend=auto|nft|legacy] [--dry-run]
//! ```
//!
//! `init` installs the redirection in the current network namespace (`--dry-run` prints the
//! `iptables-restore` payload instead). Every bad flag is reported before anything runs; the
//! exit code is then 64.
//!
//! `run` carries the pod's traffic: outbound on `$BRAID_OUTBOUND_ADDR` (default
//! `127.0.0.1:15001`), inbound on `$BRAID_INBOUND_ADDR` (`0.0.0.0:15006`), admin on
//! `$BRAID_ADMIN_ADDR` (`0.0.0.0:15020`). It hot-reloads `$BRAID_CONFIG_DIR/proxy.json`
//! (`/etc/braid/config`) and `$BRAID_IDENTITY_DIR/{tls.crt,tls.key,ca.crt}`
//! (`/etc/braid/identity`). `BRAID_DETECT_TIMEOUT_MS` (250) bounds protocol detection,
//! `BRAID_DRAIN_MS` (5000) the drain on SIGTERM, `BRAID_APP_PROBES` carries the application's HTTP
//! probes (JSON, written by the webhook), `BRAID_LOG` (`info`) filters the log on stderr (a
//! `tracing` filter: a level, or directives such as `warn,braid_proxy=debug`). Every bad variable
//! is reported; the exit code is then 64.
//!
//! `wait-ready` waits until the admin `/ready` answers 200.

use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use braid_proxy::iptables;
use braid_sidecar::{ADMIN_PORT, AppProbes, INBOUND_PORT, OUTBOUND_PORT, env};
use std::time::Duration;

use braid_proxy::context::{Context, close_idle_connections, forget_removed_endpoints};
use braid_proxy::{admin, inbound, init, listen, outbound, reload};

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn init(init: init::Init) -> Result<(), String> {
    let backend = init.backend.unwrap_or_else(|| {
        iptables::detect_backend(
            &output("iptables-legacy-save", &[]),
            &output("iptables-nft-save", &[]),
        )
    });
    let installed = iptables::jumps_installed(&output(backend.save_command(), &["-t", "nat"]));
    let payload = iptables::payload(&init.redirect, installed);
    if init.dry_run {
        print!("{payload}");
        return Ok(());
    }
    let mut child = Command::new(backend.restore_command())
        .arg("--noflush")
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", backend.restore_command()))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(payload.as_bytes())
        .map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!(
            "{} failed ({status}) on:\n{payload}",
            backend.restore_command()
        ));
    }
    eprintln!(
        "braid-proxy init: redirection installed with {} ({})",
        backend.restore_command(),
        if installed { "chains refreshed" } else { "new" }
    );
    Ok(())
}

/// Settings of `run`, all read from the environment before anything starts.
struct RunSettings {
    config_file: PathBuf,
    identity_dir: PathBuf,
    admin_addr: SocketAddr,
    inbound_addr: SocketAddr,
    outbound_addr: SocketAddr,
    detect_timeout: Duration,
    drain: Duration,
    app_probes: AppProbes,
    log: tracing_subscriber::EnvFilter,
}

fn run_settings(var: impl Fn(&str) -> Option<String>) -> Result<RunSettings, Vec<String>> {
    let mut errors = Vec::new();
    let mut addr = |name: &str, default: SocketAddr| match var(name) {
        None => default,
        Some(value) => value.parse().unwrap_or_else(|_| {
            errors.push(format!("{name}={value:?} is not host:port"));
            default
        }),
    };
    let admin_addr = addr(
        env::ADMIN_ADDR,
        SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)),
    );
    let inbound_addr = addr(
        env::INBOUND_ADDR,
        SocketAddr::from(([0, 0, 0, 0], INBOUND_PORT)),
    );
    let outbound_addr = addr(
        env::OUTBOUND_ADDR,
        SocketAddr::from(([127, 0, 0, 1], OUTBOUND_PORT)),
    );
    let mut millis = |name: &str, default: u64| match var(name) {
        None => Duration::from_millis(default),
        Some(value) => value
            .parse()
            .map(Duration::from_millis)
            .unwrap_or_else(|_| {
                errors.push(format!("{name}={value:?} is not a number of milliseconds"));
                Duration::ZERO
            }),
    };
    let detect_timeout = millis(env::DETECT_TIMEOUT_MS, 250);
    let drain = millis(env::DRAIN_MS, 5_000);
    let app_probes = match var(env::APP_PROBES) {
        None => AppProbes::new(),
        Some(json) => braid_sidecar::parse_app_probes(&json).unwrap_or_else(|error| {
            errors.push(error);
            AppProbes::new()
        }),
    };
    let log_filter = var(env::LOG).unwrap_or_else(|| "info".into());
    let log = tracing_subscriber::EnvFilter::try_new(&log_filter).unwrap_or_else(|error| {
        errors.push(format!(
            "{}={log_filter:?} is not a log filter: {error}",
            env::LOG
        ));
        tracing_subscriber::EnvFilter::default()
    });
    let dir =
        |name: &str, default: &str| PathBuf::from(var(name).unwrap_or_else(|| default.into()));
    if errors.is_empty() {
        Ok(RunSettings {
            config_file: dir(env::CONFIG_DIR, "/etc/braid/config").join("proxy.json"),
            identity_dir: dir(env::IDENTITY_DIR, "/etc/braid/identity"),
            admin_addr,
            inbound_addr,
            outbound_addr,
            detect_timeout,
            drain,
            app_probes,
            log,
        })
    } else {
        Err(errors)
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Runs the proxy on one thread (a sidecar should take one core at most) until SIGTERM, then
/// stops accepting and lets open connections finish for up to the drain time.
fn run(settings: RunSettings) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(settings.log)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let own_ports = [
            settings.outbound_addr,
            settings.inbound_addr,
            settings.admin_addr,
        ]
        .map(|addr| addr.port())
        .to_vec();
        let descriptor_limit = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| listen::descriptor_limit(&limits))
            .unwrap_or(u64::MAX);
        let context = Context::with_listeners(settings.detect_timeout, own_ports, descriptor_limit);
        tracing::info!(
            "open-file limit {descriptor_limit}: at most {} connections per listener",
            listen::connection_cap(context.limits().max_connections, descriptor_limit)
        );
        let admin_listener = bind(settings.admin_addr).await?;
        let inbound_listener = bind(settings.inbound_addr).await?;
        let outbound_listener = bind(settings.outbound_addr).await?;
        tokio::spawn(admin::serve(
            admin_listener,
            context.clone(),
            Arc::new(settings.app_probes),
        ));
        tokio::spawn(reload::watch_file(
            settings.config_file,
            context.config.clone(),
        ));
        tokio::spawn(forget_removed_endpoints(context.clone()));
        tokio::spawn(close_idle_connections(context.clone()));
        tokio::spawn(reload::watch_identity(
            settings.identity_dir,
            context.identity.clone(),
        ));
        let inbound = tokio::spawn(inbound::serve(inbound_listener, context.clone()));
        let outbound = tokio::spawn(outbound::serve(outbound_listener, context.clone()));
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        inbound.abort();
        outbound.abort();
        let deadline = tokio::time::Instant::now() + settings.drain;
        while context.metrics.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(
            "stopped, {} connections still open",
            context.metrics.open_connections()
        );
        Ok(())
    })
}

/// `wait-ready`: polls the admin `/ready` until it answers 200 (for the postStart hook of
/// clusters without native sidecars, so that the application starts after the proxy).
fn wait_ready() -> Result<(), String> {
    use std::io::Read as _;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let answer = std::net::TcpStream::connect(("127.0.0.1", iptables::ADMIN_PORT)).and_then(
            |mut stream| {
                stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                stream.write_all(
                    b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok(response)
            },
        );
        if answer.is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err("the proxy was not ready within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => match run_settings(|name| std::env::var(name).ok()) {
            Err(errors) => {
                for error in errors {
                    eprintln!("braid-proxy run: {error}");
                }
                ExitCode::from(64)
            }
            Ok(settings) => match run(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("braid-proxy run: {error}");
                    ExitCode::FAILURE
                }
            },
        },
        Some("wait-ready") => match wait_ready() {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("braid-proxy wait-ready: {error}");
                ExitCode::FAILURE
            }
        },
        Some("init") => match init::parse(&args[1..]) {
            Err(errors) => {
                for error in errors {
                    eprintln!("braid-proxy init: {error}");
                }
                ExitCode::from(64)
            }
            Ok(settings) => match init(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("braid-proxy init: {error}");
                    ExitCode::FAILURE
                }
            },
        },
        _ => {
            eprintln!("usage: braid-proxy init [flags] | braid-proxy run | braid-proxy wait-ready");
            ExitCode::from(64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_settings_default_and_report_a_bad_variable_by_name() {
        let settings = run_settings(|_| None)
            .map_err(|e| e.join("; "))
            .expect("defaults are valid");
        assert_eq!(
            settings.config_file,
            PathBuf::from("/etc/braid/config/proxy.json")
        );
        assert_eq!(settings.admin_addr, SocketAddr::from(([0, 0, 0, 0], 15020)));
        assert_eq!(
            settings.outbound_addr,
            SocketAddr::from(([127, 0, 0, 1], 15001))
        );
        assert_eq!(settings.detect_timeout, Duration::from_millis(250));
        let errors = run_settings(|name| match name {
            "BRAID_ADMIN_ADDR" => Some("everywhere".into()),
            "BRAID_DRAIN_MS" => Some("5s".into()),
            "BRAID_APP_PROBES" => Some("[".into()),
            "BRAID_LOG" => Some("braid_proxy=loud".into()),
            _ => None,
        })
        .err()
        .expect("refused");
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors[3].starts_with("BRAID_LOG=\"braid_proxy=loud\" is not a log filter"),
            "{errors:?}"
        );
        assert_eq!(
            errors[0],
            "BRAID_ADMIN_ADDR=\"everywhere\" is not host:port"
        );
        assert!(
            errors[1].starts_with("BRAID_DRAIN_MS") && errors[2].starts_with("BRAID_APP_PROBES")
        );
    }
}
