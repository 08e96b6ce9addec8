//! `braid-proxy run`: its settings, read from the environment before anything starts, and the
//! runtime that carries the pod's traffic until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use braid_sidecar::{ADMIN_PORT, AppProbes, INBOUND_PORT, OUTBOUND_PORT, env};

use crate::admin;
use crate::listener::{self, inbound, outbound};
use crate::state::context::{Context, close_idle_connections, forget_removed_endpoints};
use crate::state::{drain, reload};

/// Settings of `run`, all read from the environment before anything starts.
pub struct RunSettings {
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

/// The settings from the environment (`var` looks a variable up); every bad variable is
/// reported, by name.
pub fn settings(var: impl Fn(&str) -> Option<String>) -> Result<RunSettings, Vec<String>> {
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

fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    listener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Runs the proxy on one thread (a sidecar should take one core at most) until SIGTERM, then
/// stops accepting and lets open connections finish for up to the drain time.
pub fn run(settings: RunSettings) -> Result<(), String> {
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
            .and_then(|limits| listener::descriptor_limit(&limits))
            .unwrap_or(u64::MAX);
        let context = Context::with_listeners(settings.detect_timeout, own_ports, descriptor_limit);
        tracing::info!(
            "open-file limit {descriptor_limit}: at most {} connections per listener",
            listener::connection_cap(context.limits().max_connections, descriptor_limit)
        );
        let admin_listener = bind(settings.admin_addr)?;
        let inbound_listener = bind(settings.inbound_addr)?;
        let outbound_listener = bind(settings.outbound_addr)?;
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
        let deadline = tokio::time::Instant::now() + settings.drain;
        drain(&context, &inbound, deadline).await;
        outbound.abort();
        tracing::info!(
            "stopped, {} connections still open",
            context.metrics.open_connections()
        );
        Ok(())
    })
}

/// The end of the pod ([`crate::state::drain`]), until `deadline`: connections are told to go
/// elsewhere; the inbound listener stops accepting once the application has stopped (a
/// caller's connection is refused from then on, and goes to another endpoint); in-flight
/// requests finish while the proxy waits out the deadline.
async fn drain(
    context: &Context,
    inbound: &tokio::task::JoinHandle<()>,
    deadline: tokio::time::Instant,
) {
    context.drain.start();
    let app_ports = context.drain.app_ports();
    let patience = Duration::from_millis(100);
    while tokio::time::Instant::now() < deadline
        && drain::application_listens(&app_ports, patience).await
    {
        tokio::time::sleep(patience).await;
    }
    inbound.abort();
    tracing::info!(
        "draining: the application has stopped; {} connections open",
        context.metrics.open_connections()
    );
    // In-flight requests finish meanwhile. The proxy stays to the end of the drain time even
    // when they are done: while it lives the pod keeps its IP, so a caller whose endpoint list
    // still names the pod is refused at once (its connection reset) and goes elsewhere, rather
    // than waiting out a connect timeout on an address that no longer answers.
    tokio::time::sleep_until(deadline).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_settings_default_and_report_a_bad_variable_by_name() {
        let settings = super::settings(|_| None)
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
        let errors = super::settings(|name| match name {
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
