//! Objects the API server refuses (naming the field: bad durations, rules, retry settings that
//! cannot hold, a circuit breaker that would fail every request), and references the operator reports in
//! status: a policy that selects nothing or names what no caller can be, a route to a missing
//! Service.

use super::*;

#[test]
fn invalid_objects_are_refused_and_bad_references_reported() -> anyhow::Result<()> {
    let cluster = Cluster::from_env();
    let namespace = cluster.namespace("braid-e2e-status")?;
    let ns = namespace.name.clone();
    let ns = ns.as_str();
    let refused = cluster
        .apply(&json!({
            "apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute", "metadata": {"name": "zero", "namespace": ns},
            "spec": {"service": "payment", "rules": [{"backends": [{"service": "payment-v1", "weight": 0}]}]}
        }))
        .expect_err("a route whose weights add up to 0 was accepted");
    ensure!(
        refused
            .to_string()
            .contains("backend weights must add up to more than 0"),
        "{refused}"
    );
    let refused = cluster
        .apply(&json!({
            "apiVersion": "braid.dev/v1alpha1", "kind": "MeshPolicy", "metadata": {"name": "bad", "namespace": ns},
            "spec": {"timeouts": {"request": "soon"}}
        }))
        .expect_err("a policy with a bad duration was accepted");
    ensure!(
        refused.to_string().contains("spec.timeouts.request"),
        "{refused}"
    );
    // Authorization rules the API server refuses, naming the field.
    for (rule, field, message) in [
        (
            json!({"from": {"identities": ["order"]}}),
            "spec.authorization[0].from.identities",
            "spiffe://",
        ),
        (
            json!({"to": {"paths": ["charge"]}}),
            "spec.authorization[0].to.paths",
            "starts with '/'",
        ),
        (
            json!({"action": "MAYBE"}),
            "spec.authorization[0].action",
            "ALLOW",
        ),
    ] {
        let refused = cluster
            .apply(&json!({
                "apiVersion": "braid.dev/v1alpha1", "kind": "MeshPolicy",
                "metadata": {"name": "bad-rule", "namespace": ns},
                "spec": {"authorization": [rule]}
            }))
            .expect_err("a bad authorization rule was accepted");
        let refused = refused.to_string();
        ensure!(
            refused.contains(field) && refused.contains(message),
            "{field}: {refused}"
        );
    }
    // Retry settings that cannot hold, refused naming the field: a try longer than the whole
    // request, a budget over 100%.
    for (kind, spec, field, message) in [
        (
            "MeshPolicy",
            json!({"timeouts": {"request": "1s"}, "retries": {"perTryTimeout": "2s"}}),
            "spec.retries.perTryTimeout",
            "must not exceed timeouts.request",
        ),
        (
            "MeshPolicy",
            json!({"retries": {"budget": {"percent": 150}}}),
            "spec.retries.budget.percent",
            "100",
        ),
        (
            "MeshRoute",
            json!({"service": "payment", "rules": [{"timeout": "1s",
                "retries": {"perTryTimeout": "2s"},
                "backends": [{"service": "payment-v1", "weight": 100}]}]}),
            "spec.rules[0].retries.perTryTimeout",
            "must not exceed timeout",
        ),
    ] {
        let refused = cluster
            .apply(&json!({
                "apiVersion": "braid.dev/v1alpha1", "kind": kind,
                "metadata": {"name": "bad-retries", "namespace": ns}, "spec": spec
            }))
            .expect_err("an impossible retry setting was accepted");
        let refused = refused.to_string();
        ensure!(
            refused.contains(field) && refused.contains(message),
            "{field}: {refused}"
        );
    }
    // A circuit breaker that would fail every request: no connection, no request in flight.
    for field in ["maxConnections", "maxRequests"] {
        let refused = cluster
            .apply(&json!({
                "apiVersion": "braid.dev/v1alpha1", "kind": "MeshPolicy",
                "metadata": {"name": "bad-breaker", "namespace": ns},
                "spec": {"circuitBreaker": {field: 0}}
            }))
            .expect_err("a circuit breaker of 0 was accepted");
        let refused = refused.to_string();
        ensure!(
            refused.contains(&format!("spec.circuitBreaker.{field}"))
                && refused.contains("greater than or equal to 1"),
            "{field}: {refused}"
        );
    }

    cluster.apply(&json!({
        "apiVersion": "braid.dev/v1alpha1", "kind": "MeshPolicy", "metadata": {"name": "ghost", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "ghost"}},
                 "authorization": [{"from": {"identities": ["spiffe://example.org/ns/x/sa/y"],
                                             "namespaces": ["no-such-namespace"]}}]}
    }))?;
    cluster.apply(&json!({
        "apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute", "metadata": {"name": "nowhere", "namespace": ns},
        "spec": {"service": "missing", "rules": [{"backends": [{"service": "missing-v1", "weight": 100}]}]}
    }))?;
    eventually(WAIT, || {
        ensure!(
            condition(&cluster, "meshpolicy", ns, "ghost", "Ready")?
                == ("False".into(), "NoWorkloads".into())
        );
        ensure!(
            condition(&cluster, "meshroute", ns, "nowhere", "Ready")?
                == ("False".into(), "ServiceNotFound".into())
        );
        ensure!(
            condition(&cluster, "meshpolicy", ns, "ghost", "ResolvedRefs")?
                == ("False".into(), "IdentityOutsideTrustDomain".into())
        );
        Ok(())
    })?;
    let table = cluster.kubectl(&["get", "meshpolicies", "-n", ns])?;
    ensure!(
        table.contains("MTLS")
            && table.contains("WORKLOADS")
            && table.contains("AUTHZ")
            && table.contains("1 rule")
            && table.contains("False"),
        "kubectl get shows:\n{table}"
    );
    let described = cluster.kubectl(&["describe", "meshpolicy", "ghost", "-n", ns])?;
    ensure!(
        described.contains("no-such-namespace does not exist"),
        "describe shows:\n{described}"
    );
    let described = cluster.kubectl(&["describe", "meshroute", "nowhere", "-n", ns])?;
    ensure!(
        described.contains("ServiceNotFound") && described.contains("missing"),
        "describe shows:\n{described}"
    );
    Ok(())
}
