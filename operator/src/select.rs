//! Label selectors and the precedence between MeshPolicies (DESIGN.md): where two policies select
//! the same workload, the more specific selector wins, then the older policy, then the name.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use braid_api::MeshPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `selector` selects an object with `labels`. `None` and the empty selector select all.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    labels_match
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|expression| {
                let value = labels.get(&expression.key);
                let values = expression.values.as_deref().unwrap_or_default();
                match expression.operator.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    // The API server refuses other operators; an unknown one selects nothing.
                    _ => false,
                }
            })
}

/// How specific a selector is: the number of its requirements.
pub fn specificity(selector: Option<&LabelSelector>) -> usize {
    selector.map_or(0, |s| {
        s.match_labels.as_ref().map_or(0, BTreeMap::len)
            + s.match_expressions.as_ref().map_or(0, Vec::len)
    })
}

/// Orders policies so that the winner comes first: more specific, then older, then by name.
pub fn precedence(a: &MeshPolicy, b: &MeshPolicy) -> Ordering {
    specificity(b.spec.selector.as_ref())
        .cmp(&specificity(a.spec.selector.as_ref()))
        .then_with(|| creation(a).cmp(&creation(b)))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

fn creation(policy: &MeshPolicy) -> Option<i64> {
    policy
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_api::MeshPolicySpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(pairs)),
            match_expressions: None,
        }
    }

    fn policy(name: &str, created: i64, selector: Option<LabelSelector>) -> MeshPolicy {
        let mut policy = MeshPolicy::new(
            name,
            MeshPolicySpec {
                selector,
                ..Default::default()
            },
        );
        policy.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).expect("valid time"),
        ));
        policy
    }

    #[test]
    fn match_labels_and_expressions() {
        let pod = labels(&[("app", "payment"), ("version", "v2")]);
        assert!(selects(None, &pod));
        assert!(selects(Some(&LabelSelector::default()), &pod));
        assert!(selects(Some(&selector(&[("app", "payment")])), &pod));
        assert!(!selects(Some(&selector(&[("app", "order")])), &pod));
        let expression = |operator: &str, values: &[&str]| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "version".into(),
                operator: operator.into(),
                values: Some(values.iter().map(|v| (*v).into()).collect()),
            }]),
        };
        assert!(selects(Some(&expression("In", &["v1", "v2"])), &pod));
        assert!(!selects(Some(&expression("NotIn", &["v2"])), &pod));
        assert!(selects(Some(&expression("Exists", &[])), &pod));
        assert!(!selects(Some(&expression("DoesNotExist", &[])), &pod));
        assert!(!selects(Some(&expression("Sometimes", &[])), &pod));
    }

    #[test]
    fn more_specific_then_older_then_name_wins() {
        let broad_old = policy("a-broad", 100, None);
        let specific_new = policy("z-specific", 200, Some(selector(&[("app", "payment")])));
        let specific_old = policy("y-specific", 150, Some(selector(&[("app", "payment")])));
        let specific_old_twin = policy("x-specific", 150, Some(selector(&[("app", "payment")])));
        let mut policies = [&broad_old, &specific_new, &specific_old, &specific_old_twin];
        policies.sort_by(|a, b| precedence(a, b));
        let order: Vec<_> = policies
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(order, ["x-specific", "y-specific", "z-specific", "a-broad"]);
    }
}
