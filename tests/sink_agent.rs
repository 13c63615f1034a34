//! Sink outages through the agent's real pipeline (spool, per-sink cursors, delivery loop with
//! backoff, `/metrics`), in-process with a test double for the chat.db reader (`DraftFeed`:
//! the reader is not part of this build). Each test runs two real sinks against real servers,
//! stops one server mid-stream and checks: the stopped sink's `capture_records_pending` gauge
//! goes up while the other sink keeps receiving everything (its own cursor); after the restart
//! the gauge comes back to 0, the spool drains, and both servers hold every record exactly
//! once, byte for byte as chained. `make test` runs these.

mod sink_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use capturefleet::agent::backoff::Backoff;
use capturefleet::agent::run::{AgentExit, AgentRun, run};
use capturefleet::agent::source::{ArchiveIndex, Draft, RecordSource, SourceError};
use capturefleet::api::agent::*;
use capturefleet::api::record::{ArchiveRecord, GENESIS_HASH};
use capturefleet::sinks::factory;
use sink_support::webhook_receiver::{Pki, Receiver, SECRET, pki};
use sink_support::{DirAttachments, ServerInstance, env, records};

/// Test double of the chat.db reader: serves the drafts the test pushes, each once.
struct DraftFeed {
    drafts: Arc<Mutex<Vec<Draft>>>,
    position: usize,
}

impl RecordSource for DraftFeed {
    fn poll(&mut self, index: &dyn ArchiveIndex, limit: usize) -> Result<Vec<Draft>, SourceError> {
        let drafts = self.drafts.lock().unwrap();
        let mut out = Vec::new();
        while self.position < drafts.len() && out.len() < limit {
            let d = &drafts[self.position];
            self.position += 1;
            if !index.contains_key(&d.record.idempotency_key) {
                out.push(d.clone());
            }
        }
        Ok(out)
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        vec![]
    }
}

/// Unsealed drafts of `records()` (the agent seals them into its own chain).
fn drafts(device: &str, n: u64, files: &mut DirAttachments) -> Vec<Draft> {
    records(device, n, files)
        .into_iter()
        .map(|r| {
            let mut record = r.record().unwrap().clone();
            record.seq = 0;
            record.prev_hash.clear();
            record.hash.clear();
            let files = record
                .attachments
                .iter()
                .filter_map(|a| a.sha256.clone())
                .map(|sha| {
                    let path = files.path(&sha);
                    (sha, path)
                })
                .collect();
            Draft { record, files }
        })
        .collect()
}

