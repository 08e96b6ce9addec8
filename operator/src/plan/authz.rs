//! What the operator says about a MeshPolicy's authorization: a summary for the `AUTHZ` column,
//! and what its rules name that no request can match — an identity outside the trust domain, a
//! namespace that does not exist, a port no selected pod declares. Such a rule is still written
//! (the proxy enforces what it says), but the policy reports it, so that a typo that makes a
//! rule dead is seen rather than silently allowing or denying less than meant.

use std::collections::BTreeSet;

use braid_api::{AuthorizationMode, DefaultAuthorization, MeshPolicySpec};

/// Something a policy's rules name that cannot match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// The condition's reason: `IdentityOutsideTrustDomain`, `UnknownNamespace` or
    /// `PortNotExposed`.
    pub reason: &'static str,
    /// What, where.
    pub message: String,
}

/// The authorization part of a policy's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzReview {
    /// `3 rules`, `1 rule, dry-run`, `deny all`, `default allow`.
    pub summary: String,
    /// Whether the policy has rules at all (and so a `ResolvedRefs` condition).
    pub has_rules: bool,
    /// What its rules name that cannot match, in rule order.
    pub unresolved: Vec<Unresolved>,
}

/// The Mesh default's name, as the CRD spells it.
pub fn default_name(default: DefaultAuthorization) -> &'static str {
    match default {
        DefaultAuthorization::Allow => "allow",
        DefaultAuthorization::Mesh => "mesh",
        DefaultAuthorization::Namespace => "namespace",
        DefaultAuthorization::Deny => "deny",
    }
}

/// Reviews `spec`'s authorization, in a mesh of `trust_domain` whose default is `default`,
/// against the cluster's `namespaces` and the ports its selected pods declare (`exposed`;
/// `None` when it selects no pod).
pub fn review(
    spec: &MeshPolicySpec,
    trust_domain: &str,
    default: DefaultAuthorization,
    namespaces: &BTreeSet<String>,
    exposed: Option<&BTreeSet<u16>>,
) -> AuthzReview {
    let dry_run = spec.authorization_mode == Some(AuthorizationMode::DryRun);
    let Some(rules) = &spec.authorization else {
        return AuthzReview {
            summary: format!("default {}", default_name(default)),
            has_rules: false,
            unresolved: Vec::new(),
        };
    };
    let mut summary = match rules.len() {
        0 => "deny all".to_string(),
        1 => "1 rule".to_string(),
        n => format!("{n} rules"),
    };
    if dry_run {
        summary.push_str(", dry-run");
    }
    let domain = format!("spiffe://{trust_domain}/");
    let in_domain = |id: &str| {
        let head = id.trim_end_matches('*');
        id == "*" || head.starts_with(&domain) || (id.ends_with('*') && domain.starts_with(head))
    };
    let mut unresolved = Vec::new();
    for (r, rule) in rules.iter().enumerate() {
        let from = rule.from.clone().unwrap_or_default();
        for id in from.identities.iter().filter(|id| !in_domain(id)) {
            unresolved.push(Unresolved {
                reason: "IdentityOutsideTrustDomain",
                message: format!(
                    "authorization[{r}]: {id} is outside trust domain {trust_domain}: no caller has it"
                ),
            });
        }
        for namespace in from.namespaces.iter().filter(|n| !namespaces.contains(*n)) {
            unresolved.push(Unresolved {
                reason: "UnknownNamespace",
                message: format!("authorization[{r}]: namespace {namespace} does not exist"),
            });
        }
        let ports = rule.to.iter().flat_map(|to| &to.ports);
        if let Some(exposed) = exposed {
            for port in ports.filter(|p| u16::try_from(**p).is_ok_and(|p| !exposed.contains(&p))) {
                unresolved.push(Unresolved {
                    reason: "PortNotExposed",
                    message: format!(
                        "authorization[{r}]: port {port} is declared by no pod the policy selects"
                    ),
                });
            }
        }
    }
    AuthzReview {
        summary,
        has_rules: true,
        unresolved,
    }
}

#[cfg(test)]
mod tests {
    use braid_api::{AuthorizationRule, Source, Target};

    use super::*;

    fn spec(
        rules: Option<Vec<AuthorizationRule>>,
        mode: Option<AuthorizationMode>,
    ) -> MeshPolicySpec {
        MeshPolicySpec {
            authorization: rules,
            authorization_mode: mode,
            ..MeshPolicySpec::default()
        }
    }

    #[test]
    fn the_summary_says_what_is_in_effect() {
        let namespaces = BTreeSet::new();
        let summary = |spec: &MeshPolicySpec, default| {
            review(spec, "cluster.local", default, &namespaces, None).summary
        };
        assert_eq!(
            summary(&spec(None, None), DefaultAuthorization::Namespace),
            "default namespace"
        );
        assert_eq!(
            summary(&spec(Some(vec![]), None), DefaultAuthorization::Allow),
            "deny all"
        );
        let three = Some(vec![AuthorizationRule::default(); 3]);
        assert_eq!(
            summary(&spec(three.clone(), None), DefaultAuthorization::Allow),
            "3 rules"
        );
        assert_eq!(
            summary(
                &spec(three, Some(AuthorizationMode::DryRun)),
                DefaultAuthorization::Allow
            ),
            "3 rules, dry-run"
        );
    }

    #[test]
    fn what_no_request_can_match_is_named_with_its_reason() {
        let rule = AuthorizationRule {
            from: Some(Source {
                identities: vec![
                    "spiffe://cluster.local/ns/shop/sa/order".into(),
                    "spiffe://cluster.local/ns/web/*".into(),
                    "spiffe://example.org/ns/shop/sa/order".into(),
                    "*".into(),
                ],
                namespaces: vec!["shop".into(), "shpo".into()],
            }),
            to: Some(Target {
                ports: vec![8080, 9090],
                ..Target::default()
            }),
            ..AuthorizationRule::default()
        };
        let namespaces: BTreeSet<String> = ["shop".to_string(), "web".to_string()].into();
        let exposed: BTreeSet<u16> = [8080].into();
        let review = review(
            &spec(Some(vec![rule]), None),
            "cluster.local",
            DefaultAuthorization::Allow,
            &namespaces,
            Some(&exposed),
        );
        let reasons: Vec<_> = review.unresolved.iter().map(|u| u.reason).collect();
        assert_eq!(
            reasons,
            [
                "IdentityOutsideTrustDomain",
                "UnknownNamespace",
                "PortNotExposed"
            ]
        );
        assert!(
            review.unresolved[0]
                .message
                .contains("spiffe://example.org/ns/shop/sa/order")
        );
        assert!(review.unresolved[1].message.contains("shpo"));
        assert!(review.unresolved[2].message.contains("9090"));
    }
}
