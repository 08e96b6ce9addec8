use crate::{ConfigError, ProxyConfig};

pub(crate) const GOOD: &str = r#"{
  "version": 1,
  "workload": {"namespace": "shop", "name": "order", "identity": "spiffe://cluster.local/ns/shop/sa/order"},
  "inbound": {"mtlsMode": "STRICT"},
  "destinations": [
    {"name": "payment.shop", "clusterIps": ["10.96.0.20"],
     "ports": [{"port": 80, "protocol": "http",
                "endpoints": [{"ip": "10.244.0.7", "port": 8080,
                               "identity": "spiffe://cluster.local/ns/shop/sa/payment"}]}],
     "routes": [{"backends": [{"destination": "payment.shop", "weight": 100}]}]}
  ]
}"#;

fn refused(edit: impl FnOnce(&mut serde_json::Value)) -> ConfigError {
    let mut document: serde_json::Value = serde_json::from_str(GOOD).expect("fixture is JSON");
    edit(&mut document);
    ProxyConfig::from_json(document.to_string().as_bytes())
        .expect_err("the edited config was accepted")
}

#[test]
fn a_file_is_read_plain_or_gzip_compressed() {
    let config = ProxyConfig::from_json(GOOD.as_bytes()).expect("fixture is valid");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, GOOD.as_bytes()).expect("compress");
    let compressed = encoder.finish().expect("compress");
    assert_eq!(
        ProxyConfig::from_file(&compressed).map(|read| read.config),
        Ok(config.clone())
    );
    assert_eq!(
        ProxyConfig::from_file(GOOD.as_bytes()).map(|read| read.config),
        Ok(config)
    );
}

#[test]
fn a_good_document_round_trips() {
    let config = ProxyConfig::from_json(GOOD.as_bytes()).expect("fixture is valid");
    assert_eq!(config.destinations[0].ports[0].endpoints.len(), 1);
    assert_eq!(
        ProxyConfig::from_json(config.to_json().as_bytes()),
        Ok(config)
    );
}

#[test]
fn parse_errors_name_the_field() {
    let error =
        refused(|d| d["destinations"][0]["ports"][0]["endpoints"][0]["ip"] = "10.0.0.300".into());
    assert_eq!(error.field(), "destinations[0].ports[0].endpoints[0].ip");
    let error = refused(|d| d["inbound"]["mtlsMode"] = "SOMETIMES".into());
    assert_eq!(error.field(), "inbound.mtlsMode");
}

#[test]
fn retries_name_the_field_of_what_they_get_wrong() {
    let error = refused(|d| {
        d["destinations"][0]["routes"][0]["timeoutMs"] = 1_000.into();
        d["destinations"][0]["routes"][0]["retries"] = serde_json::json!({"attempts": 2,
            "perTryTimeoutMs": 2_000, "on5xx": true, "onGatewayError": true,
            "onConnectFailure": true, "onReset": false, "budgetPercent": 20,
            "budgetMinPerSecond": 10});
    });
    assert_eq!(
        error.field(),
        "destinations[0].routes[0].retries.perTryTimeoutMs"
    );
    let error = refused(|d| {
        d["destinations"][0]["routes"][0]["retries"] = serde_json::json!({"attempts": 2,
            "on5xx": true, "onGatewayError": true, "onConnectFailure": true, "onReset": false,
            "onStatuses": [409, 700], "budgetPercent": 20, "budgetMinPerSecond": 10});
    });
    assert_eq!(
        error.field(),
        "destinations[0].routes[0].retries.onStatuses[1]"
    );
}

#[test]
fn invalid_values_name_the_field() {
    let error = refused(|d| d["version"] = 3.into());
    assert_eq!(error.field(), "version");
    let error = refused(|d| d["destinations"][0]["routes"][0]["backends"][0]["weight"] = 0.into());
    assert_eq!(error.field(), "destinations[0].routes[0].backends");
    let error = refused(|d| {
        d["destinations"][0]["routes"][0]["backends"][0]["destination"] = "nope".into()
    });
    assert_eq!(
        error.field(),
        "destinations[0].routes[0].backends[0].destination"
    );
    let error = refused(|d| d["workload"]["identity"] = "order".into());
    assert_eq!(error.field(), "workload.identity");
    let error = refused(|d| {
        let copy = d["destinations"][0].clone();
        d["destinations"].as_array_mut().expect("array").push(copy);
    });
    assert_eq!(error.field(), "destinations[1].name");
    let error = refused(|d| d["limits"] = serde_json::json!({"maxConnections": 0}));
    assert_eq!(error.field(), "limits.maxConnections");
    let error = refused(|d| d["limits"] = serde_json::json!({"requestHeadTimeoutMs": 0}));
    assert_eq!(error.field(), "limits.requestHeadTimeoutMs");
}

