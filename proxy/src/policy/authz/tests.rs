use braid_proxy_config::{
    Action, AuthorizationMode, AuthorizationRule, DefaultAuthorization, Inbound,
};

use super::*;

const ORDER: &str = "spiffe://cluster.local/ns/shop/sa/order";
const LOADGEN: &str = "spiffe://cluster.local/ns/shop/sa/loadgen";
const FRONT: &str = "spiffe://cluster.local/ns/web/sa/front";

fn authorizer(rules: Option<Vec<AuthorizationRule>>, default: DefaultAuthorization) -> Authorizer {
    let inbound = Inbound {
        authorization: rules,
        default_authorization: default,
        policy: Some("shop/payment".into()),
        ..Inbound::default()
    };
    Authorizer::compile(&inbound, "shop", &PolicyCounters::default())
}

fn allow(rule: AuthorizationRule) -> AuthorizationRule {
    AuthorizationRule {
        action: Action::Allow,
        ..rule
    }
}

fn deny(rule: AuthorizationRule) -> AuthorizationRule {
    AuthorizationRule {
        action: Action::Deny,
        ..rule
    }
}

fn from(identities: &[&str]) -> AuthorizationRule {
    AuthorizationRule {
        identities: identities.iter().map(|s| s.to_string()).collect(),
        ..AuthorizationRule::default()
    }
}

/// Whether `caller` may `method path` on port 8080 (`None` for the method: a TCP connection).
fn http(auth: &Authorizer, caller: Option<&str>, method: &str, path: &str) -> Verdict {
    let caller = caller.map(|id| Caller::new(id.to_string()));
    auth.decide(&Access {
        caller: caller.as_ref(),
        port: 8080,
        http: Some(HttpAccess { method, path }),
    })
}

fn tcp(auth: &Authorizer, caller: Option<&str>, port: u16) -> Verdict {
    let caller = caller.map(|id| Caller::new(id.to_string()));
    auth.decide(&Access {
        caller: caller.as_ref(),
        port,
        http: None,
    })
}

#[test]
fn a_caller_is_told_by_its_identity_exact_or_by_prefix() {
    let auth = authorizer(
        Some(vec![
            from(&[ORDER]),
            from(&["spiffe://cluster.local/ns/web/*"]),
        ]),
        DefaultAuthorization::Allow,
    );
    assert_eq!(
        http(&auth, Some(ORDER), "GET", "/").reason,
        Reason::AllowRule(0)
    );
    assert_eq!(
        http(&auth, Some(FRONT), "GET", "/").reason,
        Reason::AllowRule(1)
    );
    let refused = http(&auth, Some(LOADGEN), "GET", "/");
    assert!(!refused.allowed);
    assert_eq!(refused.reason, Reason::NoAllowRule);
    // A prefix of a SPIFFE ID is not a namespace boundary unless it says so.
    assert!(
        !http(
            &auth,
            Some("spiffe://cluster.local/ns/shop/sa/order-evil"),
            "GET",
            "/"
        )
        .allowed
    );
}

#[test]
fn a_plaintext_caller_matches_no_rule_that_names_callers() {
    let by_id = authorizer(Some(vec![from(&["*"])]), DefaultAuthorization::Allow);
    assert!(
        http(&by_id, Some(LOADGEN), "GET", "/").allowed,
        "* is any identity"
    );
    assert!(!http(&by_id, None, "GET", "/").allowed);
    let by_namespace = authorizer(
        Some(vec![AuthorizationRule {
            namespaces: vec!["shop".into()],
            ..AuthorizationRule::default()
        }]),
        DefaultAuthorization::Allow,
    );
    assert!(http(&by_namespace, Some(ORDER), "GET", "/").allowed);
    assert!(!http(&by_namespace, Some(FRONT), "GET", "/").allowed);
    assert!(!http(&by_namespace, None, "GET", "/").allowed);
    // A rule that names no caller matches plaintext too.
    let by_path = authorizer(
        Some(vec![AuthorizationRule {
            paths: vec!["/healthz".into()],
            ..AuthorizationRule::default()
        }]),
        DefaultAuthorization::Allow,
    );
    assert!(http(&by_path, None, "GET", "/healthz").allowed);
}

