//! HTTP/2 load with h2load (nghttp2's): a fixed concurrency for the timed rounds, a fixed number
//! of requests one after the other for the instruction counts.

use crate::pods::Pod;
use crate::{H2_CONNECTIONS, H2_STREAMS, RUN, load};

/// h2load's `requests:` line: the count before `what` (` succeeded`, ` failed`, …).
fn count(stdout: &str, what: &str) -> u64 {
    // "requests: 10 total, 10 started, 10 done, 9 succeeded, 1 failed, 0 errored, 0 timeout"
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| {
            l.split(", ")
                .find_map(|part| part.strip_suffix(what)?.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no `{what}` count from h2load: {stdout}"))
}

/// `n` requests over one h2c connection, one stream at a time: how many succeeded.
pub fn sequence(client: &Pod, target: &str, n: u64) -> u64 {
    let output = client
        .command(false, "h2load")
        .args(["-c", "1", "-m", "1", "-n", &n.to_string()])
        .arg(format!("http://{target}/bench"))
        .output()
        .expect("h2load runs");
    count(&String::from_utf8_lossy(&output.stdout), " succeeded")
}

/// HTTP/2 at a fixed concurrency: h2load over h2c (prior knowledge) for [`RUN`], after a second
/// of warm-up; the latencies come from its per-request log.
pub fn timed(client: &Pod, as_proxy: bool, target: &str) -> load::Outcome {
    let log = client
        .dir
        .join(format!("h2load-{}.log", target.replace([':', '.'], "-")));
    let output = client
        .command(as_proxy, "h2load")
        .args([
            "-c",
            &H2_CONNECTIONS.to_string(),
            "-m",
            &H2_STREAMS.to_string(),
        ])
        .args(["-D", &RUN.as_secs().to_string(), "--warm-up-time=1"])
        .arg(format!("--log-file={}", log.to_string_lossy()))
        .arg(format!("http://{target}/bench"))
        .output()
        .expect("h2load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let count = |what: &str| count(&stdout, what);
    // Each line of the log: start time, status, latency in µs (tab-separated).
    let mut latencies: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            (fields.get(1) == Some(&"200")).then(|| fields.get(2)?.parse().ok())?
        })
        .collect();
    latencies.sort_unstable();
    load::Outcome {
        ok: count(" succeeded"),
        errors: count(" failed") + count(" errored"),
        seconds: RUN.as_secs_f64(),
        percentiles_us: [50.0, 99.0, 99.9].map(|p| load::percentile(&latencies, p)),
    }
}
