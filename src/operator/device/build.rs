//! The desired objects of a device, as pure functions of the CaptureDevice, its DevicePool and
//! ArchiveSinks: the device Pod (device runtime + capture agent) and its volume claim, and the
//! agent configuration the Pod carries. Unit-tested on YAML fixtures.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, ExecAction,
    HTTPGetAction, LocalObjectReference, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::settings::{DeviceSettings, PoolSettings, service_name};
use super::sink_mounts::SinkMount;
use crate::api::agent::{AGENT_CONFIG_SCHEMA, AgentConfig, AgentDevice, AttachmentPolicy, CaptureSettings};
use crate::api::capture_device::AttachmentCapture;
use crate::api::{CaptureDevice, DevicePool};
use crate::operator::labels::*;
use crate::operator::quantity;

/// Port of the agent's `/livez`, `/readyz` and `/metrics`.
pub const AGENT_HTTP_PORT: i32 = 9464;
/// Where the device volume is mounted in the runtime container.
pub const DEVICE_ROOT: &str = "/device";
/// Where the agent sees the Messages directory (read-only).
pub const AGENT_MESSAGES: &str = "/messages";
/// Where the agent keeps its spool.
pub const AGENT_SPOOL: &str = "/spool";
/// Where the agent reads its configuration.
pub const AGENT_CONFIG_DIR: &str = "/etc/capturefleet/agent";
/// UID/GID the containers run as (non-root).
pub const RUN_AS: i64 = 65532;

/// The container names.
pub const RUNTIME_CONTAINER: &str = "device";
/// The agent container's name.
pub const AGENT_CONTAINER: &str = "agent";

/// What a Pod is for.
#[derive(Clone, Debug)]
pub enum PodRole<'a> {
    /// A CaptureDevice's own Pod.
    Assigned {
        /// The device.
        device: &'a CaptureDevice,
        /// Its resolved settings.
        settings: &'a DeviceSettings,
    },
    /// A warm spare of the pool (owned by the pool, no device identity yet).
    Spare,
    /// A drain-only Pod: just the agent, delivering what the volume's spool holds.
    Drain {
        /// The device.
        device: &'a CaptureDevice,
        /// Its resolved settings.
        settings: &'a DeviceSettings,
    },
}

/// Everything a device Pod is built from.
#[derive(Clone, Debug)]
pub struct PodPlan<'a> {
    /// Pod name.
    pub name: String,
    /// Volume claim name.
    pub claim_name: String,
    /// The pool.
    pub pool: &'a DevicePool,
    /// The pool's resolved settings.
    pub pool_settings: &'a PoolSettings,
    /// Purpose.
    pub role: PodRole<'a>,
    /// Sinks rendered for this Pod (a spare mounts the namespace's sinks it is prepared for).
    pub sinks: &'a [SinkMount],
    /// The Mac host the device is pinned to, once enrolled.
    pub pinned_host: Option<&'a str>,
}

fn hash_json<T: serde::Serialize>(value: &T) -> String {
    let json = serde_json::to_vec(value).expect("pool settings serialise");
    hex::encode(&Sha256::digest(&json)[..8])
}

/// Revision of what the runtime container is built from; a change needs the device to be
/// recreated (and, on real Macs, the employee to sign in again).
pub fn runtime_revision(pool: &DevicePool) -> String {
    let s = &pool.spec;
    hash_json(&(
        &s.runtime,
        &s.runtime_class_name,
        &s.node_selector,
        &s.tolerations,
        &s.volume,
    ))
}

/// Revision of what the agent container is built from; a change needs no re-enrollment.
pub fn agent_revision(pool: &DevicePool) -> String {
    hash_json(&pool.spec.agent)
}

