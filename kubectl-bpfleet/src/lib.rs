//! `kubectl bpfleet`: a kubectl plugin for bpfleet BpfPrograms: follow, list, undo, pause,
//! resume, promote, abort and retry rollouts, show what each node runs, and make bytecode images (`image`,
//! which needs no cluster).
//!
//! Each command is a pure core (what to print, which revision, which patch, which exit
//! status) unit-tested without a cluster, and a thin `run` that reads and patches
//! through the Kubernetes API.

pub mod actions;
pub mod cli;
pub mod history;
pub mod image;
pub mod maps;
pub mod nodes;
pub mod output;
pub mod status;
pub mod table;
pub mod undo;

use std::io::Write;

use anyhow::Context as _;
use crds::BpfProgram;
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use cli::{Cli, Command, Rollout};
use crds::rollout::Action;

/// Recorded as the field manager of every patch this plugin makes.
pub const FIELD_MANAGER: &str = "kubectl-bpfleet";

/// The process exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The rollout failed (Stalled: Halted, RolledBack, Degraded), or the command did.
    Failed = 1,
    /// The rollout has not finished (timeout, or `--watch=false` while it goes on or is
    /// held at a pause).
    NotDone = 2,
}

/// A client for `--kubeconfig`/`--context`, else as kubectl finds one.
pub async fn client(cli: &Cli) -> anyhow::Result<Client> {
    let opts = KubeConfigOptions { context: cli.context.clone(), ..Default::default() };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc =
                Kubeconfig::read_from(path).with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &opts).await.with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None if cli.context.is_some() => Config::from_kubeconfig(&opts).await.context("kubeconfig")?,
        None => Config::infer()
            .await
            .context("no Kubernetes configuration found (KUBECONFIG, ~/.kube/config, in-cluster)")?,
    };
    Client::try_from(config).context("cannot build a Kubernetes client")
}

/// Carry out `cli` with `client`, writing to `out`.
pub async fn run(cli: Cli, client: Client, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let programs: Api<BpfProgram> = Api::all(client.clone());
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), &cli.namespace);
    match cli.command {
        Command::Rollout(Rollout::Status { name, timeout, watch }) => {
            return status::run(programs, &name, timeout.0, watch, out).await;
        }
        Command::Rollout(Rollout::History { name, revision }) => {
            history::run(programs, revisions, &cli.namespace, &name, revision, out).await?
        }
        Command::Rollout(Rollout::Undo { name, to_revision }) => {
            let args = undo::Args { name: &name, to_revision, field_manager: FIELD_MANAGER };
            undo::run(client, revisions, args, out).await?
        }
        Command::Rollout(Rollout::Pause { name }) => actions::pause(programs, &name, FIELD_MANAGER, out).await?,
        Command::Rollout(Rollout::Resume { name }) => act(programs, &name, Action::Resume, out).await?,
        Command::Rollout(Rollout::Promote { name, full }) => {
            let action = if full { Action::PromoteFull } else { Action::Promote };
            act(programs, &name, action, out).await?
        }
        Command::Rollout(Rollout::Abort { name }) => act(programs, &name, Action::Abort, out).await?,
        Command::Rollout(Rollout::Retry { name }) => act(programs, &name, Action::Retry, out).await?,
        Command::Nodes { program, wide } => nodes::run(client, &program, wide, out).await?,
        Command::Maps {
            program,
            map,
            node,
            all_nodes,
            sum,
            output,
            max_entries,
            service_account,
            operator_service,
        } => {
            let query = crds::mapread::MapsQuery {
                program,
                node: node.unwrap_or_default(),
                all_nodes,
                map: map.unwrap_or_default(),
                max_entries,
                timeout_ms: 0,
            };
            let args = maps::Args {
                query,
                sum,
                format: output,
                service_account,
                service: operator_service,
                namespace: cli.namespace.clone(),
            };
            maps::run(client, &args, out).await?
        }
        Command::Image(cmd) => return image::run(*cmd, out).await,
    }
    Ok(Exit::Ok)
}

async fn act(programs: Api<BpfProgram>, name: &str, action: Action, out: &mut dyn Write) -> anyhow::Result<()> {
    actions::request_action(programs, name, action, FIELD_MANAGER, out).await
}
