//! The policies' price. Inbound (issue 13): the braid pair with the server workload under an
//! authorization policy of 10 rules (the first nine about other callers and paths, so that every
//! request is matched against all ten) and a rate limit high enough never to refuse, against the
//! same pair with no policy, in the same run. Client side (issue 14): a destination with a
//! retry policy and outlier detection, nothing failing ([`resilient`]).

use std::fmt::Write as _;

use crate::report::{Load, Measured, Setup};

/// The server's config with the policy, from its config without one.
pub fn with_policy(server_config: &str, client_id: &str) -> String {
    let mut config: serde_json::Value = serde_json::from_str(server_config).expect("json");
    let mut rules: Vec<serde_json::Value> = (0..9)
        .map(|i| {
            serde_json::json!({"identities": [format!("spiffe://cluster.local/ns/bench/sa/other-{i}")],
                               "paths": [format!("/api/{i}/*")], "methods": ["GET", "POST"]})
        })
        .collect();
    rules.push(serde_json::json!({"identities": [client_id], "paths": ["/*"]}));
    config["version"] = 2.into();
    config["requires"] = serde_json::json!(["authorization", "rateLimit"]);
    config["inbound"]["policy"] = "bench/ten-rules".into();
    config["inbound"]["authorization"] = rules.into();
    config["inbound"]["rateLimit"] =
        serde_json::json!({"requestsPerSecond": 100_000_000u32, "burst": 100_000_000u32});
    config.to_string()
}

/// The client policy of the destination with retries and outlier detection (issue 14): the
/// defaults otherwise, so that it differs from the plain pair's destination in those alone.
pub fn resilient() -> serde_json::Value {
    let mut policy =
        serde_json::to_value(braid_proxy_config::ClientPolicy::default()).expect("json");
    policy["retries"] = serde_json::json!({"attempts": 2, "on5xx": true, "onGatewayError": true,
        "onConnectFailure": true, "onReset": true, "budgetPercent": 20, "budgetMinPerSecond": 10});
    policy["outlierDetection"] = serde_json::json!({"consecutiveErrors": 5,
        "baseEjectionMs": 30_000, "maxEjectionPercent": 50});
    policy
}

/// The report's lines on the policy's price.
pub fn section(all: &[Measured], cost: impl Fn(Setup, Load) -> Vec<f64>) -> String {
    let mut out = String::new();
    for load in [Load::FixedRate, Load::Closed, Load::Http2] {
        let server_hop = |setup: Setup| cost(setup, load).get(1).copied().unwrap_or(f64::NAN);
        let (with, without) = (
            server_hop(Setup::BraidPairPolicy),
            server_hop(Setup::BraidPair),
        );
        let _ = writeln!(
            out,
            "- Server hop under a 10-rule authorization policy and a rate limit, {}: {with:.1} µs \
             per request, the same hop with no policy {without:.1} µs (×{:.3}). Target: ≤ 1.05{}.",
            load.title(),
            with / without,
            if load == Load::Http2 {
                " (HTTP/2 is parsed, not copied, once a policy decides on requests: its price is \
                 hyper's)"
            } else {
                ""
            }
        );
    }
    for load in [Load::FixedRate, Load::Closed, Load::Http2] {
        let client_hop = |setup: Setup| cost(setup, load).first().copied().unwrap_or(f64::NAN);
        let (with, without) = (
            client_hop(Setup::BraidPairResilience),
            client_hop(Setup::BraidPair),
        );
        let _ = writeln!(
            out,
            "- Client hop with a retry policy and outlier detection (nothing failing), {}:              {with:.1} µs per request, the same hop without them {without:.1} µs (×{:.3}).              Target: ≤ 1.05.",
            load.title(),
            with / without,
        );
    }
    let p99 = |setup: Setup| {
        all.iter()
            .find(|m| m.setup == setup && m.load == Load::FixedRate)
            .map(|m| m.outcome.percentiles_us[1] as f64)
    };
    if let (Some(policy), Some(direct)) = (p99(Setup::BraidPairPolicy), p99(Setup::Direct)) {
        let _ = writeln!(
            out,
            "- Latency the braid pair with the policy adds at p99 at {} rps: {:.2} ms. Target: \
             under 1 ms.",
            crate::RATE,
            (policy - direct) / 1000.0
        );
    }
    out
}
