//! The pods' `proxy.json` documents: the client pod's destinations (with its canary split) and
//! the server pod's inbound policy.

use crate::pods::{CLIENT_IP, SERVER_IP};

pub const ORDER: &str = "spiffe://cluster.local/ns/shop/sa/order";
pub const PAYMENT: &str = "spiffe://cluster.local/ns/shop/sa/payment";
pub const LOADGEN: &str = "spiffe://cluster.local/ns/shop/sa/loadgen";

fn endpoint(port: u16, identity: &str) -> serde_json::Value {
    serde_json::json!({"ip": SERVER_IP, "port": port, "identity": identity})
}

fn destination(
    name: &str,
    cluster_ip: &str,
    port: u16,
    endpoint: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({"name": name, "clusterIps": [cluster_ip],
                       "ports": [{"port": port, "endpoints": [endpoint]}]})
}

/// A destination on several ports of the server pod.
fn endpoints(name: &str, cluster_ip: &str, port: u16, app_ports: &[u16]) -> serde_json::Value {
    let endpoints: Vec<_> = app_ports.iter().map(|p| endpoint(*p, PAYMENT)).collect();
    serde_json::json!({"name": name, "clusterIps": [cluster_ip],
                       "ports": [{"port": port, "endpoints": endpoints}]})
}

/// `destination` with Braid's default client policy, `fields` over it.
fn with_policy(mut destination: serde_json::Value, fields: serde_json::Value) -> serde_json::Value {
    let mut policy = serde_json::json!({"loadBalancer": "P2C-EWMA", "connectTimeoutMs": 1000,
        "idleTimeoutMs": 3_600_000, "circuitBreaker": {"maxConnections": 1024,
        "maxPendingRequests": 1024, "maxRequests": 1024}});
    for (key, value) in fields.as_object().expect("an object") {
        policy[key] = value.clone();
    }
    destination["policy"] = policy;
    destination
}

/// A retry policy: `attempts` on 5xx and connect failures, within `budget_percent`.
fn retries(attempts: u32, budget_percent: u32) -> serde_json::Value {
    serde_json::json!({"attempts": attempts, "on5xx": true, "onGatewayError": true,
        "onConnectFailure": true, "onReset": true, "budgetPercent": budget_percent,
        "budgetMinPerSecond": 10})
}

/// Outlier detection: ejected after `errors` in a row for `base_ms`, at most 50%.
fn outlier(errors: u32, base_ms: u64) -> serde_json::Value {
    serde_json::json!({"consecutiveErrors": errors, "baseEjectionMs": base_ms,
        "maxEjectionPercent": 50})
}