#[test]
fn paths_methods_and_ports_narrow_a_rule() {
    let auth = authorizer(
        Some(vec![AuthorizationRule {
            identities: vec![ORDER.into()],
            paths: vec!["/pay".into(), "/refunds/*".into()],
            methods: vec!["POST".into()],
            ports: vec![8080],
            ..AuthorizationRule::default()
        }]),
        DefaultAuthorization::Allow,
    );
    assert!(http(&auth, Some(ORDER), "POST", "/pay").allowed);
    assert!(
        http(&auth, Some(ORDER), "post", "/refunds/7").allowed,
        "methods ignore case"
    );
    assert!(!http(&auth, Some(ORDER), "GET", "/pay").allowed);
    assert!(
        !http(&auth, Some(ORDER), "POST", "/pay/more").allowed,
        "exact path"
    );
    assert!(!http(&auth, Some(ORDER), "POST", "/").allowed);
    let caller = Caller::new(ORDER.into());
    let other_port = Access {
        caller: Some(&caller),
        port: 9090,
        http: Some(HttpAccess {
            method: "POST",
            path: "/pay",
        }),
    };
    assert!(!auth.decide(&other_port).allowed);
}

#[test]
fn any_matching_deny_rule_denies_before_allow_rules_are_read() {
    let auth = authorizer(
        Some(vec![
            from(&["spiffe://cluster.local/ns/shop/*"]),
            deny(AuthorizationRule {
                paths: vec!["/admin/*".into()],
                ..AuthorizationRule::default()
            }),
        ]),
        DefaultAuthorization::Allow,
    );
    assert_eq!(
        http(&auth, Some(ORDER), "GET", "/orders").reason,
        Reason::AllowRule(0)
    );
    let denied = http(&auth, Some(ORDER), "GET", "/admin/users");
    assert_eq!(
        denied,
        Verdict {
            allowed: false,
            reason: Reason::DenyRule(1)
        }
    );
}

#[test]
fn a_rule_is_named_by_its_place_in_the_whole_list() {
    // Rules are matched deny-first, whatever their order: the reason still names each by its
    // index in the list as written (the metrics' `rule` label).
    let auth = authorizer(
        Some(vec![
            deny(AuthorizationRule {
                paths: vec!["/admin/*".into()],
                ..AuthorizationRule::default()
            }),
            from(&["spiffe://cluster.local/ns/other/*"]),
            from(&["spiffe://cluster.local/ns/shop/*"]),
        ]),
        DefaultAuthorization::Deny,
    );
    assert_eq!(
        http(&auth, Some(ORDER), "GET", "/orders").reason,
        Reason::AllowRule(2)
    );
    assert_eq!(
        http(&auth, Some(ORDER), "GET", "/admin/users").reason,
        Reason::DenyRule(0)
    );
}

#[test]
fn an_empty_list_denies_everything() {
    let auth = authorizer(Some(Vec::new()), DefaultAuthorization::Allow);
    assert_eq!(http(&auth, Some(ORDER), "GET", "/").reason, Reason::NoRules);
    assert!(!http(&auth, Some(ORDER), "GET", "/").allowed);
    assert!(!tcp(&auth, Some(ORDER), 5432).allowed);
}

