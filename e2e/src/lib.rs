//! Test harness of Braid's end-to-end tests: drives a real cluster through `kubectl`, as a user
//! would. The cluster is the local test cluster of `make cluster-up` unless `KUBECONFIG` points
//! elsewhere; the kubectl is `$KUBECTL` (set by the Makefile to the cluster's own kubectl v1.34).
//!
//! Every helper returns `anyhow::Result` so a failing step names the command and its output.

pub mod apiserver;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// A handle on the cluster under test.
#[derive(Clone, Debug)]
pub struct Cluster {
    kubectl: Vec<String>,
}

impl Cluster {
    /// The cluster of `$KUBECONFIG` (or the test cluster), through `$KUBECTL` (or `kubectl`).
    pub fn from_env() -> Self {
        let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
        Self {
            kubectl: kubectl.split_whitespace().map(String::from).collect(),
        }
    }

    /// Runs kubectl with `args`, feeding `stdin`, and returns its stdout; fails with its stderr.
    pub fn kubectl_with_input(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let (program, fixed) = self.kubectl.split_first().context("KUBECTL is empty")?;
        let mut command = Command::new(program);
        command
            .args(fixed)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot run {program}"))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            std::io::Write::write_all(&mut pipe, input.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Starts kubectl with `args` in the background (stdout piped), for load that must run while
    /// the test changes something.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<std::process::Child> {
        let (program, fixed) = self.kubectl.split_first().context("KUBECTL is empty")?;
        Command::new(program)
            .args(fixed)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {program}"))
    }

    /// Runs kubectl with `args` and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_with_input(args, None)
    }

    /// `kubectl apply` of one object given as JSON.
    pub fn apply(&self, object: &Value) -> anyhow::Result<()> {
        self.kubectl_with_input(&["apply", "-f", "-"], Some(&object.to_string()))
            .map(drop)
    }

    /// `kubectl get -o json` of `what` (e.g. `["pods", "-n", ns]`).
    pub fn get_json(&self, what: &[&str]) -> anyhow::Result<Value> {
        let mut args = vec!["get", "-o", "json"];
        args.extend_from_slice(what);
        Ok(serde_json::from_str(&self.kubectl(&args)?)?)
    }

    /// Runs `command` in the first container of `pod` and returns its stdout.
    pub fn exec(&self, namespace: &str, pod: &str, command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", "-n", namespace, pod, "--"];
        args.extend_from_slice(command);
        self.kubectl(&args)
    }

    /// Creates a namespace named `<prefix>-<unique suffix>` and returns a guard that deletes it.
    pub fn namespace(&self, prefix: &str) -> anyhow::Result<Namespace> {
        let suffix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
            % 1_000_000;
        let name = format!("{prefix}-{suffix}");
        self.kubectl(&["create", "namespace", &name])?;
        Ok(Namespace {
            cluster: self.clone(),
            name,
            deleted: false,
        })
    }
}

/// A namespace made for one test. Dropping it deletes the namespace and waits (up to 2 min) until it
/// is gone, so that one test's teardown never overlaps the next test; tests that measure deletion
/// call [`Namespace::delete_and_wait`].
#[derive(Debug)]
pub struct Namespace {
    cluster: Cluster,
    /// The namespace's name.
    pub name: String,
    deleted: bool,
}

impl Namespace {
    /// Deletes the namespace and waits until the API server no longer has it.
    pub fn delete_and_wait(mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"])?;
        self.deleted = true;
        let name = self.name.clone();
        let cluster = self.cluster.clone();
        eventually(timeout, || {
            match cluster.kubectl(&["get", "namespace", &name]) {
                Err(error) if error.to_string().contains("NotFound") => Ok(()),
                Err(error) => Err(error),
                Ok(_) => bail!("namespace {name} still exists"),
            }
        })?;
        Ok(started.elapsed())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = self.cluster.kubectl(&[
                "delete",
                "namespace",
                &self.name,
                "--wait=true",
                "--timeout=120s",
            ]);
        }
    }
}

/// Retries `check` every 200 ms until it succeeds or `timeout` passes; then returns its last error.
pub fn eventually<T>(
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context(format!("still failing after {timeout:?}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Checks that `pod` (a Pod as JSON) is meshed and running: Ready, `braid-init` terminated with
/// exit code 0, and the `braid-proxy` sidecar running and ready.
pub fn meshed_and_ready(pod: &Value) -> anyhow::Result<()> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    anyhow::ensure!(ready, "pod {name} not Ready: {}", pod["status"]);
    let status = |container: &str| {
        pod["status"]["initContainerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == container)
            .cloned()
            .unwrap_or_default()
    };
    let init = status("braid-init");
    anyhow::ensure!(
        init["state"]["terminated"]["exitCode"] == 0,
        "braid-init did not succeed in {name}: {init}"
    );
    let proxy = status("braid-proxy");
    anyhow::ensure!(
        proxy["ready"] == true && proxy["state"]["running"].is_object(),
        "braid-proxy not running and ready in {name}: {proxy}"
    );
    Ok(())
}
