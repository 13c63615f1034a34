//! The Kafka sink against a real Apache Kafka broker (KRaft, from Maven Central) started by
//! tests/sinks/up; read back with an independent read_committed consumer. `make test` runs these.

mod sink_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use capturefleet::api::agent::KafkaTarget;
use capturefleet::sinks::kafka::{KafkaSink, message_key};
use capturefleet::sinks::{Sink, SinkError, SpooledRecord};
use sink_support::{DirAttachments, ServerInstance, env, records};

const PARTITIONS: i32 = 3;

fn target(brokers: &str, topic: &str) -> KafkaTarget {
    KafkaTarget {
        brokers: vec![brokers.to_owned()],
        topic: topic.to_owned(),
        tls: false,
        ca_file: None,
        sasl_mechanism: None,
        credentials_dir: None,
        delivery_timeout_seconds: 5,
    }
}

async fn create_topic(brokers: &str) -> String {
    let topic = format!("archive-{:08x}", rand::random::<u32>());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    topic
}

/// One consumed message.
#[derive(Debug)]
struct Consumed {
    partition: i32,
    key: String,
    value: Vec<u8>,
    headers: BTreeMap<String, String>,
}

/// Everything committed to the topic, read with isolation.level=read_committed; waits until
/// `expect` messages arrived and then 2 s more for any extra (duplicate) message.
fn read_all(brokers: &str, topic: &str, expect: usize) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{:08x}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet_since = None;
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), String::from_utf8(h.value.unwrap().to_vec()).unwrap()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Consumed {
                    partition: m.partition(),
                    key: String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                    value: m.payload().unwrap().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None if out.len() >= expect => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
            None => {}
        }
    }
    out
}

/// Assert the topic holds each record exactly once, byte for byte, with key and headers, and
/// per partition in sequence order.
fn assert_exactly_once(consumed: &[Consumed], spool: &[SpooledRecord]) {
    assert_eq!(consumed.len(), spool.len(), "each record exactly once");
    let by_seq: BTreeMap<u64, &Consumed> = consumed
        .iter()
        .map(|c| (c.headers["seq"].parse::<u64>().unwrap(), c))
        .collect();
    assert_eq!(by_seq.len(), spool.len(), "no sequence number twice");
    for rec in spool {
        let c = by_seq[&rec.seq];
        assert_eq!(c.value, rec.json.as_bytes(), "seq {} byte for byte", rec.seq);
        assert_eq!(c.key, message_key(rec.record().unwrap()));
        assert_eq!(c.headers["idempotency-key"], rec.record().unwrap().idempotency_key);
        assert_eq!(c.headers["record-sha256"], rec.meta.hash);
        assert_eq!(
            c.headers["device"],
            format!("compliance/{}", rec.record().unwrap().device.name)
        );
    }
    for p in 0..PARTITIONS {
        let seqs: Vec<u64> = consumed
            .iter()
            .filter(|c| c.partition == p)
            .map(|c| c.headers["seq"].parse().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "partition {p} in order: {seqs:?}");
    }
}

#[tokio::test]
#[ignore = "needs the Kafka test broker (tests/sinks/up); run by make test"]
async fn start_requires_an_existing_topic() {
    let brokers = env("CAPTUREFLEET_KAFKA_BROKERS");
    let err = KafkaSink::new("k", &target(&brokers, "no-such-topic"))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Misconfigured(_)), "{err}");
    let topic = create_topic(&brokers).await;
    let sink = KafkaSink::new("k", &target(&brokers, &topic)).unwrap();
    sink.start().await.unwrap();
    sink.health().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the Kafka test broker (tests/sinks/up); run by make test"]
async fn records_are_committed_exactly_once_even_when_redelivered_after_a_restart() {
    let brokers = env("CAPTUREFLEET_KAFKA_BROKERS");
    let topic = create_topic(&brokers).await;
    let mut files = DirAttachments::new();
    let all = records("dev-k", 40, &mut files);

    let first = KafkaSink::new("k", &target(&brokers, &topic)).unwrap();
    first.start().await.unwrap();
    first.deliver(&all[..15], &files).await.unwrap();
    first.deliver(&all[15..20], &files).await.unwrap();
    drop(first);
    // The agent restarted without having recorded the acknowledgements: it redelivers from
    // seq 6 with other boundaries.
    let restarted = KafkaSink::new("k", &target(&brokers, &topic)).unwrap();
    restarted.deliver(&all[5..25], &files).await.unwrap();
    restarted.deliver(&all[20..], &files).await.unwrap();
    restarted.deliver(&all[30..], &files).await.unwrap();

    let consumed = tokio::task::spawn_blocking(move || read_all(&brokers, &topic, 40))
        .await
        .unwrap();
    assert_exactly_once(&consumed, &all);
}

