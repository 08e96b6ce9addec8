use super::*;

fn rule(on_5xx: bool, on_gateway_error: bool, on_reset: bool) -> RetryRule {
    RetryRule::compile(&RetryPolicy {
        attempts: 2,
        per_try_timeout_ms: None,
        on_5xx,
        on_gateway_error,
        on_connect_failure: true,
        on_reset,
        on_statuses: vec![409],
        budget_percent: 20,
        budget_min_per_second: 10,
    })
}

fn attempted(idempotent: bool) -> Attempted {
    Attempted {
        retries: 0,
        failovers: 0,
        idempotent,
        replayable: true,
        out_of_time: false,
    }
}

fn status(status: u16) -> Outcome {
    Outcome::Answered { status, grpc: None }
}

#[test]
fn a_failure_that_sent_nothing_fails_over_with_or_without_a_policy_up_to_the_limit() {
    let refused = Outcome::Failed(Kind::ConnectRefused);
    for rule in [None, Some(&rule(false, false, false))] {
        assert_eq!(decide(rule, refused, attempted(false)), Verdict::FailOver);
        let mut tried = attempted(false);
        tried.failovers = FAILOVERS;
        let expected = if rule.is_some() {
            Verdict::Retry
        } else {
            Verdict::Done
        };
        assert_eq!(decide(rule, refused, tried), expected, "{rule:?}");
    }
    for kind in [
        Kind::ConnectTimeout,
        Kind::Tls,
        Kind::IdentityMismatch,
        // The peer's proxy said its application did not get it.
        Kind::Unprocessed,
    ] {
        assert_eq!(
            decide(None, Outcome::Failed(kind), attempted(false)),
            Verdict::FailOver
        );
    }
    // A reset may have reached the peer: no failover.
    assert_eq!(
        decide(None, Outcome::Failed(Kind::Reset), attempted(true)),
        Verdict::Done
    );
}

#[test]
fn a_sent_request_is_retried_only_when_idempotent_or_told_unprocessed() {
    let rule = rule(false, true, false);
    assert_eq!(
        decide(Some(&rule), status(503), attempted(true)),
        Verdict::Retry
    );
    assert_eq!(
        decide(Some(&rule), status(503), attempted(false)),
        Verdict::Done,
        "a POST that reached the peer"
    );
    let unavailable = Outcome::Answered {
        status: 200,
        grpc: Some(GRPC_UNAVAILABLE),
    };
    assert_eq!(
        decide(Some(&rule), unavailable, attempted(false)),
        Verdict::Retry,
        "gRPC UNAVAILABLE: the server did not take the call"
    );
    let internal = Outcome::Answered {
        status: 200,
        grpc: Some(13),
    };
    assert_eq!(
        decide(Some(&rule), internal, attempted(false)),
        Verdict::Done
    );
}

#[test]
fn only_the_rules_conditions_are_retried() {
    let gateway = rule(false, true, false);
    let any_5xx = rule(true, false, false);
    let reset = rule(false, false, true);
    let get = attempted(true);
    assert_eq!(decide(Some(&gateway), status(500), get), Verdict::Done);
    assert_eq!(decide(Some(&any_5xx), status(500), get), Verdict::Retry);
    assert_eq!(decide(Some(&gateway), status(504), get), Verdict::Retry);
    assert_eq!(decide(Some(&gateway), status(404), get), Verdict::Done);
    assert_eq!(
        decide(Some(&gateway), status(409), get),
        Verdict::Retry,
        "a listed status"
    );
    assert_eq!(decide(None, status(503), get), Verdict::Done, "no policy");
    let reset_outcome = Outcome::Failed(Kind::Reset);
    assert_eq!(decide(Some(&gateway), reset_outcome, get), Verdict::Done);
    assert_eq!(decide(Some(&reset), reset_outcome, get), Verdict::Retry);
    let timeout = Outcome::Failed(Kind::Timeout);
    assert_eq!(
        decide(Some(&gateway), timeout, get),
        Verdict::Retry,
        "a per-try timeout is a gateway error"
    );
    assert_eq!(decide(Some(&reset), timeout, get), Verdict::Done);
}

#[test]
fn attempts_a_large_body_and_the_request_deadline_end_retries() {
    let rule = rule(true, true, true);
    let mut tried = attempted(true);
    tried.retries = 2;
    assert_eq!(decide(Some(&rule), status(503), tried), Verdict::Done);
    let mut large = attempted(true);
    large.replayable = false;
    assert_eq!(
        decide(Some(&rule), status(503), large),
        Verdict::Done,
        "a body over 64 KiB"
    );
    assert_eq!(
        decide(None, Outcome::Failed(Kind::ConnectRefused), large),
        Verdict::FailOver,
        "nothing was sent: it may go elsewhere whatever its body"
    );
    let mut late = attempted(true);
    late.out_of_time = true;
    assert_eq!(
        decide(Some(&rule), Outcome::Failed(Kind::ConnectRefused), late),
        Verdict::Done
    );
}

#[test]
fn the_budget_allows_its_floor_then_a_share_of_requests_over_a_sliding_window() {
    let budget = Budget::default();
    // No requests: the floor alone, 1 per second over 10 s.
    let granted = (0..20).filter(|_| budget.withdraw(1, 20, 1)).count();
    assert_eq!(granted, 10);
    // 100 requests at second 2 add 20% of them.
    for _ in 0..100 {
        budget.deposit(2);
    }
    let granted = (0..50).filter(|_| budget.withdraw(2, 20, 1)).count();
    assert_eq!(granted, 20);
    // Ten seconds after second 1 its retries leave the window; second 2's requests and
    // retries are still in it.
    let granted = (0..50).filter(|_| budget.withdraw(11, 20, 1)).count();
    assert_eq!(granted, 10, "the floor's ten, as second 1's retries left");
    // Past the window everything is forgotten but the floor.
    let granted = (0..50).filter(|_| budget.withdraw(30, 20, 1)).count();
    assert_eq!(granted, 10);
}

#[test]
fn the_budget_bounds_retries_to_its_share_under_steady_failure() {
    let budget = Budget::default();
    let (mut requests, mut retries) = (0u64, 0u64);
    for second in 1..=60 {
        for _ in 0..200 {
            budget.deposit(second);
            requests += 1;
            if budget.withdraw(second, 20, 10) {
                retries += 1;
            }
        }
    }
    let share = retries as f64 / requests as f64;
    // 20% plus the floor of 10/s over 200/s: 25% at most.
    assert!(share <= 0.25 + 1e-9, "{share}");
    assert!(share >= 0.2, "{share}");
}

#[test]
fn a_compiled_rule_keeps_its_numbers() {
    let policy = RetryPolicy {
        attempts: 3,
        per_try_timeout_ms: Some(250),
        on_5xx: true,
        on_gateway_error: false,
        on_connect_failure: false,
        on_reset: false,
        on_statuses: vec![],
        budget_percent: 50,
        budget_min_per_second: 2,
    };
    let rule = RetryRule::compile(&policy);
    assert_eq!(rule.attempts, 3);
    assert_eq!(rule.per_try_timeout, Some(Duration::from_millis(250)));
    assert_eq!((rule.budget_percent, rule.budget_min_per_second), (50, 2));
}