/// The agent configuration for a Pod. A spare's agent has no device identity and no sinks:
/// it idles until a claim gives it both (through the annotation, without a restart).
pub fn agent_config(plan: &PodPlan<'_>) -> AgentConfig {
    let messages_path = plan
        .pool
        .spec
        .runtime
        .messages_path
        .clone()
        .unwrap_or_else(|| "Messages".into());
    let _ = messages_path; // the agent sees the Messages directory at AGENT_MESSAGES whatever its path in the volume
    let (device, capture, sinks) = match &plan.role {
        PodRole::Assigned { device, settings } | PodRole::Drain { device, settings } => (
            AgentDevice {
                name: device.name_any(),
                namespace: device.namespace(),
                user_id: Some(device.spec.user.id.clone()),
            },
            capture_settings(settings),
            plan.sinks.iter().filter_map(|s| s.config.clone()).collect(),
        ),
        PodRole::Spare => (AgentDevice::default(), CaptureSettings::default(), vec![]),
    };
    let volume_bytes = quantity::to_bytes(&plan.pool.spec.volume.size).unwrap_or(64 << 30);
    let spool_max_bytes = plan
        .pool
        .spec
        .agent
        .spool_limit
        .as_deref()
        .and_then(|q| quantity::to_bytes(q).ok())
        .unwrap_or(volume_bytes / 2);
    let drain_timeout_seconds = match &plan.role {
        PodRole::Assigned { settings, .. } | PodRole::Drain { settings, .. } => settings.drain_timeout.as_secs(),
        PodRole::Spare => 60,
    };
    AgentConfig {
        schema: AGENT_CONFIG_SCHEMA.into(),
        device,
        chat_db: format!("{AGENT_MESSAGES}/chat.db").into(),
        messages_dir: Some(AGENT_MESSAGES.into()),
        spool_dir: AGENT_SPOOL.into(),
        capture,
        sinks,
        spool_max_bytes,
        http_listen: format!("0.0.0.0:{AGENT_HTTP_PORT}"),
        termination_message_path: "/dev/termination-log".into(),
        drain_timeout_seconds,
    }
}

fn capture_settings(settings: &DeviceSettings) -> CaptureSettings {
    CaptureSettings {
        services: settings.services.iter().map(|s| service_name(*s).to_owned()).collect(),
        attachments: match settings.attachments {
            AttachmentCapture::Include => AttachmentPolicy::Include,
            AttachmentCapture::MetadataOnly => AttachmentPolicy::MetadataOnly,
        },
        backfill_days: settings.backfill.map(|d| (d.as_secs().div_ceil(86_400)) as u32),
        rescan_window_seconds: settings.rescan.as_secs(),
        poll_interval_ms: 1000,
    }
}

/// The agent configuration as the annotation value.
pub fn agent_config_annotation(config: &AgentConfig) -> String {
    serde_yaml::to_string(config).expect("agent config serialises")
}

fn owner_of_pool(pool: &DevicePool) -> OwnerReference {
    pool.controller_owner_ref(&())
        .expect("a stored DevicePool has a name and uid")
}

/// The controller owner reference of a device.
pub fn owner_of_device(device: &CaptureDevice) -> OwnerReference {
    device
        .controller_owner_ref(&())
        .expect("a stored CaptureDevice has a name and uid")
}

/// Labels of a device's Pod and volume.
pub fn device_labels(pool: &str, device: Option<&str>, role: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (COMPONENT.to_owned(), COMPONENT_DEVICE.to_owned()),
        (POOL.to_owned(), pool.to_owned()),
        (ROLE.to_owned(), role.to_owned()),
        ("app.kubernetes.io/name".to_owned(), "capturefleet-device".to_owned()),
    ]);
    if let Some(device) = device {
        labels.insert(DEVICE.to_owned(), device.to_owned());
    }
    labels
}

fn default_probe(what: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "capturefleet".into(),
                "device".into(),
                "probe".into(),
                what.into(),
                "--state-dir".into(),
                format!("{DEVICE_ROOT}/state"),
            ]),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

fn restricted(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        read_only_root_filesystem: Some(read_only_root),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

fn agent_resources(pool: &DevicePool) -> ResourceRequirements {
    pool.spec
        .agent
        .resources
        .clone()
        .unwrap_or_else(|| ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("20m".into())),
                ("memory".to_owned(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("128Mi".into()))])),
            ..Default::default()
        })
}

fn runtime_resources(pool: &DevicePool) -> ResourceRequirements {
    let mut r = pool.spec.runtime.resources.clone().unwrap_or_default();
    for map in [&mut r.requests, &mut r.limits] {
        map.get_or_insert_with(BTreeMap::new)
            .insert(MACOS_VM_RESOURCE.to_owned(), Quantity("1".into()));
    }
    r
}

