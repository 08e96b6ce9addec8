//! The injection webhook's TLS: the operator issues its serving certificate from the mesh CA into
//! Secret `braid-system/braid-webhook-tls` (renewed at half-life or when the CA changes; the
//! webhook reloads it without a restart) and keeps the `caBundle` of MutatingWebhookConfiguration
//! `braid-webhook` equal to the CA bundle, so the API server trusts it.

use std::sync::Arc;

use braid_api::CONTROL_PLANE_NAMESPACE;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;

use crate::Error;
use crate::certs::{CertificateAuthority, renewal_reason};
use crate::write::{MANAGER, leaf_record, record_annotations, tls_secret};

/// The webhook's Secret.
pub const WEBHOOK_SECRET: &str = "braid-webhook-tls";
/// The webhook's Service and MutatingWebhookConfiguration.
pub const WEBHOOK_NAME: &str = "braid-webhook";
/// Lifetime of the serving certificate: 30 days, renewed at 15.
const LIFETIME_SECONDS: i64 = 30 * 86_400;

/// The DNS names the API server uses to reach the webhook's Service.
pub fn dns_names() -> Vec<String> {
    let service = format!("{WEBHOOK_NAME}.{CONTROL_PLANE_NAMESPACE}.svc");
    vec![service.clone(), format!("{service}.cluster.local")]
}

/// Issues or renews the serving certificate, and updates the caBundle. Returns whether the
/// certificate was issued.
pub async fn sync(
    client: &kube::Client,
    ca: &CertificateAuthority,
    bundle: &str,
    now: i64,
    secrets: &[Arc<PartialObjectMeta<Secret>>],
) -> Result<bool, Error> {
    let existing = secrets.iter().find(|s| {
        s.metadata.namespace.as_deref() == Some(CONTROL_PLANE_NAMESPACE)
            && s.metadata.name.as_deref() == Some(WEBHOOK_SECRET)
    });
    let subject = dns_names().join(",");
    let record = existing.and_then(|s| leaf_record(&s.metadata));
    let mut issued = false;
    if let Some(reason) = renewal_reason(record.as_ref(), &subject, ca, now) {
        tracing::info!(reason, "issuing the webhook's serving certificate");
        let leaf = ca.issue_server(&dns_names(), now, LIFETIME_SECONDS)?;
        let annotations = record_annotations(&subject, ca, leaf.not_before, leaf.not_after);
        let secret = tls_secret(
            WEBHOOK_SECRET,
            CONTROL_PLANE_NAMESPACE,
            annotations,
            [
                ("tls.crt", leaf.cert_pem),
                ("tls.key", leaf.key_pem),
                ("ca.crt", bundle.to_owned()),
            ],
        );
        let api: Api<Secret> = Api::namespaced(client.clone(), CONTROL_PLANE_NAMESPACE);
        api.patch(
            WEBHOOK_SECRET,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
        issued = true;
    }
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(configuration) = api.get_opt(WEBHOOK_NAME).await? {
        let wanted = ByteString(bundle.as_bytes().to_vec());
        let webhooks = configuration.webhooks.unwrap_or_default();
        if webhooks
            .iter()
            .any(|w| w.client_config.ca_bundle.as_ref() != Some(&wanted))
        {
            // Strategic merge by webhook name: only caBundle changes.
            let patch = serde_json::json!({"webhooks": webhooks.iter().map(|w| serde_json::json!({
                "name": w.name, "clientConfig": {"caBundle": wanted}
            })).collect::<Vec<_>>()});
            api.patch(
                WEBHOOK_NAME,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await?;
            tracing::info!("updated the caBundle of MutatingWebhookConfiguration {WEBHOOK_NAME}");
        }
    }
    Ok(issued)
}
