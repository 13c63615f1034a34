//! SMTP journaling sink: RFC 5322 messages into the archive's journal mailbox.
//!
//! Archives such as Global Relay, Smarsh or Veritas Enterprise Vault ingest a copy of every
//! communication through an SMTP journal address. This sink sends one message per record
//! (`grouping: PerRecord`, the default) or one per conversation and UTC day
//! (`PerConversationDay`), built by [`super::eml`]: deterministic `Message-ID`, `X-Capturefleet-*`
//! headers with conversation, participants, service and hashes, the exact stored records as a
//! JSON part, attachments as MIME parts.
//!
//! Delivery guarantee: at least once, with a stable `Message-ID` and identical bytes on every
//! resend, so the archive's Message-ID deduplication stores each message once. A batch is
//! acknowledged after the server accepted every message of it (`250` after `DATA`); in
//! per-day mode once the records are durably journaled (see [`super::smtp_day`]), and the day's
//! message is sent when the day is over (the stream moved to a later day, or a minute-by-minute
//! timer sees the UTC day plus 15 minutes of grace has passed) or on drain (`flush`).
//!
//! Transport security: `StartTls` (default) refuses a server that does not offer STARTTLS;
//! `Implicit` is SMTPS; certificates are always verified (system roots plus `caFile`). Plain
//! text only with `tls: None`, set explicitly. AUTH with `username`/`password` from
//! `credentialsDir`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::Mutex;
use tracing::{debug, info, instrument, warn};

use super::ca::CaBundle;
use super::eml::{EmlAttachment, EmlSettings, day_eml, record_eml};
use super::secret::BasicAuth;
use super::smtp_day::{ConvDay, DayJournal, record_day};
use super::{AttachmentStore, Sink, SinkError, SpooledRecord};
use crate::api::agent::{SmtpGrouping, SmtpTarget, SmtpTls};

/// How long after a UTC midnight the previous day's messages are considered complete.
const DAY_GRACE: Duration = Duration::from_secs(15 * 60);
/// How often per-day mode looks for days that have ended.
const DAY_TICK: Duration = Duration::from_secs(60);

/// The SMTP journaling sink.
pub struct SmtpSink {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    settings: EmlSettings,
    envelope: Envelope,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Per-day mode: the durable journal, one user at a time.
    journal: Option<Mutex<DayJournal>>,
    ticker_started: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

fn smtp_error(what: &str, e: &lettre::transport::smtp::Error) -> SinkError {
    let message = format!("SMTP {what}: {}", super::webhook::error_chain(e));
    let code = e.status().map(|c| c.to_string());
    match code.as_deref() {
        // Authentication required / failed, encryption required: the configuration is wrong.
        Some("530" | "534" | "535" | "538") => SinkError::Misconfigured(message),
        _ if e.is_permanent() => SinkError::Permanent(message),
        _ => SinkError::Transient(message),
    }
}

/// Whether a conversation-day is over at `now`.
pub fn day_has_ended(day: &str, now: jiff::Timestamp) -> bool {
    let Ok(date) = day.parse::<jiff::civil::Date>() else {
        return true; // "unknown": nothing to wait for
    };
    let Ok(next) = date.tomorrow().and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC)) else {
        return true;
    };
    now.as_second() >= next.timestamp().as_second() + DAY_GRACE.as_secs() as i64
}

