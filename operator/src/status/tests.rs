//! Status: conditions from outcomes and from the proxies' read-back.

use std::collections::{BTreeMap, HashMap};

use super::synced::{Heard, ProxyPod, tally};
use super::*;
use crate::workload::WorkloadKey;
use braid_api::{MeshPolicySpec, MtlsMode};

fn time(seconds: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("time"))
}

fn outcome(selected: u32, in_effect: u32, winner: Option<&str>) -> PolicyOutcome {
    PolicyOutcome {
        accepted: Ok(()),
        selected,
        governed: (0..in_effect).map(|i| shop(&format!("w{i}"))).collect(),
        client_side: false,
        overridden_by: winner.map(String::from),
        mtls_mode: MtlsMode::Strict,
        authz: crate::plan::authz::AuthzReview {
            summary: "default allow".into(),
            has_rules: false,
            unresolved: Vec::new(),
        },
    }
}

#[test]
fn a_policy_with_rules_reports_what_they_cannot_match() {
    let policy = MeshPolicy::new("payment", MeshPolicySpec::default());
    let mut dead = outcome(1, 1, None);
    dead.authz = crate::plan::authz::AuthzReview {
        summary: "2 rules".into(),
        has_rules: true,
        unresolved: vec![crate::plan::authz::Unresolved {
            reason: "UnknownNamespace",
            message: "authorization[1]: namespace shpo does not exist".into(),
        }],
    };
    let status = policy_status(&policy, &dead, &all_synced(), &time(1));
    assert_eq!(status.authorization.as_deref(), Some("2 rules"));
    let resolved = status
        .conditions
        .iter()
        .find(|c| c.type_ == RESOLVED_REFS)
        .expect("ResolvedRefs condition");
    assert_eq!(
        (resolved.status.as_str(), resolved.reason.as_str()),
        ("False", "UnknownNamespace")
    );
    assert!(resolved.message.contains("shpo"));
    let plain = policy_status(&policy, &outcome(1, 1, None), &all_synced(), &time(1));
    assert!(plain.conditions.iter().all(|c| c.type_ != RESOLVED_REFS));
    assert_eq!(plain.authorization.as_deref(), Some("default allow"));
}

fn condition_of<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("the condition is reported")
}

fn ready(status: &MeshPolicyStatus) -> (&str, &str) {
    let c = condition_of(&status.conditions, READY);
    (c.status.as_str(), c.reason.as_str())
}

fn all_synced() -> Synced {
    Synced {
        in_sync: 2,
        total: 2,
        behind: Vec::new(),
    }
}

#[test]
fn ready_says_in_effect_overridden_or_no_workloads() {
    let policy = MeshPolicy::new("p", MeshPolicySpec::default());
    assert_eq!(
        ready(&policy_status(
            &policy,
            &outcome(2, 2, None),
            &all_synced(),
            &time(1)
        )),
        ("True", "InEffect")
    );
    let overridden = policy_status(
        &policy,
        &outcome(2, 0, Some("strict")),
        &all_synced(),
        &time(1),
    );
    assert_eq!(ready(&overridden), ("False", "Overridden"));
    assert!(
        condition_of(&overridden.conditions, READY)
            .message
            .contains("strict")
    );
    assert_eq!(
        ready(&policy_status(
            &policy,
            &outcome(0, 0, None),
            &all_synced(),
            &time(1)
        )),
        ("False", "NoWorkloads")
    );
}

#[test]
fn transition_time_is_kept_while_the_status_holds() {
    let mut policy = MeshPolicy::new("p", MeshPolicySpec::default());
    policy.status = Some(policy_status(
        &policy,
        &outcome(1, 1, None),
        &all_synced(),
        &time(100),
    ));
    let again = policy_status(&policy, &outcome(1, 1, None), &all_synced(), &time(200));
    assert_eq!(
        condition_of(&again.conditions, READY).last_transition_time,
        time(100)
    );
    let changed = policy_status(&policy, &outcome(0, 0, None), &all_synced(), &time(300));
    assert_eq!(
        condition_of(&changed.conditions, READY).last_transition_time,
        time(300)
    );
}

fn ready_is(status: &str, reason: &str) -> Vec<Condition> {
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(1).expect("time"));
    vec![condition(
        READY,
        status == "True",
        reason,
        "m",
        None,
        &[],
        now,
    )]
}

#[test]
fn only_changes_of_status_or_reason_are_transitions() {
    assert_eq!(
        ready_transition(&[], &ready_is("True", "InEffect")),
        Some((true, "InEffect", "m"))
    );
    assert_eq!(
        ready_transition(&ready_is("True", "InEffect"), &ready_is("True", "InEffect")),
        None
    );
    assert_eq!(
        ready_transition(
            &ready_is("True", "InEffect"),
            &ready_is("False", "NoWorkloads")
        ),
        Some((false, "NoWorkloads", "m"))
    );
    assert_eq!(
        ready_transition(
            &ready_is("False", "NoWorkloads"),
            &ready_is("False", "Overridden")
        ),
        Some((false, "Overridden", "m"))
    );
}

fn shop(name: &str) -> WorkloadKey {
    WorkloadKey {
        namespace: "shop".into(),
        name: name.into(),
    }
}

fn proxy(uid: &str, workload: &str) -> ProxyPod {
    ProxyPod {
        uid: uid.into(),
        name: format!("shop/{workload}-{uid}"),
        ip: "10.0.0.1".into(),
        workload: shop(workload),
    }
}

fn runs(hash: &str, last_error: Option<&str>) -> Heard {
    Heard::Runs {
        hash: hash.into(),
        last_error: last_error.map(String::from),
    }
}

