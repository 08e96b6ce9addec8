//! Reading the proxies back: which config each running proxy has in force. The file-based design
//! has no channel from a proxy to the operator (no xDS ACK), so the operator asks: it GETs
//! `/config` on each running meshed pod's admin port (15020, plaintext, never redirected — the
//! kubelet's probes use it too) and keeps the SHA-256 the proxy reports and, when the file in
//! place is not in force, the proxy's reason (refused, unreadable). [`crate::status::synced`]
//! compares these with the hash of the file each workload's ConfigMap holds.
//!
//! Cost: a proxy in sync is read every [`SWEEP`]; one that lags (its workload's config was just
//! rewritten, or it is unreachable) every [`CHASE`] for its first [`CHASE_FOR`], then every
//! [`SLOW`], so that a change is seen applied within a quarter second of the swap. A proxy that
//! answers but still runs other files [`RENUDGE_AFTER`] into its lag has its pod nudged once
//! more. A read is one
//! TCP connection and about 300 bytes each way; at most [`CONCURRENCY`] at once. Only the
//! leader reads. When what a proxy reports changes whether it is in sync (or why not), the
//! reconcile loop is woken, which rewrites the statuses that changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::status::synced::{Heard, ProxyPod, proxy_pods};
use crate::workload::WorkloadKey;

/// How often a proxy in sync is read again.
pub const SWEEP: Duration = Duration::from_secs(30);
/// How often a lagging proxy is read while it has lagged less than [`CHASE_FOR`].
pub const CHASE: Duration = Duration::from_millis(250);
/// How long a lagging proxy is read every [`CHASE`].
pub const CHASE_FOR: Duration = Duration::from_secs(10);
/// How often a proxy that has lagged longer is read.
pub const SLOW: Duration = Duration::from_secs(5);
/// How long a proxy that answers may run other files than the latest before its pod is nudged
/// once more ([`crate::nudge::nudge_again`]).
pub const RENUDGE_AFTER: Duration = Duration::from_secs(2);
/// Reads in flight at once.
pub const CONCURRENCY: usize = 32;
/// How long one read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest `/config` answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// When to read a proxy again: `behind_for` is how long it has lagged (`None`: in sync).
pub fn next_read(behind_for: Option<Duration>) -> Duration {
    match behind_for {
        None => SWEEP,
        Some(lag) if lag < CHASE_FOR => CHASE,
        Some(_) => SLOW,
    }
}

/// Whether a proxy that has lagged `behind_for` and answered `heard` is nudged once more: it
/// answered, has not run the latest files for [`RENUDGE_AFTER`], and was not nudged again in
/// this lag yet. Whatever it answered: a nudge that overtook the kubelet's watch of a ConfigMap
/// has the kubelet write what it had, which a proxy shows as an older file in force, as no
/// file yet (a new pod), or as a refused one (a split `proxy.json` without the
/// `destinations.json` it needs). When the fault is the file's own (refused as written, or
/// unreadable), the nudge is one wasted pod write per lag. One that does not answer is left
/// alone: its files are not what keeps it.
pub fn renudge(behind_for: Option<Duration>, already: bool, heard: &Heard) -> bool {
    !already
        && behind_for.is_some_and(|lag| lag >= RENUDGE_AFTER)
        && matches!(heard, Heard::Runs { .. })
}

/// What the operator knows of every proxy, shared by the reconcile loop and the reader.
#[derive(Debug, Default)]
pub struct Readback {
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The hash of the file each workload's proxies should run.
    desired: BTreeMap<WorkloadKey, String>,
    /// What each proxy (by pod UID) last answered.
    heard: HashMap<String, Heard>,
    /// When each proxy is read next, and since when it lags.
    schedule: HashMap<String, Schedule>,
}

#[derive(Clone, Debug)]
struct Schedule {
    workload: WorkloadKey,
    next: Instant,
    behind_since: Option<Instant>,
    /// Its pod was nudged once more in this lag.
    renudged: bool,
}