impl SmtpSink {
    /// Build the sink. `state_dir` is where per-conversation-day mode keeps its journal (on
    /// the device volume, e.g. `<spool>/sink-state/<name>`); it is required in that mode.
    pub fn new(name: &str, target: &SmtpTarget, state_dir: Option<&Path>) -> Result<Self, SinkError> {
        let from: Address = target
            .from
            .parse()
            .map_err(|e| SinkError::Misconfigured(format!("smtp from is not an address: {e}")))?;
        let journal_address: Address = target
            .journal_address
            .parse()
            .map_err(|e| SinkError::Misconfigured(format!("smtp journalAddress is not an address: {e}")))?;
        let envelope = Envelope::new(Some(from), vec![journal_address])
            .map_err(|e| SinkError::Misconfigured(format!("smtp envelope: {e}")))?;
        let tls_parameters = || -> Result<TlsParameters, SinkError> {
            let mut builder = TlsParameters::builder(target.host.clone());
            if let Some(ca) = CaBundle::read_optional(target.ca_file.as_deref())? {
                let cert = Certificate::from_pem(ca.pem())
                    .map_err(|e| SinkError::Misconfigured(format!("smtp caFile: {e}")))?;
                builder = builder.add_root_certificate(cert);
            }
            builder
                .build_rustls()
                .map_err(|e| SinkError::Misconfigured(format!("smtp TLS settings: {e}")))
        };
        let tls = match target.tls {
            SmtpTls::StartTls => Tls::Required(tls_parameters()?),
            SmtpTls::Implicit => Tls::Wrapper(tls_parameters()?),
            SmtpTls::None => {
                warn!(sink = %name, "SMTP sink sends in plain text (tls: None)");
                Tls::None
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(target.host.clone())
            .port(target.port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(60)));
        if let Some(dir) = &target.credentials_dir {
            let auth = BasicAuth::read(dir)?;
            builder = builder.credentials(Credentials::new(
                auth.username.expose().to_owned(),
                auth.password.expose().to_owned(),
            ));
        }
        let journal = match target.grouping {
            SmtpGrouping::PerRecord => None,
            SmtpGrouping::PerConversationDay => {
                let dir: PathBuf = state_dir
                    .ok_or_else(|| SinkError::Misconfigured("smtp PerConversationDay needs a state directory".into()))?
                    .to_owned();
                Some(Mutex::new(DayJournal::open(&dir)?))
            }
        };
        Ok(SmtpSink {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                settings: EmlSettings {
                    from: target.from.clone(),
                    journal_address: target.journal_address.clone(),
                },
                envelope,
                transport: builder.build(),
                journal,
                ticker_started: Default::default(),
            }),
        })
    }
}

impl Inner {
    async fn send(&self, eml: &[u8]) -> Result<(), SinkError> {
        self.transport
            .send_raw(&self.envelope, eml)
            .await
            .map(|_| ())
            .map_err(|e| smtp_error("send", &e))
    }

    async fn deliver_per_record(
        &self,
        batch: &[SpooledRecord],
        attachments: &dyn AttachmentStore,
    ) -> Result<(), SinkError> {
        for rec in batch {
            let mut files = Vec::new();
            // The files the spool holds for this record (an attachment arriving later comes
            // with its own `attachment` record).
            for att in rec.record()?.attachments.iter().filter(|a| !a.missing) {
                let Some(sha) = att.sha256.as_ref().filter(|sha| rec.meta.files.contains(sha)) else {
                    continue;
                };
                let content = attachments.get(sha).ok_or_else(|| {
                    SinkError::Permanent(format!(
                        "record seq {} names attachment {sha} but the spool does not hold its file",
                        rec.seq
                    ))
                })?;
                let bytes = tokio::task::spawn_blocking(move || content.read_all())
                    .await
                    .map_err(|e| SinkError::Transient(format!("attachment reader failed: {e}")))?
                    .map_err(|e| SinkError::Transient(format!("cannot read captured attachment {sha}: {e}")))?;
                files.push(EmlAttachment {
                    info: att.clone(),
                    bytes,
                });
            }
            self.send(&record_eml(&self.settings, rec, &files)?).await?;
        }
        Ok(())
    }

    /// Send the pending conversation-days `ready` selects; each is removed once sent.
    async fn send_days(&self, journal: &DayJournal, ready: impl Fn(&ConvDay) -> bool) -> Result<usize, SinkError> {
        let mut sent = 0;
        for cd in journal.pending()?.into_iter().filter(|cd| ready(cd)) {
            let (records, files) = journal.load(&cd)?;
            if !records.is_empty() {
                self.send(&day_eml(&self.settings, &cd.day, &records, &files)?).await?;
                sent += 1;
            }
            journal.remove(&cd)?;
        }
        if sent > 0 {
            info!(sink = %self.name, messages = sent, "sent conversation-day journal messages");
        }
        Ok(sent)
    }

