//! `braid-webhook inject -f FILE`: manual injection for GitOps users. Reads multi-document YAML
//! (Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs) and prints every
//! document, with pods and pod templates injected through [`crate::inject::inject`]. Documents of
//! other kinds pass through unchanged.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::inject::{InjectSettings, inject};

/// Why a manifest could not be injected; names the document.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The input is not YAML.
    #[error("the input is not valid YAML: {0}")]
    Yaml(String),
    /// A document is not a valid object of its kind.
    #[error("document {index} ({kind} {name}): {message}")]
    Document {
        /// 1-based position in the input.
        index: usize,
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// Where the pod template sits in a workload of each kind.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects every pod and pod template of `input` and returns the documents as YAML.
pub fn inject_manifests(input: &str, settings: &InjectSettings) -> Result<String, CliError> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(input).map_err(|e| CliError::Yaml(e.to_string()))?;
    let mut output = String::new();
    for (position, mut document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        let kind = document["kind"].as_str().unwrap_or_default().to_owned();
        let name = document
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let fail = |message: String| CliError::Document {
            index: position + 1,
            kind: kind.clone(),
            name: name.clone(),
            message,
        };
        if kind == "Pod" {
            let pod: Pod =
                serde_json::from_value(document.clone()).map_err(|e| fail(e.to_string()))?;
            if let Ok(injected) = inject(&pod, settings, None).map_err(|e| fail(e.to_string()))? {
                document = serde_json::to_value(injected).map_err(|e| fail(e.to_string()))?;
            }
        } else if let Some(pointer) = template_pointer(&kind) {
            let template = document
                .pointer(pointer)
                .cloned()
                .ok_or_else(|| fail(format!("no pod template at {pointer}")))?;
            let pod: Pod =
                serde_json::from_value(template).map_err(|e| fail(format!("{pointer}: {e}")))?;
            if let Ok(injected) =
                inject(&pod, settings, Some(&name)).map_err(|e| fail(e.to_string()))?
            {
                let mut template =
                    serde_json::to_value(injected).map_err(|e| fail(e.to_string()))?;
                if let Some(object) = template.as_object_mut() {
                    object.remove("status");
                }
                if let Some(slot) = document.pointer_mut(pointer) {
                    *slot = template;
                }
            }
        }
        output.push_str("---\n");
        output.push_str(&serde_saphyr::to_string(&document).map_err(|e| fail(e.to_string()))?);
    }
    Ok(output)
}