#[test]
fn bad_authorization_rules_and_limits_name_the_field() {
    let rule = |rule: serde_json::Value| {
        refused(move |d| d["inbound"]["authorization"] = serde_json::json!([{}, rule]))
    };
    for (bad, field) in [
        (
            serde_json::json!({"identities": ["order"]}),
            "identities[0]",
        ),
        (
            serde_json::json!({"identities": ["spiffe://*/order"]}),
            "identities[0]",
        ),
        (serde_json::json!({"paths": ["pay"]}), "paths[0]"),
        (serde_json::json!({"paths": ["/a*/b"]}), "paths[0]"),
        (serde_json::json!({"methods": ["get"]}), "methods[0]"),
        (serde_json::json!({"namespaces": [""]}), "namespaces[0]"),
        (serde_json::json!({"ports": [0]}), "ports"),
    ] {
        assert_eq!(
            rule(bad.clone()).field(),
            format!("inbound.authorization[1].{field}"),
            "{bad}"
        );
    }
    assert_eq!(
        rule(serde_json::json!({"action": "MAYBE"})).field(),
        "inbound.authorization[1].action"
    );
    let limit = |limit: serde_json::Value| {
        refused(move |d| d["inbound"]["rateLimit"] = limit)
            .field()
            .to_string()
    };
    assert_eq!(
        limit(serde_json::json!({"requestsPerSecond": 0, "burst": 1})),
        "inbound.rateLimit.requestsPerSecond"
    );
    assert_eq!(
        limit(
            serde_json::json!({"requestsPerSecond": 1, "burst": 1, "perIdentity": [
            {"identities": ["spiffe://cluster.local/ns/shop/sa/order"],
             "requestsPerSecond": 5, "burst": 0}]})
        ),
        "inbound.rateLimit.perIdentity[0].burst"
    );
    let accepted = serde_json::json!([
        {"identities": ["spiffe://cluster.local/ns/shop/*", "*"], "paths": ["/pay/*", "*"],
         "methods": ["POST"], "ports": [8080]},
        {"action": "DENY", "namespaces": ["default"]}
    ]);
    let mut document: serde_json::Value = serde_json::from_str(GOOD).expect("fixture is JSON");
    document["inbound"]["authorization"] = accepted;
    ProxyConfig::from_json(document.to_string().as_bytes()).expect("valid rules");
}

#[test]
fn limits_default_field_by_field_and_are_omitted_when_default() {
    let mut document: serde_json::Value = serde_json::from_str(GOOD).expect("fixture is JSON");
    document["limits"] = serde_json::json!({"maxConnections": 50});
    let config = ProxyConfig::from_json(document.to_string().as_bytes()).expect("valid");
    assert_eq!(config.limits.max_connections, 50);
    assert_eq!(config.limits.request_head_timeout_ms, 10_000);
    assert_eq!(config.limits.idle_timeout_ms, 3_600_000);
    document.as_object_mut().expect("object").remove("limits");
    let config = ProxyConfig::from_json(document.to_string().as_bytes()).expect("valid");
    assert_eq!(config.limits, crate::Limits::default());
    assert!(
        !config.to_json().contains("limits"),
        "defaults are not written"
    );
}

#[test]
fn the_schema_describes_every_top_level_field() {
    let schema: serde_json::Value =
        serde_json::from_str(&ProxyConfig::json_schema()).expect("schema is JSON");
    for field in [
        "version",
        "workload",
        "inbound",
        "destinations",
        "opaquePorts",
        "tracing",
        "limits",
    ] {
        assert!(
            schema["properties"][field].is_object(),
            "schema lacks {field}"
        );
    }
}
