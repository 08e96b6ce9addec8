//! Leader election on a `coordination.k8s.io` Lease, so that two replicas can run and only one
//! writes. Every replica watches; the holder renews every [`RENEW`]; a Lease not renewed for
//! [`LEASE_SECONDS`] may be taken over. Updates carry the resourceVersion read, so two replicas
//! can never both succeed in taking it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// How long a Lease holds without renewal.
pub const LEASE_SECONDS: i32 = 15;
/// How often the holder renews, and others retry.
pub const RENEW: Duration = Duration::from_secs(2);

/// Whether `holder` may take a Lease as it stands at `now` (pure: tested without a cluster).
pub fn may_take(lease: &LeaseSpec, holder: &str, now: Timestamp) -> bool {
    let Some(current) = lease.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return true;
    };
    if current == holder {
        return true;
    }
    let renewed = lease
        .renew_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let duration = i64::from(lease.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    now.as_second() >= renewed.as_second() + duration
}

/// Runs the election forever, publishing whether this replica leads.
pub async fn run(
    client: kube::Client,
    namespace: String,
    name: String,
    holder: String,
    leading: watch::Sender<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    loop {
        let result = try_acquire(&api, &name, &holder).await;
        let now_leading = match result {
            Ok(leads) => leads,
            Err(error) => {
                tracing::warn!(%error, "leader election: cannot read or write the Lease");
                false
            }
        };
        // Receivers hear of a change only: the reconcile loop passes when it takes the lead.
        leading.send_if_modified(|leads| {
            let changed = *leads != now_leading;
            if changed {
                tracing::info!(leading = now_leading, holder, "leadership changed");
                *leads = now_leading;
            }
            changed
        });
        tokio::time::sleep(RENEW).await;
    }
}

async fn try_acquire(api: &Api<Lease>, name: &str, holder: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(spec(holder, now, now, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let current = lease.spec.clone().unwrap_or_default();
    if !may_take(&current, holder, now) {
        return Ok(false);
    }
    let ours = current.holder_identity.as_deref() == Some(holder);
    let acquired = if ours {
        current.acquire_time.map_or(now, |t| t.0)
    } else {
        now
    };
    let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
    lease.spec = Some(spec(holder, acquired, now, transitions));
    // `replace` sends the resourceVersion we read: a concurrent writer makes this fail with 409.
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

fn spec(holder: &str, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: Some(MicroTime(acquired)),
        renew_time: Some(MicroTime(renewed)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        spec(
            holder,
            Timestamp::from_second(renewed).expect("t"),
            Timestamp::from_second(renewed).expect("t"),
            0,
        )
    }

    #[test]
    fn a_fresh_lease_of_another_holder_is_not_taken_an_expired_one_is() {
        let at = |s| Timestamp::from_second(s).expect("t");
        assert!(may_take(&LeaseSpec::default(), "b", at(0)));
        assert!(
            may_take(&held_by("a", 100), "a", at(101)),
            "the holder renews"
        );
        assert!(!may_take(&held_by("a", 100), "b", at(114)));
        assert!(may_take(&held_by("a", 100), "b", at(115)));
    }
}