impl Readback {
    /// Records the hashes each workload's proxies should now run (every pass); the proxies of
    /// workloads whose hash changed are read again at once.
    pub fn want(&self, desired: BTreeMap<WorkloadKey, String>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.desired == desired {
            return;
        }
        let now = Instant::now();
        let State {
            desired: old,
            schedule,
            ..
        } = &mut *state;
        for entry in schedule.values_mut() {
            if old.get(&entry.workload) != desired.get(&entry.workload) {
                // A new file to chase: read at once, and chase it as a fresh lag.
                entry.next = entry.next.min(now);
                entry.behind_since = None;
                entry.renudged = false;
            }
        }
        state.desired = desired;
        drop(state);
        self.wake.notify_one();
    }

    /// What each proxy last answered, by pod UID.
    pub fn heard(&self) -> HashMap<String, Heard> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .heard
            .clone()
    }
}

/// Reads the proxies of the pods in `pods` back forever, while leading; wakes `changed` when
/// what one reports changes its sync state.
pub async fn read_loop(
    readback: Arc<Readback>,
    pods: Store<Pod>,
    changed: Arc<Notify>,
    leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    client: kube::Client,
) {
    loop {
        let _ = tokio::time::timeout(CHASE, readback.wake.notified()).await;
        if !*leading.borrow() {
            continue;
        }
        let running = proxy_pods(&pods.state());
        let now = Instant::now();
        let due: Vec<ProxyPod> = {
            let mut state = readback.state.lock().unwrap_or_else(|e| e.into_inner());
            let alive: std::collections::HashSet<&str> =
                running.iter().map(|p| p.uid.as_str()).collect();
            state.heard.retain(|uid, _| alive.contains(uid.as_str()));
            state.schedule.retain(|uid, _| alive.contains(uid.as_str()));
            running
                .iter()
                .filter(|p| state.schedule.get(&p.uid).is_none_or(|s| s.next <= now))
                .cloned()
                .collect()
        };
        if due.is_empty() {
            continue;
        }
        let answers: Vec<(ProxyPod, Heard)> = futures::stream::iter(due)
            .map(|pod| async move {
                let heard = read_proxy(&pod.ip).await;
                (pod, heard)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let (woke, again) = {
            let mut woke = false;
            let mut again = Vec::new();
            let mut state = readback.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            for (pod, heard) in answers {
                let in_sync = matches!(&heard, Heard::Runs { hash, .. }
                    if state.desired.get(&pod.workload) == Some(hash));
                metrics.record_readback(match (&heard, in_sync) {
                    (Heard::Unreachable(_), _) => "unreachable",
                    (_, true) => "in_sync",
                    (_, false) => "behind",
                });
                let previous = state.heard.insert(pod.uid.clone(), heard.clone());
                woke |= previous.as_ref() != Some(&heard);
                let behind_since = if in_sync {
                    None
                } else {
                    state
                        .schedule
                        .get(&pod.uid)
                        .and_then(|s| s.behind_since)
                        .or(Some(now))
                };
                let behind_for = behind_since.map(|since| now - since);
                let already = behind_since.is_some()
                    && state.schedule.get(&pod.uid).is_some_and(|s| s.renudged);
                let nudge_now = renudge(behind_for, already, &heard);
                if nudge_now {
                    again.push(pod.name.clone());
                }
                let renudged = already || nudge_now;
                state.schedule.insert(
                    pod.uid,
                    Schedule {
                        workload: pod.workload,
                        next: now + next_read(behind_for),
                        behind_since,
                        renudged,
                    },
                );
            }
            (woke, again)
        };
        if woke {
            changed.notify_one();
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        for pod in again {
            crate::nudge::nudge_again(&client, &pod, &stamp.to_string()).await;
        }
    }
}

/// GETs `/config` from the proxy at `ip`'s admin port (the operator benchmark asks with it too).
pub async fn read_proxy(ip: &str) -> Heard {
    let address = match ip.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, braid_sidecar::ADMIN_PORT),
        Err(_) => return Heard::Unreachable(format!("pod IP {ip:?} is not an address")),
    };
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(
                b"GET /config HTTP/1.0\r\nHost: braid-proxy\r\nUser-Agent: braid-operator\r\n\r\n",
            )
            .await?;
        let mut answer = Vec::with_capacity(1024);
        (&mut stream)
            .take(MAX_ANSWER as u64)
            .read_to_end(&mut answer)
            .await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Err(_) => Heard::Unreachable(format!("{address}: no answer within {READ_TIMEOUT:?}")),
        Ok(Err(error)) => Heard::Unreachable(format!("{address}: {error}")),
        Ok(Ok(answer)) => parse_answer(&answer),
    }
}

