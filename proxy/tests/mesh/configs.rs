//! The pods' `proxy.json` documents: the client pod's destinations (with its canary split) and
//! the server pod's inbound policy.

use crate::pods::SERVER_IP;

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

/// The client pod's config, with `payment.shop` split `v1`/`v2` by weight.
pub fn client_config(v1: u32, v2: u32) -> String {
    let mut payment = destination("payment.shop", "10.96.0.10", 80, endpoint(8081, PAYMENT));
    payment["routes"] = serde_json::json!([{"backends": [
        {"destination": "payment-v1.shop", "weight": v1},
        {"destination": "payment-v2.shop", "weight": v2}]}]);
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