/// The client pod's config, with `payment.shop` split `v1`/`v2` by weight.
pub fn client_config(v1: u32, v2: u32) -> String {
    let mut payment = destination("payment.shop", "10.96.0.10", 80, endpoint(8081, PAYMENT));
    payment["routes"] = serde_json::json!([{"backends": [
        {"destination": "payment-v1.shop", "weight": v1},
        {"destination": "payment-v2.shop", "weight": v2}]}]);
    let mut canary = destination("canary.shop", "10.96.1.10", 80, endpoint(8105, PAYMENT));
    canary["routes"] = serde_json::json!([{"backends": [
        {"destination": "canary-v2.shop", "weight": 50},
        {"destination": "canary-v1.shop", "weight": 50}]}]);
    let mut hung = destination("hung.shop", "10.96.0.41", 9000, endpoint(7003, PAYMENT));
    hung["routes"] = serde_json::json!([{"backends": [
        {"destination": "hung.shop", "weight": 100}], "timeoutMs": 300}]);
    serde_json::json!({
        "version": 1,
        // A field of a newer operator: ignored, and named on /config.
        "futureFeature": {"enabled": true},
        "workload": {"namespace": "shop", "name": "order", "identity": ORDER},
        "inbound": {"mtlsMode": "PERMISSIVE"},
        "destinations": [
            payment,
            destination("payment-v1.shop", "10.96.0.11", 80, endpoint(8081, PAYMENT)),
            destination("payment-v2.shop", "10.96.0.12", 80, endpoint(8082, PAYMENT)),
            destination("grpc.shop", "10.96.0.20", 9000, endpoint(9000, PAYMENT)),
            destination("ws.shop", "10.96.0.21", 80, endpoint(8090, PAYMENT)),
            destination("echo.shop", "10.96.0.22", 7000, endpoint(7000, PAYMENT)),
            destination("banner.shop", "10.96.0.23", 7001, endpoint(7001, PAYMENT)),
            destination("sink.shop", "10.96.0.24", 7004, endpoint(7004, PAYMENT)),
            // gRPC to no endpoint, and to a hung application behind a route timeout.
            serde_json::json!({"name": "nowhere.shop", "clusterIps": ["10.96.0.40"],
                               "ports": [{"port": 9000, "protocol": "http2", "endpoints": []}]}),
            hung,
            // Issue 14's (crate::resilience): retries, failover, ejection, breaker.
            with_policy(destination("flaky-retry.shop", "10.96.1.1", 80, endpoint(8101, PAYMENT)),
                        serde_json::json!({"retries": retries(3, 100)})),
            destination("flaky.shop", "10.96.1.2", 80, endpoint(8101, PAYMENT)),
            with_policy(destination("failing.shop", "10.96.1.3", 80, endpoint(8104, PAYMENT)),
                        serde_json::json!({"retries": retries(2, 20)})),
            with_policy(endpoints("eject.shop", "10.96.1.4", 80, &[8105, 8106, 8107]),
                        serde_json::json!({"loadBalancer": "ROUND_ROBIN",
                            "outlierDetection": outlier(3, 2_000)})),
            with_policy(endpoints("eject-both.shop", "10.96.1.5", 80, &[8104, 8109]),
                        serde_json::json!({"loadBalancer": "ROUND_ROBIN",
                            "outlierDetection": outlier(2, 30_000)})),
            with_policy(destination("slow.shop", "10.96.1.6", 80, endpoint(8108, PAYMENT)),
                        serde_json::json!({"circuitBreaker": {"maxConnections": 1024,
                            "maxPendingRequests": 1024, "maxRequests": 2}})),
            with_policy(destination("pool.shop", "10.96.1.14", 80, endpoint(8112, PAYMENT)),
                        serde_json::json!({"circuitBreaker": {"maxConnections": 2,
                            "maxPendingRequests": 2, "maxRequests": 1024}})),
            with_policy(serde_json::json!({"name": "grpc-flaky.shop", "clusterIps": ["10.96.1.7"],
                            "ports": [{"port": 9100, "protocol": "http2",
                                       "endpoints": [endpoint(9100, PAYMENT)]}]}),
                        serde_json::json!({"retries": retries(2, 20)})),
            with_policy(serde_json::json!({"name": "failover.shop", "clusterIps": ["10.96.1.8"],
                            "ports": [{"port": 80, "endpoints": [
                                {"ip": CLIENT_IP, "port": 8199, "identity": PAYMENT},
                                endpoint(8105, PAYMENT)]}]}),
                        serde_json::json!({"loadBalancer": "ROUND_ROBIN"})),
            // A stopped application behind a live proxy (nothing listens on 8198): its proxy
            // says so, and the request goes to the other endpoint (crate::resilience).
            with_policy(endpoints("unprocessed.shop", "10.96.1.9", 80, &[8198, 8105]),
                        serde_json::json!({"loadBalancer": "ROUND_ROBIN"})),
            // A canary whose one pod fails everything: retried on the stable backend.
            canary,
            with_policy(destination("canary-v2.shop", "10.96.1.11", 80, endpoint(8104, PAYMENT)),
                        serde_json::json!({"retries": retries(2, 100)})),
            destination("canary-v1.shop", "10.96.1.12", 80, endpoint(8105, PAYMENT)),
            // A destination whose only endpoint is gone, until the next config (crate::drain).
            destination("successor.shop", "10.96.1.13", 80, endpoint(8198, PAYMENT)),
            // The end of a pod (crate::drain): the server pod's application, and a spare in
            // the client pod (plaintext: no identity).
            with_policy(serde_json::json!({"name": "drain.shop", "clusterIps": ["10.96.1.20"],
                            "ports": [{"port": 80, "endpoints": [
                                endpoint(crate::drain::APP_PORT, PAYMENT),
                                {"ip": CLIENT_IP, "port": 8111}]}]}),
                        serde_json::json!({"loadBalancer": "ROUND_ROBIN"})),
            destination("impostor.shop", "10.96.0.30", 80,
                        serde_json::json!({"ip": SERVER_IP, "port": 8081,
                                           "identity": "spiffe://cluster.local/ns/shop/sa/someone-else"})),
        ]
    })
    .to_string()
}

/// The server pod's config. Its (generous) rate limit is a policy that decides on requests, so
/// the inbound side serves HTTP/2 request by request too, not only HTTP/1.1. (A version-1
/// document, as a release-1 operator wrote it: its rate limit is enforced all the same.)
pub fn server_config(mode: &str) -> String {
    serde_json::json!({
        "version": 1,
        "workload": {"namespace": "shop", "name": "payment", "identity": PAYMENT},
        "inbound": {"mtlsMode": mode,
                    "rateLimit": {"requestsPerSecond": 1_000_000, "burst": 1_000_000}},
    })
    .to_string()
}

/// The server pod's config with an inbound policy: `inbound`'s fields over the mode, as this
/// release's operator writes it (version 2, the features it uses required).
pub fn server_config_with(mode: &str, inbound: serde_json::Value) -> String {
    let mut section = serde_json::json!({"mtlsMode": mode});
    for (key, value) in inbound.as_object().expect("an object") {
        section[key] = value.clone();
    }
    let mut requires = Vec::new();
    if section.get("authorization").is_some() {
        requires.push("authorization");
    }
    if section.get("rateLimit").is_some() {
        requires.push("rateLimit");
    }
    serde_json::json!({
        "version": 2,
        "requires": requires,
        "workload": {"namespace": "shop", "name": "payment", "identity": PAYMENT},
        "inbound": section,
    })
    .to_string()
}
