//! Authorization in the plan: rules, mode and the Mesh default written, the feature required,
//! the policy reviewed.

use super::*;

#[test]
fn authorization_is_written_required_and_reviewed() {
    let mut snapshot = shop();
    let rules = vec![
        braid_api::AuthorizationRule {
            from: Some(braid_api::Source {
                identities: vec!["spiffe://cluster.local/ns/shop/sa/order".into()],
                ..Default::default()
            }),
            to: Some(braid_api::Target {
                paths: vec!["/pay".into()],
                methods: vec!["post".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
        braid_api::AuthorizationRule {
            action: Some(braid_api::RuleAction::Deny),
            from: Some(braid_api::Source {
                namespaces: vec!["web".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    snapshot.policies[1] = policy(
        "payment-strict",
        200,
        Some(&[("app", "payment")]),
        MeshPolicySpec {
            authorization: Some(rules),
            authorization_mode: Some(braid_api::AuthorizationMode::DryRun),
            ..Default::default()
        },
    );
    snapshot.mesh.default_authorization = braid_api::DefaultAuthorization::Namespace;
    let plan = plan(&snapshot);
    let written = plan
        .config_for(&key("payment-v1"), &snapshot)
        .expect("a config");
    let inbound = &written.inbound;
    let rules = inbound.authorization.as_ref().expect("rules");
    assert_eq!(rules[0].methods, ["POST"], "methods upper-cased");
    assert_eq!(rules[1].action, config::Action::Deny);
    assert_eq!(
        inbound.authorization_mode,
        config::AuthorizationMode::DryRun
    );
    assert_eq!(
        inbound.default_authorization,
        config::DefaultAuthorization::Namespace
    );
    assert_eq!(
        written.requires,
        ["authorization"],
        "an older proxy must refuse it"
    );
    assert_eq!(written.version, 2);
    let order = plan.config_for(&key("order"), &snapshot).expect("a config");
    assert_eq!(
        order.inbound.default_authorization,
        config::DefaultAuthorization::Namespace,
        "the Mesh default reaches workloads without rules"
    );
    assert_eq!(order.requires, ["authorization"]);
    let outcome = &plan.policies[&("shop".to_string(), "payment-strict".to_string())];
    assert_eq!(outcome.authz.summary, "2 rules, dry-run");
    let reasons: Vec<_> = outcome.authz.unresolved.iter().map(|u| u.reason).collect();
    assert_eq!(
        reasons,
        ["UnknownNamespace"],
        "namespace web does not exist"
    );
    snapshot.mesh.default_authorization = braid_api::DefaultAuthorization::Allow;
    let plain = super::plan(&shop())
        .config_for(&key("order"), &snapshot)
        .expect("a config");
    assert_eq!(
        (plain.version, plain.requires.len()),
        (1, 0),
        "release-1 proxies read it"
    );
}