struct Agent {
    token: CancellationToken,
    task: std::thread::JoinHandle<anyhow::Result<AgentExit>>,
    metrics: String,
    feed: Arc<Mutex<Vec<Draft>>>,
    _spool: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Agent {
    async fn start(device: &str, sinks: Vec<SinkConfig>) -> Agent {
        capturefleet::tls::install_crypto_provider();
        let spool = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = AgentConfig {
            schema: AGENT_CONFIG_SCHEMA.into(),
            device: AgentDevice {
                name: device.into(),
                namespace: Some("compliance".into()),
                user_id: Some("u-1234".into()),
            },
            chat_db: spool.path().join("chat.db"),
            messages_dir: None,
            spool_dir: spool.path().join("spool"),
            capture: CaptureSettings {
                poll_interval_ms: 100,
                ..Default::default()
            },
            sinks,
            spool_max_bytes: 1 << 30,
            http_listen: format!("127.0.0.1:{port}"),
            termination_message_path: spool.path().join("termination-log"),
            drain_timeout_seconds: 60,
        };
        let built = config
            .sinks
            .iter()
            .map(|c| {
                factory::build_with_state(c, Some(&factory::state_dir(&config.spool_dir, &c.name)))
                    .map(Arc::from)
                    .unwrap()
            })
            .collect();
        let mut settings = AgentRun::from_config(config.clone());
        settings.delivery.batch_records = 7;
        settings.delivery.backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        settings.delivery.probe_interval = Duration::from_millis(500);
        let feed = Arc::new(Mutex::new(Vec::new()));
        let source = Box::new(DraftFeed {
            drafts: feed.clone(),
            position: 0,
        });
        let token = CancellationToken::new();
        // The agent's run future is not Send (its spool readers hold SQLite connections): it
        // runs on its own runtime in its own thread, as `capturefleet agent` runs it.
        let stop = token.clone();
        let task = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(run(settings, source, built, stop))
        });
        Agent {
            token,
            task,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
            feed,
            _spool: spool,
        }
    }

    fn push(&self, drafts: &[Draft]) {
        self.feed.lock().unwrap().extend_from_slice(drafts);
    }

    /// A metric value with `sink="<sink>"`, if exposed.
    async fn metric(&self, name: &str, sink: &str) -> Option<f64> {
        let text = reqwest::get(&self.metrics).await.ok()?.text().await.ok()?;
        let prefix = format!("{name}{{sink=\"{sink}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    }

    async fn wait(&self, what: &str, name: &str, sink: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(v) = self.metric(name, sink).await
                && ok(v)
            {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) -> AgentExit {
        self.token.cancel();
        tokio::task::spawn_blocking(move || self.task.join().unwrap().unwrap())
            .await
            .unwrap()
    }
}

/// The stored lines form the device's whole chain 1..=n, each record once, each line the
/// record's canonical JSON with a valid hash.
fn assert_whole_chain(mut lines: Vec<String>, n: u64, sink: &str) {
    let mut by_seq = BTreeMap::new();
    for line in lines.drain(..) {
        let r = ArchiveRecord::from_json(&line).unwrap();
        assert!(r.hash_is_valid(), "{sink}: seq {} hash", r.seq);
        assert_eq!(r.to_canonical_json(), line, "{sink}: stored bytes are canonical");
        assert!(by_seq.insert(r.seq, r).is_none(), "{sink}: a record stored twice");
    }
    assert_eq!(by_seq.len() as u64, n, "{sink}: every record");
    let mut prev = GENESIS_HASH.to_owned();
    for (i, (seq, r)) in by_seq.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "{sink}: no gap");
        assert_eq!(r.prev_hash, prev, "{sink}: chain at {seq}");
        prev = r.hash.clone();
    }
}

// ---- readers of what each server holds ------------------------------------------------------

mod s3r {
    use super::*;
    use aws_sdk_s3::Client;
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

    pub fn client(endpoint: &str, creds: &Path, ca: &Path) -> Client {
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
        let read = |k: &str| std::fs::read_to_string(creds.join(k)).unwrap().trim().to_owned();
        let ctx = tls::TlsContext::builder()
            .with_trust_store(tls::TrustStore::empty().with_pem_certificate(std::fs::read(ca).unwrap()))
            .build()
            .unwrap();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(ctx)
            .build_https();
        Client::from_conf(
            aws_sdk_s3::config::Builder::new()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(endpoint)
                .force_path_style(true)
                .credentials_provider(Credentials::new(
                    read("accessKeyId"),
                    read("secretAccessKey"),
                    None,
                    None,
                    "t",
                ))
                .http_client(http)
                .build(),
        )
    }

    pub async fn bucket(c: &Client) -> String {
        let name = format!("cf-agent-{:08x}", rand::random::<u32>());
        c.create_bucket()
            .bucket(&name)
            .object_lock_enabled_for_bucket(true)
            .send()
            .await
            .unwrap();
        name
    }

    pub async fn lines(c: &Client, bucket: &str, device: &str) -> Vec<String> {
        let prefix = format!("compliance/{device}/records/");
        let list = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&prefix)
            .max_keys(1000)
            .send()
            .await
            .unwrap();
        let mut out = Vec::new();
        for o in list.contents() {
            let body = c
                .get_object()
                .bucket(bucket)
                .key(o.key().unwrap())
                .send()
                .await
                .unwrap();
            let bytes = body.body.collect().await.unwrap().into_bytes();
            out.extend(String::from_utf8(bytes.to_vec()).unwrap().lines().map(str::to_owned));
        }
        out
    }

    pub fn target(endpoint: &str, creds: &Path, ca: &Path, bucket: &str) -> SinkTarget {
        SinkTarget::S3(S3Target {
            endpoint: Some(endpoint.into()),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            prefix: String::new(),
            path_style: true,
            object_lock: Some(ObjectLock {
                mode: ObjectLockMode::Compliance,
                retention_days: 1,
                legal_hold: false,
            }),
            credentials_dir: Some(creds.to_owned()),
            ca_file: Some(ca.to_owned()),
            max_records_per_object: 1000,
        })
    }
}