/// Reads a proxy's `/config` answer (HTTP/1.x status line, headers, JSON body).
pub fn parse_answer(answer: &[u8]) -> Heard {
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Heard::Unreachable("the admin port's answer has no end of headers".into());
    };
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Heard::Unreachable(format!("/config answered {status}"));
    }
    let body: serde_json::Value = match serde_json::from_slice(&answer[split + 4..]) {
        Ok(body) => body,
        Err(error) => return Heard::Unreachable(format!("/config is not JSON: {error}")),
    };
    let last_error = body["lastError"].as_str().map(str::to_owned);
    match body["hash"].as_str() {
        Some(hash) => Heard::Runs {
            hash: hash.to_owned(),
            last_error,
        },
        // Running, but no config in force yet.
        None => Heard::Runs {
            hash: String::new(),
            last_error: last_error.or_else(|| Some("no config loaded yet".into())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lagging_proxy_is_chased_then_read_slowly_and_one_in_sync_rarely() {
        assert_eq!(next_read(None), SWEEP);
        assert_eq!(next_read(Some(Duration::ZERO)), CHASE);
        assert_eq!(next_read(Some(CHASE_FOR - CHASE)), CHASE);
        assert_eq!(next_read(Some(CHASE_FOR)), SLOW);
    }

    #[test]
    fn a_proxy_left_behind_is_nudged_once_more_after_a_while() {
        let older = Heard::Runs {
            hash: "old".into(),
            last_error: None,
        };
        assert!(!renudge(None, false, &older), "in sync");
        assert!(
            !renudge(Some(RENUDGE_AFTER / 2), false, &older),
            "too early"
        );
        assert!(renudge(Some(RENUDGE_AFTER), false, &older));
        assert!(
            !renudge(Some(RENUDGE_AFTER * 3), true, &older),
            "once per lag"
        );
        // A refused file or none at all can be the kubelet's doing too (a split proxy.json
        // written without its destinations.json; a new pod's first files): nudged as well.
        let refused = Heard::Runs {
            hash: "old".into(),
            last_error: Some("proxy.json refused: sharedDestinations: no destinations.json".into()),
        };
        assert!(renudge(Some(RENUDGE_AFTER), false, &refused));
        let none_yet =
            parse_answer(b"HTTP/1.1 200 OK\r\n\r\n{\"generation\":0,\"lastError\":null}");
        assert!(renudge(Some(RENUDGE_AFTER), false, &none_yet));
        assert!(
            !renudge(Some(RENUDGE_AFTER), true, &none_yet),
            "once per lag"
        );
        // One that does not answer is not kept by its files.
        assert!(!renudge(
            Some(RENUDGE_AFTER),
            false,
            &Heard::Unreachable("no answer".into())
        ));
    }

    #[test]
    fn answers_are_read_for_the_hash_and_the_proxys_reason() {
        let ok = b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{\"hash\":\"ab12\",\"generation\":3,\"lastError\":null}\n";
        assert_eq!(
            parse_answer(ok),
            Heard::Runs {
                hash: "ab12".into(),
                last_error: None
            }
        );
        let refused = b"HTTP/1.1 200 OK\r\n\r\n{\"hash\":\"ab12\",\"lastError\":\"proxy.json refused, keeping the last good config: requires feature x\"}";
        assert!(matches!(parse_answer(refused),
            Heard::Runs { last_error: Some(e), .. } if e.contains("requires feature x")));
        let empty = b"HTTP/1.1 200 OK\r\n\r\n{\"generation\":0,\"lastError\":null}";
        assert!(matches!(parse_answer(empty),
            Heard::Runs { hash, last_error: Some(e) } if hash.is_empty() && e == "no config loaded yet"));
        assert!(matches!(parse_answer(b"HTTP/1.1 404 Not Found\r\n\r\nno"),
            Heard::Unreachable(e) if e.contains("404")));
        assert!(matches!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n<html>"),
            Heard::Unreachable(e) if e.contains("not JSON")));
        assert!(matches!(
            parse_answer(b"HTTP/1.1 200"),
            Heard::Unreachable(_)
        ));
    }
}