#[test]
fn the_tally_counts_proxies_on_the_latest_file_and_says_why_others_lag() {
    let pods = [
        proxy("a", "payment"),
        proxy("b", "payment"),
        proxy("c", "payment"),
        proxy("d", "payment"),
        proxy("e", "order"),
    ];
    let desired = BTreeMap::from([
        (shop("payment"), "new".to_owned()),
        (shop("order"), "o".to_owned()),
    ]);
    let heard = HashMap::from([
        ("a".to_owned(), runs("new", None)),
        (
            "b".to_owned(),
            runs(
                "old",
                Some(
                    "cannot read /etc/braid/config/proxy.json: Permission denied (os error 13); keeping the last good config",
                ),
            ),
        ),
        (
            "c".to_owned(),
            Heard::Unreachable("10.0.0.1:15020: connection refused".into()),
        ),
        ("e".to_owned(), runs("stale", None)),
    ]);
    let payment = tally(&pods, |w| w.name == "payment", &desired, &heard);
    assert_eq!(
        (payment.in_sync, payment.total, payment.column().as_str()),
        (1, 4, "1/4")
    );
    let why: Vec<(&str, &str)> = payment
        .behind
        .iter()
        .map(|b| (b.pod.as_str(), b.why.as_str()))
        .collect();
    assert_eq!(why[0].0, "shop/payment-b");
    assert!(why[0].1.contains("Permission denied"), "{why:?}");
    assert!(why[1].1.contains("connection refused"), "{why:?}");
    assert_eq!(why[2], ("shop/payment-d", "not read back yet"));
    assert!(!payment.complete());
    let message = payment.message();
    assert!(
        message.starts_with(
            "3 of 4 proxies concerned do not run the latest config: shop/payment-b (cannot read"
        ),
        "{message}"
    );
    let order = tally(&pods, |w| w.name == "order", &desired, &heard);
    assert_eq!(order.behind[0].why, "runs an older config");
    let nobody = tally(&pods, |_| false, &desired, &heard);
    assert!(nobody.complete());
    assert_eq!(nobody.column(), "0/0");
}

#[test]
fn a_long_list_of_laggards_is_cut_short() {
    let pods: Vec<ProxyPod> = (0..8).map(|i| proxy(&format!("p{i}"), "order")).collect();
    let synced = tally(
        &pods,
        |_| true,
        &BTreeMap::from([(shop("order"), "h".to_owned())]),
        &HashMap::new(),
    );
    assert!(
        synced.message().ends_with("; and 3 more"),
        "{}",
        synced.message()
    );
}

#[test]
fn a_policy_is_ready_only_once_its_proxies_run_it() {
    let policy = MeshPolicy::new("payment", MeshPolicySpec::default());
    let lagging = Synced {
        in_sync: 1,
        total: 2,
        behind: vec![super::synced::Behind {
            pod: "shop/payment-1".into(),
            why: "proxy.json refused, keeping the last good config: requires feature x".into(),
        }],
    };
    let status = policy_status(&policy, &outcome(1, 1, None), &lagging, &time(1));
    assert_eq!(ready(&status), ("False", "NotProgrammed"));
    assert_eq!(status.synced.as_deref(), Some("1/2"));
    let programmed = condition_of(&status.conditions, PROGRAMMED);
    assert_eq!(
        (programmed.status.as_str(), programmed.reason.as_str()),
        ("False", "Pending")
    );
    assert!(
        programmed
            .message
            .contains("shop/payment-1 (proxy.json refused"),
        "{}",
        programmed.message
    );
    let done = policy_status(&policy, &outcome(1, 1, None), &all_synced(), &time(2));
    assert_eq!(ready(&done), ("True", "InEffect"));
    assert_eq!(condition_of(&done.conditions, PROGRAMMED).status, "True");
    assert_eq!(done.synced.as_deref(), Some("2/2"));
}

#[test]
fn only_running_pods_with_the_proxy_that_are_not_terminating_are_read_back() {
    use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
    let pod = |name: &str, phase: &str, ip: Option<&str>, sidecar_as_init: Option<bool>| {
        let proxy = Container {
            name: braid_sidecar::PROXY_CONTAINER.into(),
            ..Default::default()
        };
        let app = Container {
            name: "app".into(),
            ..Default::default()
        };
        let (containers, init) = match sidecar_as_init {
            Some(true) => (vec![app], Some(vec![proxy])),
            Some(false) => (vec![app, proxy], None),
            None => (vec![app], None),
        };
        std::sync::Arc::new(Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some([(braid_api::WORKLOAD_LABEL.to_owned(), "order".to_owned())].into()),
                deletion_timestamp: (name == "terminating").then_some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers,
                init_containers: init,
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: ip.map(String::from),
                ..Default::default()
            }),
        })
    };
    let pods = [
        pod("native", "Running", Some("10.0.0.1"), Some(true)),
        pod("classic", "Running", Some("10.0.0.2"), Some(false)),
        pod("pending", "Pending", None, Some(true)),
        pod("no-ip", "Running", None, Some(true)),
        pod("not-injected", "Running", Some("10.0.0.3"), None),
        pod("terminating", "Running", Some("10.0.0.4"), Some(true)),
    ];
    let read: Vec<(String, String)> = super::synced::proxy_pods(&pods)
        .into_iter()
        .map(|p| (p.name, p.ip))
        .collect();
    assert_eq!(
        read,
        [
            ("shop/native".to_owned(), "10.0.0.1".to_owned()),
            ("shop/classic".to_owned(), "10.0.0.2".to_owned())
        ]
    );
}