mod kafkar {
    use super::*;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

    pub async fn topic(brokers: &str) -> String {
        let topic = format!("agent-{:08x}", rand::random::<u32>());
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
        for r in admin
            .create_topics(
                &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap()
        {
            r.unwrap();
        }
        topic
    }

    /// Committed messages, once `n` arrived plus 2 s of quiet (to see any extra one).
    pub fn lines(brokers: &str, topic: &str, n: usize) -> Vec<String> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("r-{:08x}", rand::random::<u32>()))
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        c.assign(&tpl).unwrap();
        let (mut out, deadline) = (Vec::new(), std::time::Instant::now() + Duration::from_secs(60));
        let mut quiet = None;
        while std::time::Instant::now() < deadline {
            match c.poll(Duration::from_millis(200)) {
                Some(m) => {
                    quiet = None;
                    out.push(String::from_utf8(m.unwrap().payload().unwrap().to_vec()).unwrap());
                }
                None if out.len() >= n
                    && quiet.get_or_insert_with(std::time::Instant::now).elapsed() > Duration::from_secs(2) =>
                {
                    break;
                }
                None => {}
            }
        }
        out
    }

    pub fn target(brokers: &str, topic: &str) -> SinkTarget {
        SinkTarget::Kafka(KafkaTarget {
            brokers: vec![brokers.into()],
            topic: topic.into(),
            tls: false,
            ca_file: None,
            sasl_mechanism: None,
            credentials_dir: None,
            delivery_timeout_seconds: 5,
        })
    }
}

mod smtpr {
    use super::*;

    pub fn target(port: u16, creds: &Path, ca: &Path, journal: &str) -> SinkTarget {
        SinkTarget::Smtp(SmtpTarget {
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::StartTls,
            from: "capture@bank.example".into(),
            journal_address: journal.into(),
            grouping: SmtpGrouping::PerRecord,
            credentials_dir: Some(creds.to_owned()),
            ca_file: Some(ca.to_owned()),
        })
    }

    /// The record JSON of each message delivered to `journal`, one per distinct Message-ID
    /// (the archive's deduplication key).
    pub fn lines(maildir: &Path, journal: &str) -> Vec<String> {
        let marker = format!("X-Original-To: {journal}\r\n");
        let mut by_id = BTreeMap::new();
        for e in std::fs::read_dir(maildir.join("new")).into_iter().flatten() {
            let raw = std::fs::read(e.unwrap().path()).unwrap();
            if !raw.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                continue;
            }
            let m = mail_parser::MessageParser::default().parse(&raw).unwrap();
            let json = String::from_utf8(m.attachment(0).unwrap().contents().to_vec()).unwrap();
            let previous = by_id.insert(m.message_id().unwrap().to_owned(), json.clone());
            assert!(previous.is_none_or(|p| p == json), "one Message-ID, two contents");
        }
        by_id.into_values().collect()
    }
}

/// A server a test can take down and bring back.
trait Outage {
    async fn take_down(&mut self);
    async fn bring_back(&mut self);
}

impl Outage for ServerInstance {
    async fn take_down(&mut self) {
        self.stop();
    }
    async fn bring_back(&mut self) {
        self.restart();
    }
}

/// The in-test HTTPS webhook receiver, on a fixed port once bound.
struct WebhookServer {
    receiver: Receiver,
    pki: Pki,
    addr: std::net::SocketAddr,
    handle: Option<axum_server::Handle<std::net::SocketAddr>>,
}

