//! How each ArchiveSink reaches the capture agent: the agent-side sink configuration, and the
//! volumes that carry its credentials, CA bundle or archive volume into the Pod. Secrets are
//! only ever *referenced* here: the kubelet mounts them, the agent reads the files, and the
//! operator never sees a value.

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, KeyToPath, PersistentVolumeClaimVolumeSource, SecretVolumeSource, Volume, VolumeMount,
};
use sha2::{Digest, Sha256};

use crate::api::ArchiveSink;
use crate::api::agent::{
    FilesystemTarget, KafkaTarget, ObjectLock, ObjectLockMode, S3Target, SinkConfig, SinkTarget, SmtpGrouping,
    SmtpTarget, SmtpTls, WebhookTarget,
};
use crate::api::archive_sink::{ArchiveSinkSpec, ObjectLockModeSpec, SmtpGroupingSpec, SmtpTlsMode};
use crate::api::common::ConfigMapKeyRef;
use crate::operator::durations;

/// Where sink credentials are mounted in the agent container.
pub const SECRETS_ROOT: &str = "/var/run/secrets/capturefleet/sinks";
/// Where CA bundles are mounted.
pub const CA_ROOT: &str = "/etc/capturefleet/ca";
/// Where filesystem archives are mounted.
pub const ARCHIVE_ROOT: &str = "/archive";

/// A sink as rendered for one Pod.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SinkMount {
    /// The agent's configuration of the sink (None when the spec sets no sink type, which
    /// the API server refuses).
    pub config: Option<SinkConfig>,
    /// Pod volumes.
    pub volumes: Vec<Volume>,
    /// Agent container mounts.
    pub mounts: Vec<VolumeMount>,
}

/// Short, DNS-label-safe volume name for a sink's volume (`s-<hash>-<what>`): sink names may be
/// 63 characters, volume names may not exceed 63 either.
fn volume_name(sink: &str, what: &str) -> String {
    let hash = hex::encode(&Sha256::digest(sink.as_bytes())[..5]);
    format!("s-{hash}-{what}")
}

