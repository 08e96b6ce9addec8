//! One AdmissionReview in, one AdmissionReview out. Every input, however malformed, gets a
//! response with a message that says what was wrong; nothing here panics or fails the HTTP call.

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

use crate::inject::{InjectSettings, Skip, inject};

/// What became of a review, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pod was injected.
    Injected,
    /// The pod was admitted unchanged (opted out, hostNetwork, already injected, not a create).
    Skipped,
    /// The pod was refused (a bad annotation).
    Denied,
    /// The review itself was malformed.
    Invalid,
}

impl Outcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::Invalid => "invalid",
        }
    }
}

/// Answers a review given as the raw HTTP body.
pub fn review(body: &[u8], settings: &InjectSettings) -> (AdmissionReview<DynamicObject>, Outcome) {
    let (response, outcome) = respond(body, settings);
    (response.into_review(), outcome)
}

fn invalid(uid: &str, message: String) -> (AdmissionResponse, Outcome) {
    let mut response = AdmissionResponse::invalid(message);
    response.uid = uid.to_owned();
    (response, Outcome::Invalid)
}

fn respond(body: &[u8], settings: &InjectSettings) -> (AdmissionResponse, Outcome) {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => {
            return invalid(
                "",
                format!("the body is not a JSON AdmissionReview: {error}"),
            );
        }
    };
    let uid = value
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if value.get("request").is_none() {
        return invalid(&uid, "the AdmissionReview has no request".into());
    }
    let kind = value
        .pointer("/request/kind/kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != "Pod" {
        return invalid(
            &uid,
            format!("braid-webhook admits Pods only, not {kind:?}: check the webhook's rules"),
        );
    }
    let review: AdmissionReview<Pod> = match serde_json::from_value(value) {
        Ok(review) => review,
        Err(error) => {
            return invalid(
                &uid,
                format!("the AdmissionReview does not hold a valid Pod request: {error}"),
            );
        }
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(error) => return invalid(&uid, format!("the AdmissionReview is incomplete: {error}")),
    };
    let response = AdmissionResponse::from(&request);
    if request.operation != Operation::Create {
        return (response, Outcome::Skipped);
    }
    let Some(pod) = request.object.as_ref() else {
        return (
            response.deny("the request carries no Pod object"),
            Outcome::Denied,
        );
    };
    match inject(pod, settings, None) {
        Err(error) => (
            response.deny(format!("braid-webhook cannot inject this pod: {error}")),
            Outcome::Denied,
        ),
        Ok(Err(Skip::OptedOut | Skip::HostNetwork | Skip::AlreadyInjected)) => {
            (response, Outcome::Skipped)
        }
        Ok(Ok(injected)) => {
            let (Ok(before), Ok(after)) =
                (serde_json::to_value(pod), serde_json::to_value(&injected))
            else {
                return (
                    response.deny("braid-webhook could not serialize the pod"),
                    Outcome::Denied,
                );
            };
            match response
                .clone()
                .with_patch(json_patch::diff(&before, &after))
            {
                Ok(patched) => (patched, Outcome::Injected),
                Err(error) => (
                    response.deny(format!("braid-webhook could not encode its patch: {error}")),
                    Outcome::Denied,
                ),
            }
        }
    }
}
