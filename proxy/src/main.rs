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
//! `run` loads and hot-reloads `$BRAID_CONFIG_DIR/proxy.json` (default `/etc/braid/config`) and
//! serves the admin endpoints on `$BRAID_ADMIN_ADDR` (default `0.0.0.0:15020`). It does not yet
//! carry traffic: the data path is issue 5's remaining work.

use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use braid_proxy::iptables::{self, Backend, Redirect};
use braid_proxy::{admin, reload};

struct Init {
    redirect: Redirect,
    backend: Option<Backend>,
    dry_run: bool,
}

fn parse_init(args: &[String]) -> Result<Init, Vec<String>> {
    let mut init = Init {
        redirect: Redirect::default(),
        backend: None,
        dry_run: false,
    };
    let mut errors = Vec::new();
    let number = |flag: &str, value: &str| {
        value
            .parse::<u32>()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))
    };
    let port = |flag: &str, value: &str| match value.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{flag}: {value:?} is not a port")),
    };
    for arg in args {
        let (flag, value) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
        let redirect = &mut init.redirect;
        let result = match flag {
            "--proxy-uid" => number(flag, value).map(|v| redirect.proxy_uid = v),
            "--inbound-port" => port(flag, value).map(|v| redirect.inbound_port = v),
            "--outbound-port" => port(flag, value).map(|v| redirect.outbound_port = v),
            "--exclude-inbound-ports" => iptables::parse_ports(flag, value)
                .map(|v| redirect.exclude_inbound_ports = v)
                .map_err(|e| e.to_string()),
            "--exclude-outbound-ports" => iptables::parse_ports(flag, value)
                .map(|v| redirect.exclude_outbound_ports = v)
                .map_err(|e| e.to_string()),
            "--exclude-outbound-cidrs" => iptables::parse_cidrs(flag, value)
                .map(|v| redirect.exclude_outbound_cidrs = v)
                .map_err(|e| e.to_string()),
            "--exclude-uids" => value
                .split(',')
                .filter(|v| !v.is_empty())
                .map(|v| number(flag, v))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| redirect.exclude_uids = v),
            "--backend" => match value {
                "auto" | "nft" | "legacy" => {
                    init.backend = match value {
                        "nft" => Some(Backend::Nft),
                        "legacy" => Some(Backend::Legacy),
                        _ => None,
                    };
                    Ok(())
                }
                other => Err(format!(
                    "--backend: {other:?}: expected auto, nft or legacy"
                )),
            },
            "--dry-run" => {
                init.dry_run = true;
                Ok(())
            }
            _ => Err(format!("unknown flag {arg:?}")),
        };
        if let Err(error) = result {
            errors.push(error);
        }
    }
    if errors.is_empty() {
        Ok(init)
    } else {
        Err(errors)
    }
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn init(init: Init) -> Result<(), String> {
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
    admin_addr: SocketAddr,
}

fn run_settings(var: impl Fn(&str) -> Option<String>) -> Result<RunSettings, Vec<String>> {
    let mut errors = Vec::new();
    let config_dir =
        PathBuf::from(var("BRAID_CONFIG_DIR").unwrap_or_else(|| "/etc/braid/config".into()));
    let admin = var("BRAID_ADMIN_ADDR").unwrap_or_else(|| "0.0.0.0:15020".into());
    let admin_addr = admin.parse().unwrap_or_else(|_| {
        errors.push(format!("BRAID_ADMIN_ADDR={admin:?} is not host:port"));
        SocketAddr::from(([0, 0, 0, 0], 15020))
    });
    if errors.is_empty() {
        Ok(RunSettings {
            config_file: config_dir.join("proxy.json"),
            admin_addr,
        })
    } else {
        Err(errors)
    }
}

fn run(settings: RunSettings) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let state = Arc::new(reload::ConfigState::default());
        let listener = tokio::net::TcpListener::bind(settings.admin_addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", settings.admin_addr))?;
        tokio::spawn(admin::serve(listener, state.clone()));
        tokio::spawn(reload::watch_file(settings.config_file, state));
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
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
        Some("init") => match parse_init(&args[1..]) {
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
            eprintln!(
                "usage: braid-proxy init [flags]   (the proxy itself, `run`, is not written yet)"
            );
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
        let errors = run_settings(|name| (name == "BRAID_ADMIN_ADDR").then(|| "everywhere".into()))
            .err()
            .expect("refused");
        assert_eq!(errors, ["BRAID_ADMIN_ADDR=\"everywhere\" is not host:port"]);
    }

    #[test]
    fn init_reports_every_bad_flag() {
        let args: Vec<String> = ["--outbound-port=0", "--exclude-uids=root", "--colour"]
            .map(String::from)
            .to_vec();
        let errors = parse_init(&args).err().expect("refused");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("--outbound-port") && errors[1].starts_with("--exclude-uids"),
            "{errors:?}"
        );
    }
}
