//! Process life: HTTP endpoints first (`/livez` at once, `/readyz` once the caches are
//! synced), then leader election on a Lease, then the controllers while this replica leads.
//! SIGTERM stops the controllers, lets in-flight reconciles finish, releases the Lease and
//! exits 0; losing the Lease exits non-zero so the replica restarts clean (no split brain).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use super::context::{Context, Expectations, Settings};
use super::controllers::{self, Scope};
use super::metrics::OperatorMetrics;
use super::{client, labels};
use crate::telemetry::{Health, server};

/// Options of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Address of `/livez`, `/readyz`, `/metrics`.
    pub listen: String,
    /// Watch scope.
    pub scope: Scope,
    /// Use a Lease (two or more replicas).
    pub leader_election: bool,
    /// Lease name.
    pub lease_name: String,
    /// Lease namespace.
    pub lease_namespace: String,
    /// This replica's identity.
    pub identity: String,
    /// Concurrent device reconciles.
    pub concurrency: u16,
    /// Fleet gauges by pool.
    pub pool_label: bool,
}

fn shutdown_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
        }
        token.cancel();
    });
}

/// Run the operator.
pub async fn run(options: RunOptions) -> anyhow::Result<ExitCode> {
    crate::tls::install_crypto_provider();
    let registry = Registry::new_custom(Some(String::new()).filter(|s| !s.is_empty()), None)?;
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    let metrics = OperatorMetrics::new(&registry, options.pool_label)?;
    let health = Health::new();
    let shutdown = CancellationToken::new();
    shutdown_on_signal(shutdown.clone());
    let (addr, http) = server::serve(&options.listen, health.clone(), registry.clone(), shutdown.clone()).await?;
    tracing::info!(%addr, identity = %options.identity, "capturefleet operator starting");

    let client = client::build(metrics.api_requests.clone()).await?;
    let code = if options.leader_election {
        health.set_ready_with("standby: waiting for the leader Lease");
        let manager = LeaseManagerBuilder::new(client.clone(), &options.lease_name)
            .with_namespace(&options.lease_namespace)
            .with_identity(&options.identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await?;
        let (mut leading, lease_task) = manager.watch().await;
        // Wait for leadership (or shutdown).
        loop {
            if *leading.borrow_and_update() {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    drop(leading);
                    let _ = lease_task.await;
                    http.await.ok();
                    return Ok(ExitCode::SUCCESS);
                }
                changed = leading.changed() => if changed.is_err() {
                    anyhow::bail!("the lease manager stopped");
                }
            }
        }
        metrics.leader.set(1);
        tracing::info!(lease = %options.lease_name, "acquired the leader Lease");
        let controllers_stop = shutdown.child_token();
        let work = lead(
            client.clone(),
            options.clone(),
            metrics.clone(),
            health.clone(),
            controllers_stop.clone(),
        );
        tokio::pin!(work);
        let lost = loop {
            tokio::select! {
                _ = &mut work => break false,
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow_and_update() {
                        tracing::error!("lost the leader Lease; stopping so that another replica leads alone");
                        controllers_stop.cancel();
                        (&mut work).await;
                        break true;
                    }
                }
            }
        };
        metrics.leader.set(0);
        drop(leading); // releases the Lease
        let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
        if lost { ExitCode::FAILURE } else { ExitCode::SUCCESS }
    } else {
        metrics.leader.set(1);
        lead(client, options, metrics, health.clone(), shutdown.clone()).await;
        ExitCode::SUCCESS
    };
    shutdown.cancel();
    http.await.ok();
    tracing::info!("capturefleet operator stopped");
    Ok(code)
}

async fn lead(
    client: kube::Client,
    options: RunOptions,
    metrics: OperatorMetrics,
    health: Health,
    stop: CancellationToken,
) {
    health.set_not_ready("leader: waiting for the first watch lists");
    let watches = controllers::watches(&client, &options.scope, &metrics);
    let stores = watches.stores.clone();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: labels::FIELD_MANAGER.into(),
            instance: Some(options.identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client,
        stores: stores.clone(),
        recorder,
        metrics,
        expectations: Expectations::default(),
        failures: Default::default(),
        reservations: Default::default(),
        written: Default::default(),
        settings: Settings {
            identity: options.identity.clone(),
        },
    });
    let readiness = {
        let health = health.clone();
        async move {
            controllers::wait_synced(&stores).await;
            health.set_ready();
            tracing::info!("caches synced; reconciling");
        }
    };
    tokio::join!(readiness, controllers::run(watches, ctx, options.concurrency, stop));
}
