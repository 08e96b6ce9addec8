//! Tests of the routing table: lookup, matches, routes and weighted backends.

use super::*;

fn config(routes: serde_json::Value) -> ProxyConfig {
    let document = serde_json::json!({
        "version": 1,
        "workload": {"namespace": "shop", "name": "order",
                     "identity": "spiffe://cluster.local/ns/shop/sa/order"},
        "inbound": {"mtlsMode": "STRICT"},
        "opaquePorts": [5432],
        "destinations": [
            {"name": "payment.shop", "clusterIps": ["10.96.0.10"],
             "ports": [{"port": 80, "endpoints": [{"ip": "10.244.0.5", "port": 8080}]}],
             "routes": routes},
            {"name": "payment-v1.shop", "clusterIps": ["10.96.0.11"],
             "ports": [{"port": 80, "endpoints": [{"ip": "10.244.0.6", "port": 8080}]}]},
            {"name": "payment-v2.shop", "clusterIps": ["10.96.0.12"],
             "ports": [{"port": 80, "protocol": "tcp",
                        "endpoints": [{"ip": "10.244.0.7", "port": 8080}]}]}
        ]
    });
    ProxyConfig::from_json(document.to_string().as_bytes()).expect("valid")
}

/// The backend destination and timeout a request to `payment.shop:80` is routed to.
fn routed(
    table: &Table,
    method: &str,
    path: &str,
    headers: &[(&'static str, &'static str)],
) -> Option<(usize, Option<u64>)> {
    let header = |name: &str| headers.iter().find(|h| h.0 == name).map(|h| h.1);
    let facts = RequestFacts {
        method,
        path,
        header: &header,
    };
    let route = table
        .route(
            Target {
                destination: 0,
                port: 80,
            },
            &facts,
        )?
        .1;
    Some((route.backend(0, 80)?.destination, route.timeout_ms))
}

fn no_headers(_: &str) -> Option<&'static str> {
    None
}

#[test]
fn addresses_map_to_destinations_by_cluster_ip_and_by_endpoint() {
    let table = Table::compile(&config(serde_json::json!([]))).expect("compiles");
    let target = |a: &str| table.lookup(a.parse().expect("addr"));
    assert_eq!(
        target("10.96.0.10:80"),
        Some(Target {
            destination: 0,
            port: 80
        })
    );
    assert_eq!(
        target("10.244.0.6:8080"),
        Some(Target {
            destination: 1,
            port: 80
        })
    );
    assert_eq!(target("10.96.0.10:81"), None);
    assert_eq!(target("192.0.2.1:80"), None);
    assert!(!table.is_opaque(Target {
        destination: 0,
        port: 80
    }));
    assert!(table.is_opaque(Target {
        destination: 2,
        port: 80
    }));
    assert_eq!(
        table
            .endpoints(Target {
                destination: 1,
                port: 80
            })
            .len(),
        1
    );
}

#[test]
fn routes_match_by_path_method_and_header_in_order() {
    let table = Table::compile(&config(serde_json::json!([
        {"matches": [{"path": {"type": "prefix", "value": "/api"}, "method": "POST"}],
         "backends": [{"destination": "payment-v2.shop", "weight": 1}]},
        {"matches": [{"headers": [{"name": "X-Canary",
                                   "value": {"type": "regex", "value": "yes|true"}}]}],
         "backends": [{"destination": "payment-v2.shop", "weight": 1}], "timeoutMs": 5},
        {"backends": [{"destination": "payment-v1.shop", "weight": 1}]}
    ])))
    .expect("compiles");
    assert_eq!(routed(&table, "POST", "/api/pay", &[]), Some((2, None)));
    assert_eq!(routed(&table, "GET", "/api/pay", &[]), Some((1, None)));
    assert_eq!(
        routed(&table, "POST", "/apix", &[]),
        Some((1, None)),
        "prefix is by segment"
    );
    let canary = [("x-canary", "true")];
    assert_eq!(routed(&table, "GET", "/", &canary), Some((2, Some(5))));
    let not_canary = [("x-canary", "truely")];
    assert_eq!(
        routed(&table, "GET", "/", &not_canary),
        Some((1, None)),
        "regex is anchored"
    );
}

#[test]
fn weighted_backends_split_by_the_roll() {
    let table = Table::compile(&config(serde_json::json!([
        {"backends": [{"destination": "payment-v1.shop", "weight": 80},
                      {"destination": "payment-v2.shop", "port": 9090, "weight": 20}]}
    ])))
    .expect("compiles");
    let route = table
        .route(
            Target {
                destination: 0,
                port: 80,
            },
            &RequestFacts {
                method: "GET",
                path: "/",
                header: &no_headers,
            },
        )
        .expect("route")
        .1;
    assert_eq!(route.total_weight(), 100);
    let mut counts = [0; 3];
    for roll in 0..100 {
        counts[route.backend(roll, 80).expect("backend").destination] += 1;
    }
    assert_eq!(counts, [0, 80, 20]);
    assert_eq!(
        route.backend(0, 80).map(|t| t.port),
        Some(80),
        "the dialled port"
    );
    assert_eq!(
        route.backend(99, 80).map(|t| t.port),
        Some(9090),
        "the backend's port"
    );
    assert_eq!(route.backend(100, 80), None);
}

#[test]
fn a_bad_regex_refuses_the_config_naming_the_field() {
    let error = Table::compile(&config(serde_json::json!([
        {"matches": [{"path": {"type": "regex", "value": "/(unclosed"}}],
         "backends": [{"destination": "payment-v1.shop", "weight": 1}]}
    ])))
    .expect_err("refused");
    assert!(
        error.starts_with("destinations[0].routes[0].matches[0].path: invalid regex"),
        "{error}"
    );
}

#[test]
fn inbound_ports_are_parsed_as_far_as_the_policy_needs() {
    let mut config = config(serde_json::json!([]));
    let table = Table::compile(&config).expect("compiles");
    assert_eq!(table.inbound(5432), InboundParsing::Opaque);
    assert_eq!(
        table.inbound(8080),
        InboundParsing::Http1,
        "no policy on requests"
    );
    // A rule on callers alone decides per connection: HTTP/2 is still copied.
    config.inbound.authorization = Some(vec![braid_proxy_config::AuthorizationRule {
        identities: vec!["spiffe://cluster.local/ns/shop/sa/order".into()],
        ..Default::default()
    }]);
    let table = Table::compile(&config).expect("compiles");
    assert_eq!(table.inbound(8080), InboundParsing::Http1);
    // A rule on paths (or methods) needs every request, HTTP/2 ones too.
    config.inbound.authorization = Some(vec![braid_proxy_config::AuthorizationRule {
        paths: vec!["/admin*".into()],
        ..Default::default()
    }]);
    let table = Table::compile(&config).expect("compiles");
    assert_eq!(table.inbound(8080), InboundParsing::Http);
    assert_eq!(table.inbound(5432), InboundParsing::Opaque, "opaque wins");
    config.inbound.authorization = None;
    config.inbound.rate_limit = Some(braid_proxy_config::RateLimit {
        requests_per_second: 100,
        burst: 10,
        per_identity: Vec::new(),
    });
    let table = Table::compile(&config).expect("compiles");
    assert_eq!(
        table.inbound(8080),
        InboundParsing::Http,
        "a rate limit counts requests"
    );
}