#[tokio::test]
#[ignore = "needs the Kafka test broker (tests/sinks/up); run by make test"]
async fn tls_listener_is_verified_against_the_ca_file() {
    let tls_brokers = env("CAPTUREFLEET_KAFKA_TLS_BROKERS").replace("127.0.0.1", "localhost");
    let topic = create_topic(&env("CAPTUREFLEET_KAFKA_BROKERS")).await;
    let mut t = target(&tls_brokers, &topic);
    t.tls = true;
    // Without the test CA the broker's certificate is not trusted.
    let err = KafkaSink::new("k", &t).unwrap().start().await.unwrap_err();
    assert!(matches!(err, SinkError::Transient(_)), "{err}");
    t.ca_file = Some(env("CAPTUREFLEET_SINKS_CA_FILE").into());
    let sink = KafkaSink::new("k", &t).unwrap();
    sink.start().await.unwrap();
    let mut files = DirAttachments::new();
    let all = records("dev-tls", 6, &mut files);
    sink.deliver(&all, &files).await.unwrap();
    let brokers = env("CAPTUREFLEET_KAFKA_BROKERS");
    let consumed = tokio::task::spawn_blocking(move || read_all(&brokers, &topic, 6))
        .await
        .unwrap();
    assert_exactly_once(&consumed, &all);
}

#[tokio::test]
#[ignore = "needs the Kafka test broker (tests/sinks/server); run by make test"]
async fn broker_outage_mid_stream_loses_and_duplicates_nothing() {
    let mut server = ServerInstance::start("kafka");
    let brokers = server.var("KAFKA_BROKERS");
    let topic = create_topic(&brokers).await;
    let sink = KafkaSink::new("k", &target(&brokers, &topic)).unwrap();
    sink.start().await.unwrap();
    let mut files = DirAttachments::new();
    let all = records("dev-ko", 50, &mut files);

    let (mut cursor, mut failures, mut stopped) = (0, 0, false);
    while cursor < all.len() {
        if cursor >= 20 && !stopped {
            server.stop();
            stopped = true;
        }
        let end = (cursor + 6).min(all.len());
        match sink.deliver(&all[cursor..end], &files).await {
            Ok(()) => cursor = end,
            Err(e) => {
                assert!(matches!(e, SinkError::Transient(_)), "{e}");
                assert!(sink.health().await.is_err());
                failures += 1;
                if failures == 2 {
                    server.restart();
                }
            }
        }
    }
    assert!(failures >= 2);
    let consumed = tokio::task::spawn_blocking(move || read_all(&brokers, &topic, 50))
        .await
        .unwrap();
    assert_exactly_once(&consumed, &all);
}

#[tokio::test]
#[ignore = "needs the Kafka test broker (tests/sinks/up); run by make test"]
async fn sasl_credentials_come_from_the_mounted_secret_directory() {
    let sasl_brokers = env("CAPTUREFLEET_KAFKA_SASL_BROKERS");
    let brokers = env("CAPTUREFLEET_KAFKA_BROKERS");
    let topic = create_topic(&brokers).await;
    let mut t = target(&sasl_brokers, &topic);
    t.tls = true;
    t.ca_file = Some(env("CAPTUREFLEET_SINKS_CA_FILE").into());
    t.sasl_mechanism = Some("PLAIN".into());
    // A wrong password is refused by the broker.
    let wrong = tempfile::tempdir().unwrap();
    let user = std::fs::read_to_string(format!("{}/username", env("CAPTUREFLEET_KAFKA_CREDENTIALS_DIR"))).unwrap();
    std::fs::write(wrong.path().join("username"), &user).unwrap();
    std::fs::write(wrong.path().join("password"), "not-the-password\n").unwrap();
    t.credentials_dir = Some(wrong.path().to_owned());
    let err = KafkaSink::new("k", &t).unwrap().start().await.unwrap_err();
    assert!(
        matches!(err, SinkError::Misconfigured(ref m) if m.to_lowercase().contains("authentication")),
        "{err}"
    );
    // The Secret's files work.
    t.credentials_dir = Some(env("CAPTUREFLEET_KAFKA_CREDENTIALS_DIR").into());
    let sink = KafkaSink::new("k", &t).unwrap();
    assert!(!format!("{sink:?}").contains(
        &std::fs::read_to_string(format!("{}/password", env("CAPTUREFLEET_KAFKA_CREDENTIALS_DIR"))).unwrap()
    ));
    sink.start().await.unwrap();
    let mut files = DirAttachments::new();
    let all = records("dev-sasl", 5, &mut files);
    sink.deliver(&all, &files).await.unwrap();
    let consumed = tokio::task::spawn_blocking(move || read_all(&brokers, &topic, 5))
        .await
        .unwrap();
    assert_exactly_once(&consumed, &all);
}