    async fn tick(&self) -> Result<usize, SinkError> {
        let Some(journal) = &self.journal else { return Ok(0) };
        let journal = journal.lock().await;
        let now = jiff::Timestamp::now();
        self.send_days(&journal, |cd| day_has_ended(&cd.day, now)).await
    }
}

#[async_trait]
impl Sink for SmtpSink {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn type_name(&self) -> &'static str {
        "smtp"
    }

    /// Connects (with STARTTLS and AUTH as configured); in per-day mode also starts the timer
    /// that sends days once they are over.
    async fn start(&self) -> Result<(), SinkError> {
        self.health().await?;
        if self.inner.journal.is_some()
            && !self
                .inner
                .ticker_started
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let weak: Weak<Inner> = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(DAY_TICK);
                loop {
                    interval.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    if let Err(e) = inner.tick().await {
                        warn!(sink = %inner.name, error = %e, "sending ended conversation-days failed; will retry");
                    }
                }
            });
        }
        Ok(())
    }

    async fn health(&self) -> Result<(), SinkError> {
        match self.inner.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SinkError::Transient("SMTP server did not answer NOOP".into())),
            Err(e) => Err(smtp_error("connect", &e)),
        }
    }

    #[instrument(name = "smtp_deliver", skip_all, fields(sink = %self.inner.name, records = batch.len()))]
    async fn deliver(&self, batch: &[SpooledRecord], attachments: &dyn AttachmentStore) -> Result<(), SinkError> {
        let inner = &self.inner;
        let Some(journal) = &inner.journal else {
            return inner.deliver_per_record(batch, attachments).await;
        };
        let journal = journal.lock().await;
        journal.append(batch, attachments)?;
        debug!(sink = %inner.name, "records journaled for their conversation-day messages");
        // Days the stream has moved past and that are over are sent now; a failure here does
        // not fail the batch (it is journaled) — the timer and the next batch retry.
        let newest = batch.iter().filter_map(|r| r.record().ok().map(record_day)).max();
        let now = jiff::Timestamp::now();
        if let Some(newest) = newest
            && let Err(e) = inner
                .send_days(&journal, |cd| cd.day < newest && day_has_ended(&cd.day, now))
                .await
        {
            warn!(sink = %inner.name, error = %e, "sending ended conversation-days failed; will retry");
        }
        Ok(())
    }

    /// Records journaled for conversation-day messages not sent yet.
    async fn buffered(&self) -> Result<u64, SinkError> {
        match &self.inner.journal {
            Some(journal) => journal.lock().await.buffered(),
            None => Ok(0),
        }
    }

    /// Send every journaled conversation-day now (drain).
    async fn flush(&self) -> Result<(), SinkError> {
        let Some(journal) = &self.inner.journal else {
            return Ok(());
        };
        let journal = journal.lock().await;
        self.inner.send_days(&journal, |_| true).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_ends_at_utc_midnight_plus_grace() {
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert!(!day_has_ended("2024-03-09", at("2024-03-09T23:59:59Z")));
        assert!(!day_has_ended("2024-03-09", at("2024-03-10T00:14:59Z")));
        assert!(day_has_ended("2024-03-09", at("2024-03-10T00:15:00Z")));
        assert!(day_has_ended("unknown", at("2024-03-10T00:00:00Z")));
    }

    #[test]
    fn per_day_mode_needs_a_state_directory_and_addresses_must_parse() {
        let mut target = SmtpTarget {
            host: "127.0.0.1".into(),
            port: 25,
            tls: SmtpTls::StartTls,
            from: "capture@bank.example".into(),
            journal_address: "journal@archive.example".into(),
            grouping: SmtpGrouping::PerConversationDay,
            credentials_dir: None,
            ca_file: None,
        };
        assert!(matches!(
            SmtpSink::new("m", &target, None),
            Err(SinkError::Misconfigured(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(SmtpSink::new("m", &target, Some(dir.path())).is_ok());
        target.from = "not an address".into();
        assert!(matches!(
            SmtpSink::new("m", &target, Some(dir.path())),
            Err(SinkError::Misconfigured(_))
        ));
    }
}
