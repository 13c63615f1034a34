//! The operator's Prometheus metrics. Fleet gauges are aggregated by phase (and, only when
//! `--metrics-pool-label` is set, by pool); never by device, user or any per-object name.
//! Per-device detail belongs in CaptureDevice status (kube-state-metrics can export it).

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric the operator exports.
#[derive(Clone)]
pub struct OperatorMetrics {
    /// Reconciles by controller and result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Reconcile errors by controller and reason.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration by controller.
    pub reconcile_duration: HistogramVec,
    /// Devices by phase (and pool when enabled).
    pub devices: IntGaugeVec,
    /// Devices running outdated images.
    pub devices_outdated: IntGauge,
    /// Devices waiting for a Mac host slot or the pool limit, by reason.
    pub devices_waiting: IntGaugeVec,
    /// For devices whose `Ready` condition is False: the longest time since it became False,
    /// by phase (0 when no device of that phase is unready). Alerts on devices awaiting
    /// enrollment or draining for too long use it without any per-device label.
    pub longest_not_ready: IntGaugeVec,
    /// Warm spares ready to be claimed.
    pub warm_spares: IntGauge,
    /// Kubernetes API requests by verb, resource and status class.
    pub api_requests: IntCounterVec,
    /// Objects that could not be deserialised, by kind.
    pub invalid_objects: IntCounterVec,
    /// Watch errors by kind.
    pub watch_errors: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Seconds from a CaptureDevice's creation to its device Pod being claimed or created.
    pub onboarding_seconds: Histogram,
    /// Whether fleet gauges carry a `pool` label.
    pub pool_label: bool,
}

/// Registering a metric failed (a programming error: duplicate names).
#[derive(Debug, thiserror::Error)]
#[error("registering operator metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl OperatorMetrics {
    /// Create and register every metric.
    pub fn new(registry: &Registry, pool_label: bool) -> Result<Self, MetricsError> {
        let fleet_labels: &[&str] = if pool_label { &["phase", "pool"] } else { &["phase"] };
        let m = OperatorMetrics {
            reconciles: IntCounterVec::new(
                Opts::new(
                    "capturefleet_operator_reconciles_total",
                    "Reconciles by controller and result",
                ),
                &["controller", "result"],
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "capturefleet_operator_reconcile_errors_total",
                    "Reconcile errors by controller and reason",
                ),
                &["controller", "reason"],
            )?,
            reconcile_duration: HistogramVec::new(
                HistogramOpts::new("capturefleet_operator_reconcile_duration_seconds", "Reconcile duration")
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["controller"],
            )?,
            devices: IntGaugeVec::new(
                Opts::new("capturefleet_devices", "CaptureDevices by phase"),
                fleet_labels,
            )?,
            devices_outdated: IntGauge::new(
                "capturefleet_devices_outdated",
                "Devices running images other than their pool's current ones",
            )?,
            devices_waiting: IntGaugeVec::new(
                Opts::new(
                    "capturefleet_devices_waiting",
                    "Devices waiting for a Mac host slot (Unschedulable) or the pool limit (PoolAtCapacity)",
                ),
                &["reason"],
            )?,
            longest_not_ready: IntGaugeVec::new(
                Opts::new(
                    "capturefleet_devices_longest_not_ready_seconds",
                    "Longest time any device of this phase has had Ready=False (0 when none)",
                ),
                &["phase"],
            )?,
            warm_spares: IntGauge::new("capturefleet_warm_spares", "Booted, unclaimed warm spare devices")?,
            api_requests: IntCounterVec::new(
                Opts::new(
                    "capturefleet_operator_api_requests_total",
                    "Kubernetes API requests by verb, resource and status class",
                ),
                &["verb", "resource", "code"],
            )?,
            invalid_objects: IntCounterVec::new(
                Opts::new(
                    "capturefleet_operator_invalid_objects_total",
                    "Watched objects that could not be deserialised (reported, skipped)",
                ),
                &["kind"],
            )?,
            watch_errors: IntCounterVec::new(
                Opts::new("capturefleet_operator_watch_errors_total", "Watch errors by kind"),
                &["kind"],
            )?,
            leader: IntGauge::new(
                "capturefleet_operator_leader",
                "1 while this replica holds the leader Lease",
            )?,
            onboarding_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "capturefleet_operator_onboarding_seconds",
                    "CaptureDevice creation to device Pod claimed (warm) or created (cold)",
                )
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
            )?,
            pool_label,
        };
        registry.register(Box::new(m.reconciles.clone()))?;
        registry.register(Box::new(m.reconcile_errors.clone()))?;
        registry.register(Box::new(m.reconcile_duration.clone()))?;
        registry.register(Box::new(m.devices.clone()))?;
        registry.register(Box::new(m.devices_outdated.clone()))?;
        registry.register(Box::new(m.devices_waiting.clone()))?;
        registry.register(Box::new(m.longest_not_ready.clone()))?;
        registry.register(Box::new(m.warm_spares.clone()))?;
        registry.register(Box::new(m.api_requests.clone()))?;
        registry.register(Box::new(m.invalid_objects.clone()))?;
        registry.register(Box::new(m.watch_errors.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        registry.register(Box::new(m.onboarding_seconds.clone()))?;
        Ok(m)
    }
}