/// The device Pod.
pub fn device_pod(plan: &PodPlan<'_>) -> Pod {
    let pool = plan.pool;
    let pool_name = pool.name_any();
    let namespace = pool.namespace();
    let (role_label, device_name, owner, drain_timeout) = match &plan.role {
        PodRole::Assigned { device, settings } => (
            ROLE_ASSIGNED,
            Some(device.name_any()),
            owner_of_device(device),
            settings.drain_timeout.as_secs() as i64,
        ),
        PodRole::Drain { device, settings } => (
            ROLE_DRAIN,
            Some(device.name_any()),
            owner_of_device(device),
            settings.drain_timeout.as_secs() as i64,
        ),
        // A spare's Pod spec cannot change when it is claimed, so it gets the default device
        // drain timeout up front (a device with a longer one finishes its drain in a drain Pod).
        PodRole::Spare => (
            ROLE_SPARE,
            None,
            owner_of_pool(pool),
            super::settings::DEFAULT_DRAIN_TIMEOUT.as_secs() as i64,
        ),
    };
    let config = agent_config(plan);
    let mut annotations = BTreeMap::from([
        (AGENT_CONFIG.to_owned(), agent_config_annotation(&config)),
        (RUNTIME_REVISION.to_owned(), runtime_revision(pool)),
        (AGENT_REVISION.to_owned(), agent_revision(pool)),
    ]);
    if matches!(plan.role, PodRole::Spare) {
        let prepared: Vec<&str> = plan
            .sinks
            .iter()
            .filter_map(|s| s.config.as_ref().map(|c| c.name.as_str()))
            .collect();
        annotations.insert(PREPARED_SINKS.to_owned(), prepared.join(","));
    }

    let mut volumes = vec![
        Volume {
            name: "state".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: plan.claim_name.clone(),
                read_only: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "agent-config".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "agent.yaml".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{AGENT_CONFIG}']"),
                        api_version: None,
                    }),
                    ..Default::default()
                }]),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let messages_path = pool
        .spec
        .runtime
        .messages_path
        .clone()
        .unwrap_or_else(|| "Messages".into());
    let mut agent_mounts = vec![
        VolumeMount {
            name: "state".into(),
            mount_path: AGENT_MESSAGES.into(),
            sub_path: Some(messages_path),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "state".into(),
            mount_path: AGENT_SPOOL.into(),
            sub_path: Some("spool".into()),
            ..Default::default()
        },
        VolumeMount {
            name: "agent-config".into(),
            mount_path: AGENT_CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    for sink in plan.sinks {
        volumes.extend(sink.volumes.iter().cloned());
        agent_mounts.extend(sink.mounts.iter().cloned());
    }

    let mut agent_args = vec![
        "agent".to_owned(),
        "--config".to_owned(),
        format!("{AGENT_CONFIG_DIR}/agent.yaml"),
    ];
    if matches!(plan.role, PodRole::Drain { .. }) {
        agent_args.push("--drain-only".into());
    }
    let agent = Container {
        name: AGENT_CONTAINER.into(),
        image: Some(pool.spec.agent.image.clone()),
        image_pull_policy: pool.spec.agent.image_pull_policy.map(|p| format!("{p:?}")),
        args: Some(agent_args),
        env: Some(vec![
            EnvVar {
                name: "RUST_LOG".into(),
                value: Some(
                    pool.spec
                        .agent
                        .log_level
                        .map(|l| format!("{l:?}").to_lowercase())
                        .unwrap_or_else(|| "info".into()),
                ),
                ..Default::default()
            },
            EnvVar {
                name: "CAPTUREFLEET_LOG_FORMAT".into(),
                value: Some("json".into()),
                ..Default::default()
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: AGENT_HTTP_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(AGENT_HTTP_PORT),
                ..Default::default()
            }),
            period_seconds: Some(10),
            failure_threshold: Some(1),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/livez".into()),
                port: IntOrString::Int(AGENT_HTTP_PORT),
                ..Default::default()
            }),
            period_seconds: Some(20),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        resources: Some(agent_resources(pool)),
        security_context: Some(restricted(true)),
        volume_mounts: Some(agent_mounts),
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("File".into()),
        ..Default::default()
    };

    let mut containers = vec![];
    if !matches!(plan.role, PodRole::Drain { .. }) {
        let rt = &pool.spec.runtime;
        containers.push(Container {
            name: RUNTIME_CONTAINER.into(),
            image: Some(rt.image.clone()),
            image_pull_policy: rt.image_pull_policy.map(|p| format!("{p:?}")),
            command: rt.command.clone(),
            args: rt.args.clone(),
            env: Some(vec![EnvVar {
                name: "CAPTUREFLEET_DEVICE_STATE".into(),
                value: Some(format!("{DEVICE_ROOT}/state")),
                ..Default::default()
            }]),
            resources: Some(runtime_resources(pool)),
            startup_probe: Some(
                rt.startup_probe
                    .clone()
                    .unwrap_or_else(|| default_probe("booted", 10, 60)),
            ),
            readiness_probe: Some(
                rt.readiness_probe
                    .clone()
                    .unwrap_or_else(|| default_probe("signed-in", 10, 1)),
            ),
            security_context: Some(restricted(false)),
            volume_mounts: Some(vec![VolumeMount {
                name: "state".into(),
                mount_path: DEVICE_ROOT.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
    }
    containers.push(agent);

    let mut node_selector = plan.pool_settings.node_selector.clone();
    if let Some(host) = plan.pinned_host {
        node_selector.insert("kubernetes.io/hostname".into(), host.to_owned());
    }

    Pod {
        metadata: ObjectMeta {
            name: Some(plan.name.clone()),
            namespace,
            labels: Some(device_labels(&pool_name, device_name.as_deref(), role_label)),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers,
            volumes: Some(volumes),
            node_selector: Some(node_selector),
            tolerations: pool.spec.tolerations.clone(),
            runtime_class_name: pool.spec.runtime_class_name.clone(),
            image_pull_secrets: pool.spec.image_pull_secrets.as_ref().map(|s| {
                s.iter()
                    .map(|r| LocalObjectReference { name: r.name.clone() })
                    .collect()
            }),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            restart_policy: Some(if matches!(plan.role, PodRole::Drain { .. }) {
                "Never".into()
            } else {
                "Always".into()
            }),
            termination_grace_period_seconds: Some(drain_timeout + 30),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The device's volume claim (device state and the agent's spool).
pub fn device_claim(pool: &DevicePool, name: &str, device: Option<&CaptureDevice>) -> PersistentVolumeClaim {
    let (labels, owner) = match device {
        Some(d) => (
            device_labels(&pool.name_any(), Some(&d.name_any()), ROLE_ASSIGNED),
            owner_of_device(d),
        ),
        None => (device_labels(&pool.name_any(), None, ROLE_SPARE), owner_of_pool(pool)),
    };
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: pool.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: pool.spec.volume.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(pool.spec.volume.size.clone()),
                )])),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::device::sink_mounts;
    use crate::operator::testdata;

    fn plan_for<'a>(
        device: &'a CaptureDevice,
        settings: &'a DeviceSettings,
        pool: &'a DevicePool,
        pool_settings: &'a PoolSettings,
        sinks: &'a [SinkMount],
    ) -> PodPlan<'a> {
        PodPlan {
            name: "cdev-jane-doe".into(),
            claim_name: "cdev-jane-doe".into(),
            pool,
            pool_settings,
            role: PodRole::Assigned { device, settings },
            sinks,
            pinned_host: Some("mac-host-3"),
        }
    }

    #[test]
    fn device_pod_requests_one_macos_vm_and_isolates_the_agent() {
        let device = testdata::device();
        let pool = testdata::pool();
        let settings = DeviceSettings::resolve(&device);
        let pool_settings = PoolSettings::resolve(&pool);
        let sinks: Vec<SinkMount> = testdata::sinks().iter().map(sink_mounts::render).collect();
        let pod = device_pod(&plan_for(&device, &settings, &pool, &pool_settings, &sinks));
        let spec = pod.spec.as_ref().unwrap();

        let runtime = spec.containers.iter().find(|c| c.name == RUNTIME_CONTAINER).unwrap();
        let requests = runtime.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests.get(MACOS_VM_RESOURCE), Some(&Quantity("1".into())));
        assert_eq!(
            requests.get("cpu"),
            Some(&Quantity("4".into())),
            "the pool's resources are kept"
        );

        let agent = spec.containers.iter().find(|c| c.name == AGENT_CONTAINER).unwrap();
        let sc = agent.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(
            spec.automount_service_account_token,
            Some(false),
            "the agent gets no API token"
        );
        let messages = agent
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == AGENT_MESSAGES)
            .unwrap();
        assert_eq!(messages.read_only, Some(true), "chat.db is read-only for the agent");

        assert_eq!(
            spec.node_selector
                .as_ref()
                .unwrap()
                .get("kubernetes.io/hostname")
                .map(String::as_str),
            Some("mac-host-3")
        );
        assert_eq!(spec.termination_grace_period_seconds, Some(3600 + 30));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("CaptureDevice", Some(true)));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get(DEVICE).map(String::as_str), Some("jane-doe"));
        assert_eq!(labels.get(COMPONENT).map(String::as_str), Some("device"));
    }

    #[test]
    fn agent_config_names_the_employee_and_every_sink_without_secret_values() {
        let device = testdata::device();
        let pool = testdata::pool();
        let settings = DeviceSettings::resolve(&device);
        let pool_settings = PoolSettings::resolve(&pool);
        let sinks: Vec<SinkMount> = testdata::sinks().iter().map(sink_mounts::render).collect();
        let plan = plan_for(&device, &settings, &pool, &pool_settings, &sinks);
        let config = agent_config(&plan);
        assert_eq!(config.device.user_id.as_deref(), Some("e100234"));
        assert_eq!(
            config.sinks.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            vec!["worm-filesystem", "s3-worm"]
        );
        assert_eq!(config.spool_max_bytes, 16 << 30);
        let annotation = agent_config_annotation(&config);
        let parsed: AgentConfig = serde_yaml::from_str(&annotation).unwrap();
        assert_eq!(
            parsed, config,
            "the annotation round-trips into the agent's config type"
        );
        // The pod references the credentials Secret but carries no value from it.
        let pod = device_pod(&plan);
        let secret_volumes: Vec<_> = pod
            .spec
            .unwrap()
            .volumes
            .unwrap()
            .into_iter()
            .filter_map(|v| v.secret)
            .collect();
        assert_eq!(secret_volumes.len(), 1);
        assert_eq!(secret_volumes[0].secret_name.as_deref(), Some("archive-s3-credentials"));
    }

    #[test]
    fn spare_pods_have_no_identity_and_are_owned_by_the_pool() {
        let pool = testdata::pool();
        let pool_settings = PoolSettings::resolve(&pool);
        let sinks: Vec<SinkMount> = testdata::sinks().iter().map(sink_mounts::render).collect();
        let plan = PodPlan {
            name: "advisers-spare-x1".into(),
            claim_name: "advisers-spare-x1".into(),
            pool: &pool,
            pool_settings: &pool_settings,
            role: PodRole::Spare,
            sinks: &sinks,
            pinned_host: None,
        };
        let pod = device_pod(&plan);
        let config = agent_config(&plan);
        assert!(config.device.name.is_empty() && config.sinks.is_empty());
        let meta = &pod.metadata;
        assert_eq!(meta.owner_references.as_ref().unwrap()[0].kind, "DevicePool");
        assert!(meta.labels.as_ref().unwrap().get(DEVICE).is_none());
        assert_eq!(
            meta.annotations
                .as_ref()
                .unwrap()
                .get(PREPARED_SINKS)
                .map(String::as_str),
            Some("worm-filesystem,s3-worm")
        );
    }

    #[test]
    fn revisions_separate_agent_only_changes_from_runtime_changes() {
        let pool = testdata::pool();
        let mut agent_changed = pool.clone();
        agent_changed.spec.agent.image = "ghcr.io/capturefleet/capturefleet:0.2.0".into();
        assert_eq!(runtime_revision(&pool), runtime_revision(&agent_changed));
        assert_ne!(agent_revision(&pool), agent_revision(&agent_changed));
        let mut runtime_changed = pool.clone();
        runtime_changed.spec.runtime.image = "example.com/macos:16".into();
        assert_ne!(runtime_revision(&pool), runtime_revision(&runtime_changed));
        assert_eq!(agent_revision(&pool), agent_revision(&runtime_changed));
    }

    #[test]
    fn claim_is_owned_by_the_device() {
        let device = testdata::device();
        let pool = testdata::pool();
        let claim = device_claim(&pool, "cdev-jane-doe", Some(&device));
        let spec = claim.spec.unwrap();
        assert_eq!(
            spec.resources.unwrap().requests.unwrap().get("storage"),
            Some(&Quantity("64Gi".into()))
        );
        assert_eq!(claim.metadata.owner_references.unwrap()[0].kind, "CaptureDevice");
    }
}