#[test]
fn http_fields_never_allow_a_tcp_connection_and_always_deny_one() {
    let allow_http = authorizer(
        Some(vec![AuthorizationRule {
            identities: vec![ORDER.into()],
            methods: vec!["GET".into()],
            ..AuthorizationRule::default()
        }]),
        DefaultAuthorization::Allow,
    );
    assert!(http(&allow_http, Some(ORDER), "GET", "/").allowed);
    assert_eq!(
        tcp(&allow_http, Some(ORDER), 8080).reason,
        Reason::NoAllowRule
    );
    assert!(!tcp(&allow_http, Some(ORDER), 8080).allowed);
    let deny_http = authorizer(
        Some(vec![
            from(&[ORDER]),
            deny(AuthorizationRule {
                identities: vec![ORDER.into()],
                paths: vec!["/admin".into()],
                ..AuthorizationRule::default()
            }),
        ]),
        DefaultAuthorization::Allow,
    );
    assert!(http(&deny_http, Some(ORDER), "GET", "/").allowed);
    assert_eq!(
        tcp(&deny_http, Some(ORDER), 8080).reason,
        Reason::DenyRule(1)
    );
    assert!(allow_http.reads_requests() && deny_http.reads_requests());
    assert!(!authorizer(Some(vec![from(&[ORDER])]), DefaultAuthorization::Allow).reads_requests());
}

#[test]
fn the_mesh_default_decides_where_the_workload_has_no_rules() {
    let cases = [
        (DefaultAuthorization::Allow, [true, true, true]),
        (DefaultAuthorization::Mesh, [true, true, false]),
        (DefaultAuthorization::Namespace, [true, false, false]),
        (DefaultAuthorization::Deny, [false, false, false]),
    ];
    for (default, [same_namespace, other_namespace, plaintext]) in cases {
        let auth = authorizer(None, default);
        assert_eq!(
            http(&auth, Some(ORDER), "GET", "/").allowed,
            same_namespace,
            "{default:?}"
        );
        assert_eq!(
            tcp(&auth, Some(FRONT), 8080).allowed,
            other_namespace,
            "{default:?}"
        );
        assert_eq!(tcp(&auth, None, 8080).allowed, plaintext, "{default:?}");
        assert_eq!(tcp(&auth, None, 8080).reason, Reason::Default(default));
        assert_eq!(auth.allows_all(), default == DefaultAuthorization::Allow);
    }
    // Only DENY rules, none matching: the default still decides (a deny rule opens nothing).
    let auth = authorizer(
        Some(vec![deny(from(&[LOADGEN]))]),
        DefaultAuthorization::Namespace,
    );
    assert!(http(&auth, Some(ORDER), "GET", "/").allowed);
    assert!(!http(&auth, Some(FRONT), "GET", "/").allowed);
    assert_eq!(
        http(&auth, Some(LOADGEN), "GET", "/").reason,
        Reason::DenyRule(0)
    );
}

#[test]
fn dry_run_is_compiled_and_every_reason_has_its_counters() {
    let inbound = Inbound {
        authorization: Some(vec![allow(from(&[ORDER])), deny(from(&[LOADGEN]))]),
        authorization_mode: AuthorizationMode::DryRun,
        policy: Some("shop/payment".into()),
        ..Inbound::default()
    };
    let counters = PolicyCounters::default();
    let auth = Authorizer::compile(&inbound, "shop", &counters);
    assert!(auth.dry_run);
    let verdict = http(&auth, Some(LOADGEN), "GET", "/");
    auth.counters(verdict.reason)
        .count(true, crate::telemetry::policy::Outcome::WouldDeny);
    // The same counters, found by label, as a reload compiles them again.
    let again = Authorizer::compile(&inbound, "shop", &counters);
    assert_eq!(
        again
            .counters(Reason::DenyRule(1))
            .get(true, crate::telemetry::policy::Outcome::WouldDeny),
        1
    );
    let mut text = String::new();
    counters.render(&mut text);
    assert!(
        text.contains(
            "braid_proxy_inbound_authz_total{protocol=\"http\",decision=\"would_deny\",\
             policy=\"shop/payment\",rule=\"1\",reason=\"deny_rule\"} 1"
        ),
        "{text}"
    );
}

#[test]
fn a_callers_namespace_comes_from_its_spiffe_id() {
    assert_eq!(Caller::new(ORDER.into()).namespace.as_deref(), Some("shop"));
    assert_eq!(
        Caller::new("spiffe://example.org/workload".into()).namespace,
        None
    );
    assert_eq!(Caller::new("spiffe://td/ns//sa/x".into()).namespace, None);
}
