//! Build a sink from its configuration. Each sink type adds its arm here.

use std::path::{Path, PathBuf};

use super::filesystem::FilesystemSink;
use super::kafka::KafkaSink;
use super::s3::S3Sink;
use super::smtp::SmtpSink;
use super::webhook::WebhookSink;
use super::{Sink, SinkError};
use crate::api::agent::{SinkConfig, SinkTarget};

/// The sink described by `config`, without durable state of its own. Nothing is contacted
/// yet ([`Sink::start`] does that). SMTP per-conversation-day needs a state directory: use
/// [`build_with_state`].
pub fn build(config: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    build_with_state(config, None)
}

/// Where sink `name` keeps durable state of its own: `<spool dir>/sink-state/<name>`, on the
/// device volume beside the spool.
pub fn state_dir(spool_dir: &Path, name: &str) -> PathBuf {
    spool_dir.join("sink-state").join(name)
}

/// The sink described by `config`; `state_dir` (see [`state_dir`]) is where a sink that must
/// buffer durably between acknowledgement and sending keeps its journal.
pub fn build_with_state(config: &SinkConfig, state_dir: Option<&Path>) -> Result<Box<dyn Sink>, SinkError> {
    let name = &config.name;
    Ok(match &config.target {
        SinkTarget::Filesystem(target) => Box::new(FilesystemSink::new(name, target)),
        SinkTarget::S3(target) => Box::new(S3Sink::new(name, target)?),
        SinkTarget::Smtp(target) => Box::new(SmtpSink::new(name, target, state_dir)?),
        SinkTarget::Kafka(target) => Box::new(KafkaSink::new(name, target)?),
        SinkTarget::Webhook(target) => Box::new(WebhookSink::new(name, target)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_every_sink_type_from_its_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hmac");
        std::fs::write(&secret, "k").unwrap();
        let configs = [
            ("filesystem", "name: arch\nfilesystem:\n  path: /tmp/x\n".to_owned()),
            (
                "s3",
                "name: s\ns3:\n  region: eu-west-1\n  bucket: b\n  objectLock: {mode: COMPLIANCE, retentionDays: 2555}\n"
                    .to_owned(),
            ),
            (
                "smtp",
                "name: m\nsmtp:\n  host: mx.example\n  port: 587\n  tls: StartTls\n  from: a@b.example\n  journalAddress: j@b.example\n  grouping: PerConversationDay\n".to_owned(),
            ),
            ("kafka", "name: k\nkafka:\n  brokers: [a:9092]\n  topic: t\n".to_owned()),
            (
                "webhook",
                format!("name: w\nwebhook:\n  url: https://hook.example/in\n  hmacSecretFile: {}\n", secret.display()),
            ),
        ];
        for (kind, yaml) in configs {
            let config: SinkConfig = serde_yaml::from_str(&yaml).unwrap();
            let sink = build_with_state(&config, Some(&state_dir(dir.path(), &config.name))).unwrap();
            assert_eq!((sink.name(), sink.type_name()), (config.name.as_str(), kind));
        }
        // Per-day SMTP without a state directory is refused clearly.
        let smtp: SinkConfig = serde_yaml::from_str(
            "name: m\nsmtp:\n  host: mx.example\n  port: 587\n  tls: StartTls\n  from: a@b.example\n  journalAddress: j@b.example\n  grouping: PerConversationDay\n",
        )
        .unwrap();
        assert!(matches!(build(&smtp), Err(SinkError::Misconfigured(_))));
    }
}
