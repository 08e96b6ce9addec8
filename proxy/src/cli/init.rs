//! `braid-proxy init`: installs the redirection in the current network namespace with
//! `iptables-restore` (`--dry-run` prints the payload instead).

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::redirect::init::Init;
use crate::redirect::iptables;

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Applies `init`: the payload for the backend in use, through its `iptables-restore`.
pub fn apply(init: Init) -> Result<(), String> {
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
