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

use std::process::ExitCode;

use braid_proxy::cli;
use braid_proxy::redirect::init;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => match cli::run::settings(|name| std::env::var(name).ok()) {
            Err(errors) => {
                for error in errors {
                    eprintln!("braid-proxy run: {error}");
                }
                ExitCode::from(64)
            }
            Ok(settings) => match cli::run::run(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("braid-proxy run: {error}");
                    ExitCode::FAILURE
                }
            },
        },
        Some("wait-ready") => match cli::wait_ready::wait_ready() {
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
            Ok(settings) => match cli::init::apply(settings) {
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
