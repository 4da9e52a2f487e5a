//! Leader election on a `coordination.k8s.io/v1` Lease, as
//! kube-scheduler does it: only the holder schedules; it renews the lease
//! every few seconds and steps down (the process stops scheduling) when it
//! cannot, so another instance can take over once the lease expires.

use std::future::Future;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube::Client;
use rudder_apimachinery::time::{format_rfc3339_micros, parse_rfc3339};
use serde_json::json;

#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per process.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_period: Duration,
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    pub fn new(name: &str) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        LeaderElectionConfig {
            namespace: "kube-system".into(),
            name: name.to_owned(),
            identity: format!("{}_{}", host.trim(), uuid_like()),
            lease_duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(5),
            retry_period: Duration::from_secs(2),
        }
    }
}

fn uuid_like() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// Whether the lease is free for `identity`: absent holder, ours, or
/// not renewed within its duration.
fn available(lease: &Lease, identity: &str, now: SystemTime) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    let renewed = spec
        .renew_time
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().and_then(parse_rfc3339));
    renewed.is_none_or(|t| t + duration < now)
}

/// Takes or renews the lease once; returns whether we hold it.
async fn try_acquire(api: &Api<Lease>, config: &LeaderElectionConfig) -> anyhow::Result<bool> {
    let now = SystemTime::now();
    let stamp = format_rfc3339_micros(now);
    match api.get_opt(&config.name).await? {
        None => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": config.name, "namespace": config.namespace},
                "spec": {
                    "holderIdentity": config.identity,
                    "leaseDurationSeconds": config.lease_duration.as_secs(),
                    "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0,
                }
            }))?;
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err.into()),
            }
        }
        Some(mut lease) => {
            if !available(&lease, &config.identity, now) {
                return Ok(false);
            }
            let spec = lease.spec.get_or_insert_with(Default::default);
            let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
            let mut updated = serde_json::to_value(&*spec)?;
            updated["holderIdentity"] = json!(config.identity);
            updated["leaseDurationSeconds"] = json!(config.lease_duration.as_secs());
            updated["renewTime"] = json!(stamp);
            if !ours {
                updated["acquireTime"] = json!(stamp);
                updated["leaseTransitions"] = json!(spec.lease_transitions.unwrap_or(0) + 1);
            }
            lease.spec = Some(serde_json::from_value(updated)?);
            // The resourceVersion makes this a compare-and-swap: of two
            // candidates, one wins.
            match api
                .replace(&config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err.into()),
            }
        }
    }
}

/// Runs `work` while holding the lease. Returns when `work` ends, or with
/// an error when the lease is lost.
pub async fn run_as_leader<F>(
    client: Client,
    config: LeaderElectionConfig,
    work: F,
) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    loop {
        match try_acquire(&api, &config).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(error = %err, lease = %config.name, "cannot acquire the lease")
            }
        }
        tokio::time::sleep(config.retry_period).await;
    }
    tracing::info!(lease = %config.name, identity = %config.identity, "became the leader");
    let renew = async {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(config.renew_period).await;
            match try_acquire(&api, &config).await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => anyhow::bail!("lost the lease {} to another instance", config.name),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot renew the lease");
                    if last_renewal.elapsed() > config.lease_duration {
                        return Err(err).context(format!("the lease {} expired", config.name));
                    }
                }
            }
        }
    };
    tokio::select! {
        result = work => result,
        result = renew => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: SystemTime, seconds: i32) -> Lease {
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": seconds,
            "renewTime": format_rfc3339_micros(renewed)}}))
        .unwrap()
    }

    #[test]
    fn a_lease_is_free_when_ours_or_expired() {
        let now = SystemTime::now();
        assert!(available(&lease("me", now, 15), "me", now));
        assert!(!available(&lease("other", now, 15), "me", now));
        assert!(available(
            &lease("other", now - Duration::from_secs(20), 15),
            "me",
            now
        ));
        assert!(available(&lease("", now, 15), "me", now));
    }
}
