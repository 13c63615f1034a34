//! The ArchiveSink controller: reports the sink's type, whether its configuration is complete,
//! and how many devices deliver to it and report it healthy. It never reads the referenced
//! Secrets (the operator has no permission to).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::api::{ArchiveSink, ArchiveSinkSpec, ArchiveSinkStatus};
use crate::operator::apply;
use crate::operator::conditions::{self, Desired};
use crate::operator::context::Context;
use crate::operator::error::Error;

/// The configured sink type.
pub fn sink_type(spec: &ArchiveSinkSpec) -> Option<&'static str> {
    [
        (spec.filesystem.is_some(), "filesystem"),
        (spec.s3.is_some(), "s3"),
        (spec.smtp.is_some(), "smtp"),
        (spec.kafka.is_some(), "kafka"),
        (spec.webhook.is_some(), "webhook"),
    ]
    .into_iter()
    .find_map(|(set, name)| set.then_some(name))
}

/// Reconcile one ArchiveSink.
pub async fn reconcile(sink: Arc<ArchiveSink>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = sink
        .namespace()
        .ok_or_else(|| Error::Invalid("an ArchiveSink without a namespace".into()))?;
    let name = sink.name_any();
    let users = ctx.stores.devices.state_filter(|d| {
        d.namespace().as_deref() == Some(ns.as_str()) && d.spec.sink_refs.iter().any(|r| r.name == name)
    });
    let sinks_healthy = |d: &crate::api::CaptureDevice| {
        d.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "SinksHealthy"))
            .map(|c| c.status.clone())
    };
    let healthy = users
        .iter()
        .filter(|d| sinks_healthy(d).as_deref() == Some("True"))
        .count() as i32;
    let unhealthy = users
        .iter()
        .filter(|d| sinks_healthy(d).as_deref() == Some("False"))
        .count() as i32;
    let devices = users.len() as i32;
    let previous = sink.status.clone().unwrap_or_default();
    let type_ = sink_type(&sink.spec);
    let ready = match type_ {
        None => Desired::false_(
            "Ready",
            "NoSinkType",
            "set exactly one of filesystem, s3, smtp, kafka or webhook",
        ),
        Some(_) if unhealthy > 0 => Desired::false_(
            "Ready",
            "DevicesReportUnhealthy",
            format!("{unhealthy} of {devices} device(s) report a failing sink (this one or another they deliver to)"),
        ),
        Some(t) => Desired::true_(
            "Ready",
            "Configured",
            format!("{t} sink configured; {devices} device(s) deliver to it"),
        ),
    };
    let status = ArchiveSinkStatus {
        observed_generation: sink.metadata.generation,
        type_: type_.map(str::to_owned),
        conditions: conditions::resolve(
            &previous.conditions,
            vec![ready],
            sink.metadata.generation,
            Timestamp::now(),
        ),
        devices,
        healthy_devices: healthy,
    };
    if sink.status.as_ref() != Some(&status) {
        let api: Api<ArchiveSink> = Api::namespaced(ctx.client.clone(), &ns);
        apply::apply_status(&api, &name, &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}