fn secret_dir_volume(sink: &str, secret: &str) -> (Volume, VolumeMount, String) {
    let name = volume_name(sink, "cred");
    let dir = format!("{SECRETS_ROOT}/{sink}");
    let volume = Volume {
        name: name.clone(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = VolumeMount {
        name,
        mount_path: dir.clone(),
        read_only: Some(true),
        ..Default::default()
    };
    (volume, mount, dir)
}

fn ca_volume(sink: &str, ca: &ConfigMapKeyRef) -> (Volume, VolumeMount, String) {
    let name = volume_name(sink, "ca");
    let dir = format!("{CA_ROOT}/{sink}");
    let volume = Volume {
        name: name.clone(),
        config_map: Some(ConfigMapVolumeSource {
            name: ca.name.clone(),
            items: Some(vec![KeyToPath {
                key: ca.key.clone(),
                path: "ca.crt".into(),
                mode: None,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = VolumeMount {
        name,
        mount_path: dir.clone(),
        read_only: Some(true),
        ..Default::default()
    };
    (volume, mount, format!("{dir}/ca.crt"))
}

/// Render one ArchiveSink for the agent.
pub fn render(sink: &ArchiveSink) -> SinkMount {
    let name = sink.metadata.name.clone().unwrap_or_default();
    render_spec(&name, &sink.spec)
}

/// Render a sink spec under a name (pure; used by [`render`]).
pub fn render_spec(name: &str, spec: &ArchiveSinkSpec) -> SinkMount {
    let mut out = SinkMount::default();
    let ca_file = |ca: &Option<ConfigMapKeyRef>, out: &mut SinkMount| {
        ca.as_ref().map(|ca| {
            let (v, m, path) = ca_volume(name, ca);
            out.volumes.push(v);
            out.mounts.push(m);
            std::path::PathBuf::from(path)
        })
    };
    let target = if let Some(fs) = &spec.filesystem {
        let vname = volume_name(name, "archive");
        let path = format!("{ARCHIVE_ROOT}/{name}");
        out.volumes.push(Volume {
            name: vname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: fs.claim_name.clone(),
                read_only: Some(false),
            }),
            ..Default::default()
        });
        out.mounts.push(VolumeMount {
            name: vname,
            mount_path: path.clone(),
            sub_path: fs.sub_path.clone(),
            ..Default::default()
        });
        SinkTarget::Filesystem(FilesystemTarget {
            path: path.into(),
            segment_max_records: fs.segment_max_records.map(|n| n as u64).unwrap_or(100_000),
        })
    } else if let Some(s3) = &spec.s3 {
        let credentials_dir = s3.credentials_secret_ref.as_ref().map(|s| {
            let (v, m, dir) = secret_dir_volume(name, &s.name);
            out.volumes.push(v);
            out.mounts.push(m);
            dir.into()
        });
        SinkTarget::S3(S3Target {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            bucket: s3.bucket.clone(),
            prefix: s3.prefix.clone().unwrap_or_default(),
            path_style: s3.path_style.unwrap_or(false),
            object_lock: s3.object_lock.as_ref().map(|l| ObjectLock {
                mode: match l.mode {
                    ObjectLockModeSpec::Compliance => ObjectLockMode::Compliance,
                    ObjectLockModeSpec::Governance => ObjectLockMode::Governance,
                },
                retention_days: l.retention_days.max(0) as u32,
                legal_hold: l.legal_hold.unwrap_or(false),
            }),
            credentials_dir,
            ca_file: ca_file(&s3.ca_bundle, &mut out),
            max_records_per_object: crate::api::agent::default_s3_records_per_object(),
        })
    } else if let Some(smtp) = &spec.smtp {
        let credentials_dir = smtp.credentials_secret_ref.as_ref().map(|s| {
            let (v, m, dir) = secret_dir_volume(name, &s.name);
            out.volumes.push(v);
            out.mounts.push(m);
            dir.into()
        });
        SinkTarget::Smtp(SmtpTarget {
            host: smtp.host.clone(),
            port: smtp.port.clamp(1, 65535) as u16,
            tls: match smtp.tls {
                SmtpTlsMode::StartTls => SmtpTls::StartTls,
                SmtpTlsMode::Implicit => SmtpTls::Implicit,
                SmtpTlsMode::None => SmtpTls::None,
            },
            from: smtp.from.clone(),
            journal_address: smtp.journal_address.clone(),
            grouping: match smtp.grouping {
                Some(SmtpGroupingSpec::PerConversationDay) => SmtpGrouping::PerConversationDay,
                _ => SmtpGrouping::PerRecord,
            },
            credentials_dir,
            ca_file: ca_file(&smtp.ca_bundle, &mut out),
        })
    } else if let Some(kafka) = &spec.kafka {
        let credentials_dir = kafka.sasl.as_ref().map(|s| {
            let (v, m, dir) = secret_dir_volume(name, &s.credentials_secret_ref.name);
            out.volumes.push(v);
            out.mounts.push(m);
            dir.into()
        });
        let tls = kafka.tls.as_ref().is_some_and(|t| t.enabled);
        let ca = kafka.tls.as_ref().and_then(|t| t.ca_bundle.clone());
        SinkTarget::Kafka(KafkaTarget {
            brokers: kafka.brokers.clone(),
            topic: kafka.topic.clone(),
            tls,
            ca_file: ca_file(&ca, &mut out),
            sasl_mechanism: kafka.sasl.as_ref().map(|s| {
                serde_json::to_value(s.mechanism)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            }),
            credentials_dir,
            delivery_timeout_seconds: crate::api::agent::default_kafka_delivery_timeout(),
        })
    } else if let Some(hook) = &spec.webhook {
        let vname = volume_name(name, "hmac");
        let dir = format!("{SECRETS_ROOT}/{name}");
        out.volumes.push(Volume {
            name: vname.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(hook.hmac_secret_ref.name.clone()),
                items: Some(vec![KeyToPath {
                    key: hook.hmac_secret_ref.key.clone(),
                    path: "hmac-key".into(),
                    mode: None,
                    ..Default::default()
                }]),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
        out.mounts.push(VolumeMount {
            name: vname,
            mount_path: dir.clone(),
            read_only: Some(true),
            ..Default::default()
        });
        SinkTarget::Webhook(WebhookTarget {
            url: hook.url.clone(),
            hmac_secret_file: format!("{dir}/hmac-key").into(),
            ca_file: ca_file(&hook.ca_bundle, &mut out),
            timeout_seconds: hook
                .timeout
                .as_deref()
                .and_then(|t| durations::parse(t).ok())
                .map(|d| d.as_secs().max(1))
                .unwrap_or(10),
        })
    } else {
        return out;
    };
    out.config = Some(SinkConfig {
        name: name.to_owned(),
        target,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(yaml: &str) -> ArchiveSink {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn s3_credentials_are_mounted_by_reference_only() {
        let s = sink(
            r#"
apiVersion: capturefleet.dev/v1alpha1
kind: ArchiveSink
metadata: {name: s3-worm, namespace: ns}
spec:
  s3:
    region: us-east-1
    bucket: archive
    objectLock: {mode: COMPLIANCE, retentionDays: 2190}
    credentialsSecretRef: {name: s3-creds}
    caBundle: {name: corp-ca, key: bundle.pem}
"#,
        );
        let m = render(&s);
        let SinkTarget::S3(t) = &m.config.as_ref().unwrap().target else {
            panic!("not s3")
        };
        assert_eq!(
            t.credentials_dir.as_deref(),
            Some(std::path::Path::new("/var/run/secrets/capturefleet/sinks/s3-worm"))
        );
        assert_eq!(
            t.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/capturefleet/ca/s3-worm/ca.crt"))
        );
        assert_eq!(t.object_lock.as_ref().unwrap().retention_days, 2190);
        assert_eq!(m.volumes.len(), 2);
        assert_eq!(
            m.volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("s3-creds")
        );
        assert!(m.mounts.iter().all(|v| v.read_only == Some(true)));
        assert!(m.volumes.iter().all(|v| v.name.len() <= 63));
    }

    #[test]
    fn webhook_key_is_projected_to_a_fixed_file() {
        let s = sink(
            r#"
apiVersion: capturefleet.dev/v1alpha1
kind: ArchiveSink
metadata: {name: hook, namespace: ns}
spec:
  webhook: {url: "https://archive.example/in", hmacSecretRef: {name: hook-key, key: secret}, timeout: 30s}
"#,
        );
        let m = render(&s);
        let SinkTarget::Webhook(t) = &m.config.unwrap().target else {
            panic!("not webhook")
        };
        assert_eq!(
            t.hmac_secret_file,
            std::path::PathBuf::from("/var/run/secrets/capturefleet/sinks/hook/hmac-key")
        );
        assert_eq!(t.timeout_seconds, 30);
        let items = m.volumes[0].secret.as_ref().unwrap().items.as_ref().unwrap();
        assert_eq!((items[0].key.as_str(), items[0].path.as_str()), ("secret", "hmac-key"));
    }
}