impl Outage for WebhookServer {
    async fn take_down(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
    async fn bring_back(&mut self) {
        let (addr, handle) = self.receiver.serve(&self.pki, self.addr).await;
        assert_eq!(addr, self.addr);
        self.handle = Some(handle);
    }
}

/// Push 20 drafts, stop the `down` sink's server, push 30 more, watch both sinks, restart the
/// server, wait for the spool to drain.
async fn outage(agent: &Agent, device: &str, down: &str, up: &str, server: &mut impl Outage) {
    let mut files = DirAttachments::new();
    let all = drafts(device, 50, &mut files);
    agent.push(&all[..20]);
    for sink in [down, up] {
        agent
            .wait("first 20 delivered", "capture_records_delivered_total", sink, |v| {
                v >= 20.0
            })
            .await;
        agent
            .wait("nothing pending", "capture_records_pending", sink, |v| v == 0.0)
            .await;
    }
    server.take_down().await;
    agent.push(&all[20..]);
    let peak = agent
        .wait("pending to grow", "capture_records_pending", down, |v| v >= 30.0)
        .await;
    // The healthy sink is not held back by the stopped one.
    agent
        .wait("healthy sink drained", "capture_records_delivered_total", up, |v| {
            v >= 50.0
        })
        .await;
    assert_eq!(agent.metric("capture_records_pending", up).await, Some(0.0));
    tokio::time::sleep(Duration::from_secs(2)).await; // a few failed attempts
    assert!(
        agent.metric("capture_records_pending", down).await.unwrap() >= peak,
        "nothing acknowledged while down"
    );
    assert_eq!(
        agent.metric("capture_sink_healthy", down).await,
        Some(0.0),
        "readiness sees the outage"
    );
    server.bring_back().await;
    agent
        .wait("pending back to 0", "capture_records_pending", down, |v| v == 0.0)
        .await;
    agent
        .wait("all delivered", "capture_records_delivered_total", down, |v| v >= 50.0)
        .await;
    drop(files);
}

async fn finish(agent: Agent) {
    let exit = agent.stop().await;
    assert!(exit.receipt.complete, "{:?}", exit.receipt);
    assert_eq!(exit.receipt.pending_total, 0);
    assert_eq!(exit.receipt.last_sequence, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the sink test servers (tests/sinks/up); run by make test"]
async fn s3_outage_through_the_agent_while_kafka_keeps_flowing() {
    let mut s3 = ServerInstance::start("s3");
    let (endpoint, creds, ca) = (
        s3.var("S3_ENDPOINT"),
        PathBuf::from(s3.var("S3_CREDENTIALS_DIR")),
        PathBuf::from(s3.var("CA_FILE")),
    );
    let client = s3r::client(&endpoint, &creds, &ca);
    let bucket = s3r::bucket(&client).await;
    let brokers = env("CAPTUREFLEET_KAFKA_BROKERS");
    let topic = kafkar::topic(&brokers).await;
    let agent = Agent::start(
        "dev-agent-s3",
        vec![
            SinkConfig {
                name: "worm".into(),
                target: s3r::target(&endpoint, &creds, &ca, &bucket),
            },
            SinkConfig {
                name: "stream".into(),
                target: kafkar::target(&brokers, &topic),
            },
        ],
    )
    .await;
    outage(&agent, "dev-agent-s3", "worm", "stream", &mut s3).await;
    finish(agent).await;
    assert_whole_chain(s3r::lines(&client, &bucket, "dev-agent-s3").await, 50, "s3");
    let lines = tokio::task::spawn_blocking(move || kafkar::lines(&brokers, &topic, 50))
        .await
        .unwrap();
    assert_whole_chain(lines, 50, "kafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the sink test servers (tests/sinks/up); run by make test"]
async fn kafka_outage_through_the_agent_while_smtp_keeps_flowing() {
    let mut kafka = ServerInstance::start("kafka");
    let brokers = kafka.var("KAFKA_BROKERS");
    let topic = kafkar::topic(&brokers).await;
    let (port, creds, ca, maildir) = (
        env("CAPTUREFLEET_SMTP_PORT").parse().unwrap(),
        PathBuf::from(env("CAPTUREFLEET_SMTP_CREDENTIALS_DIR")),
        PathBuf::from(env("CAPTUREFLEET_SINKS_CA_FILE")),
        PathBuf::from(env("CAPTUREFLEET_SMTP_MAILDIR")),
    );
    let journal = format!("journal+agent-{:06x}@archive.example", rand::random::<u32>() & 0xffffff);
    let agent = Agent::start(
        "dev-agent-k",
        vec![
            SinkConfig {
                name: "stream".into(),
                target: kafkar::target(&brokers, &topic),
            },
            SinkConfig {
                name: "journal".into(),
                target: smtpr::target(port, &creds, &ca, &journal),
            },
        ],
    )
    .await;
    outage(&agent, "dev-agent-k", "stream", "journal", &mut kafka).await;
    finish(agent).await;
    assert_whole_chain(smtpr::lines(&maildir, &journal), 50, "smtp");
    let lines = tokio::task::spawn_blocking(move || kafkar::lines(&brokers, &topic, 50))
        .await
        .unwrap();
    assert_whole_chain(lines, 50, "kafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the sink test servers (tests/sinks/up); run by make test"]
async fn smtp_outage_through_the_agent_while_s3_keeps_flowing() {
    let mut smtp = ServerInstance::start("smtp");
    let (port, creds, ca, maildir) = (
        smtp.var("SMTP_PORT").parse().unwrap(),
        PathBuf::from(smtp.var("SMTP_CREDENTIALS_DIR")),
        PathBuf::from(smtp.var("CA_FILE")),
        PathBuf::from(smtp.var("SMTP_MAILDIR")),
    );
    let journal = "journal@archive.example";
    let (endpoint, s3_creds) = (
        env("CAPTUREFLEET_S3_ENDPOINT"),
        PathBuf::from(env("CAPTUREFLEET_S3_CREDENTIALS_DIR")),
    );
    let client = s3r::client(&endpoint, &s3_creds, &ca);
    let bucket = s3r::bucket(&client).await;
    let agent = Agent::start(
        "dev-agent-m",
        vec![
            SinkConfig {
                name: "journal".into(),
                target: smtpr::target(port, &creds, &ca, journal),
            },
            SinkConfig {
                name: "worm".into(),
                target: s3r::target(&endpoint, &s3_creds, &ca, &bucket),
            },
        ],
    )
    .await;
    outage(&agent, "dev-agent-m", "journal", "worm", &mut smtp).await;
    finish(agent).await;
    assert_whole_chain(smtpr::lines(&maildir, journal), 50, "smtp");
    assert_whole_chain(s3r::lines(&client, &bucket, "dev-agent-m").await, 50, "s3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the sink test servers (tests/sinks/up); run by make test"]
async fn webhook_outage_through_the_agent_while_kafka_keeps_flowing() {
    capturefleet::tls::install_crypto_provider();
    let receiver = Receiver::new();
    let pki = pki();
    let (addr, handle) = receiver.serve(&pki, "127.0.0.1:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hmac"), SECRET).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let hook = SinkTarget::Webhook(WebhookTarget {
        url: format!("https://127.0.0.1:{}/hook", addr.port()),
        hmac_secret_file: dir.path().join("hmac"),
        ca_file: Some(dir.path().join("ca.pem")),
        timeout_seconds: 2,
    });
    let brokers = env("CAPTUREFLEET_KAFKA_BROKERS");
    let topic = kafkar::topic(&brokers).await;
    let agent = Agent::start(
        "dev-agent-w",
        vec![
            SinkConfig {
                name: "hook".into(),
                target: hook,
            },
            SinkConfig {
                name: "stream".into(),
                target: kafkar::target(&brokers, &topic),
            },
        ],
    )
    .await;
    let mut server = WebhookServer {
        receiver,
        pki,
        addr,
        handle: Some(handle),
    };
    outage(&agent, "dev-agent-w", "hook", "stream", &mut server).await;
    finish(agent).await;
    let lines = server.receiver.with(|r| {
        assert_eq!(r.bad_signatures, 0);
        r.stored
            .values()
            .map(|b| String::from_utf8(b.clone()).unwrap())
            .collect::<Vec<_>>()
    });
    assert_whole_chain(lines, 50, "webhook");
    let lines = tokio::task::spawn_blocking(move || kafkar::lines(&brokers, &topic, 50))
        .await
        .unwrap();
    assert_whole_chain(lines, 50, "kafka");
}
