//! `capturefleet operator`.

use std::process::ExitCode;

use super::controllers::Scope;
use super::runtime::{self, RunOptions};

/// Operator options.
#[derive(clap::Args, Debug)]
pub struct OperatorArgs {
    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "CAPTUREFLEET_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Watch and manage only this namespace (namespaced mode). Default: every namespace.
    #[arg(long, env = "CAPTUREFLEET_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Elect a leader through a Lease, so that several replicas are safe.
    #[arg(long, env = "CAPTUREFLEET_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "capturefleet-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease. Default: this Pod's namespace (POD_NAMESPACE), else
    /// `default`.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity. Default: POD_NAME, else the host name and process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Device reconciles in parallel.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// Add a `pool` label to the fleet gauges (pool names are object names; leave off unless
    /// you have few pools).
    #[arg(long, default_value_t = false)]
    pub metrics_pool_label: bool,
}

/// Run the operator.
pub fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let options = RunOptions {
        listen: args.listen,
        scope: args.namespace.clone().map(Scope::Namespace).unwrap_or(Scope::Cluster),
        leader_election: args.leader_election,
        lease_name: args.lease_name,
        lease_namespace: args
            .lease_namespace
            .or(args.namespace)
            .unwrap_or_else(|| "default".into()),
        identity,
        concurrency: args.concurrency.max(1),
        pool_label: args.metrics_pool_label,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(runtime::run(options))
}
