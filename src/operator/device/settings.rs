//! Defaults resolved by the operator (never by the API server, so GitOps tools see no drift)
//! and reported in `status.effective`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::capture_device::{AttachmentCapture, EffectiveSettings, RunStrategy, Service, VolumePolicy};
use crate::api::device_pool::UpdateStrategyType;
use crate::api::{CaptureDevice, DevicePool};
use crate::operator::durations;

/// Default rescan window.
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default drain timeout.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default Degraded hysteresis.
pub const DEFAULT_DEGRADED_AFTER: Duration = Duration::from_secs(120);
/// Default time a device Pod may stay unready before it is recreated.
pub const DEFAULT_UNREADY_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default consecutive failures before `Failed`.
pub const DEFAULT_MAX_FAILURES: i32 = 5;

/// A CaptureDevice's settings with defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSettings {
    /// Run strategy.
    pub run_strategy: RunStrategy,
    /// Services captured.
    pub services: Vec<Service>,
    /// Attachment policy.
    pub attachments: AttachmentCapture,
    /// Backfill window; None = everything.
    pub backfill: Option<Duration>,
    /// Rescan window.
    pub rescan: Duration,
    /// Drain timeout.
    pub drain_timeout: Duration,
    /// Volume policy after a complete drain.
    pub volume_policy: VolumePolicy,
    /// Whether reconciliation is paused.
    pub paused: bool,
}

impl DeviceSettings {
    /// Resolve a device's spec. Durations were validated by the API server; a value that
    /// still does not parse (an object stored before validation existed) falls back to the
    /// default rather than failing the device.
    pub fn resolve(device: &CaptureDevice) -> Self {
        let spec = &device.spec;
        let capture = spec.capture.clone().unwrap_or_default();
        let offboarding = spec.offboarding.clone().unwrap_or_default();
        let parse = |v: &Option<String>, default: Duration| {
            v.as_deref().and_then(|s| durations::parse(s).ok()).unwrap_or(default)
        };
        let mut services = capture
            .services
            .unwrap_or_else(|| vec![Service::IMessage, Service::Sms, Service::Rcs]);
        services.sort();
        services.dedup();
        DeviceSettings {
            run_strategy: spec.run_strategy.unwrap_or_default(),
            services,
            attachments: capture.attachments.unwrap_or_default(),
            backfill: capture
                .backfill_window
                .as_deref()
                .and_then(|s| durations::parse(s).ok()),
            rescan: parse(&capture.rescan_window, DEFAULT_RESCAN),
            drain_timeout: parse(&offboarding.drain_timeout, DEFAULT_DRAIN_TIMEOUT),
            volume_policy: offboarding.volume.unwrap_or_default(),
            paused: spec.reconciliation_paused.unwrap_or(false),
        }
    }

    /// For `status.effective`.
    pub fn to_status(&self) -> EffectiveSettings {
        EffectiveSettings {
            run_strategy: format!("{:?}", self.run_strategy),
            services: self.services.iter().map(|s| service_name(*s).to_owned()).collect(),
            attachments: format!("{:?}", self.attachments),
            backfill_window: self.backfill.map(durations::format).unwrap_or_else(|| "all".into()),
            rescan_window: durations::format(self.rescan),
            drain_timeout: durations::format(self.drain_timeout),
            volume_policy: format!("{:?}", self.volume_policy),
        }
    }
}

/// The service name as chat.db writes it.
pub fn service_name(service: Service) -> &'static str {
    match service {
        Service::IMessage => "iMessage",
        Service::Sms => "SMS",
        Service::Rcs => "RCS",
    }
}

/// A DevicePool's settings with defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// Node selector for device Pods.
    pub node_selector: BTreeMap<String, String>,
    /// Degraded hysteresis.
    pub degraded_after: Duration,
    /// Unready timeout before recreation.
    pub unready_timeout: Duration,
    /// Consecutive failures before Failed.
    pub max_failures: i32,
    /// Warm spares wanted.
    pub warm_spares: i32,
    /// Device limit.
    pub max_devices: Option<i32>,
    /// Update strategy.
    pub update_strategy: UpdateStrategyType,
}

impl PoolSettings {
    /// Resolve a pool's spec.
    pub fn resolve(pool: &DevicePool) -> Self {
        let spec = &pool.spec;
        let repair = spec.repair.clone();
        let parse = |v: Option<&String>, default: Duration| v.and_then(|s| durations::parse(s).ok()).unwrap_or(default);
        PoolSettings {
            node_selector: spec
                .node_selector
                .clone()
                .unwrap_or_else(|| BTreeMap::from([("capturefleet.dev/mac-host".to_owned(), "true".to_owned())])),
            degraded_after: parse(
                repair.as_ref().and_then(|r| r.degraded_after.as_ref()),
                DEFAULT_DEGRADED_AFTER,
            ),
            unready_timeout: parse(
                repair.as_ref().and_then(|r| r.unready_timeout.as_ref()),
                DEFAULT_UNREADY_TIMEOUT,
            ),
            max_failures: repair
                .as_ref()
                .and_then(|r| r.max_consecutive_failures)
                .unwrap_or(DEFAULT_MAX_FAILURES),
            warm_spares: spec.warm_spares.unwrap_or(0).max(0),
            max_devices: spec.max_devices,
            update_strategy: spec.update_strategy.as_ref().map(|u| u.type_).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_the_user_left_out() {
        let device: CaptureDevice = serde_yaml::from_str(
            r#"
apiVersion: capturefleet.dev/v1alpha1
kind: CaptureDevice
metadata: {name: jane, namespace: ns}
spec:
  user: {id: e1}
  poolRef: {name: advisers}
  sinkRefs: [{name: archive}]
  capture: {services: [SMS, iMessage], backfillWindow: 720h}
"#,
        )
        .unwrap();
        let s = DeviceSettings::resolve(&device);
        assert_eq!(s.run_strategy, RunStrategy::Always);
        assert_eq!(s.services, vec![Service::IMessage, Service::Sms]);
        assert_eq!(s.backfill, Some(Duration::from_secs(720 * 3600)));
        assert_eq!(s.rescan, DEFAULT_RESCAN);
        assert_eq!(s.volume_policy, VolumePolicy::Delete);
        let status = s.to_status();
        assert_eq!(status.services, vec!["iMessage", "SMS"]);
        assert_eq!(status.backfill_window, "720h");
        assert_eq!(status.drain_timeout, "1h");
    }
}
