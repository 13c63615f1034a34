//! Build a sink from its configuration. Each sink type adds its arm here.

use super::filesystem::FilesystemSink;
use super::{Sink, SinkError};
use crate::api::agent::{SinkConfig, SinkTarget};

/// The sink described by `config`. Nothing is contacted yet ([`Sink::start`] does that).
pub fn build(config: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    match &config.target {
        SinkTarget::Filesystem(target) => Ok(Box::new(FilesystemSink::new(&config.name, target))),
        other => Err(SinkError::Misconfigured(format!(
            "sink {:?}: the {} sink is not built into this binary yet",
            config.name,
            other.type_name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_filesystem_and_refuses_unknown_types_clearly() {
        let fs: SinkConfig = serde_yaml::from_str("name: arch\nfilesystem:\n  path: /tmp/x\n").unwrap();
        let sink = build(&fs).unwrap();
        assert_eq!((sink.name(), sink.type_name()), ("arch", "filesystem"));
        let kafka: SinkConfig = serde_yaml::from_str("name: k\nkafka:\n  brokers: [a:9092]\n  topic: t\n").unwrap();
        match build(&kafka) {
            Err(SinkError::Misconfigured(m)) => assert!(m.contains("kafka"), "{m}"),
            other => panic!("expected Misconfigured, got {:?}", other.map(|s| s.name().to_owned())),
        }
    }
}
