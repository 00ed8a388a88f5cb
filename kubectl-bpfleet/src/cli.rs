//! The command line: `kubectl bpfleet rollout …`, `kubectl bpfleet nodes …` and
//! `kubectl bpfleet image …` (its arguments are in [`crate::image`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};

const GITOPS_NOTE: &str = "\
pause patches the BpfProgram's spec (spec.rollout.paused), so GitOps tools see it: with Argo CD \
self-heal or Flux, a spec that differs from Git is reverted at the next sync. Commit \
spec.rollout.paused to Git instead of, or as well as, running it. The same holds for `rollout undo`. \
resume, promote, abort and retry only set the bpfleet.dev/rollout-action annotation, which the \
operator carries out and removes: nothing to commit, and `kubectl annotate bpfprogram NAME \
bpfleet.dev/rollout-action=promote` does the same without the plugin.";

const ACTION_NOTE: &str = "\
Sets the bpfleet.dev/rollout-action annotation (one merge patch); the operator carries it out for \
status.rollout.updateRevision, records it in status.rollout (lastAction, lastActionTime) and removes \
the annotation. GitOps tools leave the annotation alone, and nothing needs committing. Without the \
plugin: `kubectl annotate bpfprogram NAME bpfleet.dev/rollout-action=ACTION` (resume, promote, \
promote-full, abort, retry). Refused, with what to run instead, when status.rollout.phase makes the \
action meaningless.";

/// Rollouts and per-node state of bpfleet BpfPrograms.
#[derive(Parser, Debug)]
#[command(name = "kubectl-bpfleet", bin_name = "kubectl bpfleet", version)]
pub struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The operator's namespace, where revision history (ControllerRevisions) is kept.
    #[arg(short, long, global = true, env = "BPFLEET_NAMESPACE", default_value = "bpfleet-system")]
    pub namespace: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Follow, inspect, undo, pause, resume, promote, abort and retry the rollout of a
    /// BpfProgram's revisions.
    #[command(subcommand)]
    Rollout(Rollout),
    /// What each node runs of PROGRAM: revision, health, program and link ids, last error.
    ///
    /// From the BpfNodes (one per node). Target nodes whose agent reports no entry for
    /// the program are listed as NotReported when Nodes can be listed.
    Nodes {
        /// The BpfProgram's name.
        program: String,
        /// Show last errors in full instead of cut to one short line.
        #[arg(long)]
        wide: bool,
    },
    /// The entries of PROGRAM's maps on its nodes, decoded with each map's BTF.
    ///
    /// Struct fields by name, enums by their names, per-CPU values per CPU (or summed with
    /// --sum); maps without BTF as hex bytes, with a note. Read-only and bounded (entries,
    /// bytes and time per node: a cut answer says so). Goes through the API server to the
    /// operator with a short-lived token of --service-account, which needs `get` on
    /// bpfprograms/maps (docs/maps.md): you need create on that account's
    /// serviceaccounts/token and get on the operator's services/proxy.
    Maps {
        /// The BpfProgram's name (a BpfNamespacedProgram's is NAMESPACE.NAME).
        program: String,
        /// One map by its name in the ELF object (default: every map of the program).
        map: Option<String>,
        /// Read on this node (default: the only node that runs the program).
        #[arg(long, conflicts_with = "all_nodes")]
        node: Option<String>,
        /// Read on every node that runs the program.
        #[arg(long)]
        all_nodes: bool,
        /// Sum per-CPU values (field by field) instead of one per CPU.
        #[arg(long)]
        sum: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: crate::maps::Format,
        /// Most entries per map (the agent's default: 10000; at most 100000).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        max_entries: u32,
        /// The service account whose token is sent, NAMESPACE/NAME.
        #[arg(long, default_value = "bpfleet-system/bpfleet-map-reader")]
        service_account: String,
        /// The operator's map service in --namespace, NAME:PORT.
        #[arg(long, default_value = "bpfleet-operator-maps:maps")]
        operator_service: String,
    },
    /// Bytecode images: build from an ELF object, push, sign, verify, inspect.
    ///
    /// Talks to the registry only (never to the cluster): no Docker or cosign needed.
    #[command(subcommand)]
    Image(Box<crate::image::ImageCommand>),
}

#[derive(Subcommand, Debug)]
pub enum Rollout {
    /// Print the rollout's progress until it completes, fails or times out.
    ///
    /// Exit status, from the program's conditions for its current generation (the same
    /// verdict Flux's kstatus and the Argo CD health check give): 0 when the rollout is
    /// done (Reconciling and Stalled False, not held); 1 when it failed (Stalled True:
    /// Halted, RolledBack, Degraded), with its message, or when the command itself fails;
    /// 2 on timeout, or with --watch=false, while it is in progress or held at a pause
    /// that waits for `rollout resume` or `promote`.
    Status {
        /// The BpfProgram's name.
        name: String,
        /// Give up after this long: 30s, 10m, 1h; 0 waits forever.
        #[arg(long, default_value = "10m", value_parser = parse_timeout)]
        timeout: Timeout,
        /// Follow the rollout (true) or print its state once (false).
        #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        watch: bool,
    },
    /// List the revisions kept for a BpfProgram, or show one in detail.
    History {
        /// The BpfProgram's name.
        name: String,
        /// Show this revision (its REVISION number) in detail.
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Go back to an earlier revision's bytecode, programs, globalData and maps.
    ///
    /// One merge patch of the spec (see `rollout pause --help` about GitOps). Default:
    /// the newest revision that is not the current one. A ConfigMap that no longer holds
    /// the recorded object is not trusted: the recorded bytes are restored as
    /// spec.bytecode.inline (if at most 1 MiB), or undo refuses.
    Undo {
        /// The BpfProgram's name.
        name: String,
        /// The REVISION number (from `rollout history`) to go back to.
        #[arg(long)]
        to_revision: Option<i64>,
    },
    /// Hold the rollout where it is: sets spec.rollout.paused=true.
    #[command(after_help = GITOPS_NOTE)]
    Pause {
        /// The BpfProgram's name.
        name: String,
    },
    /// Let a paused or halted rollout go on.
    ///
    /// Ends the current pause (timed or not), or restarts a Halted rollout at its step
    /// once its failed nodes are within failureThreshold. When spec.rollout.paused is
    /// true, also sets it false in the same patch: that edits the spec, which a GitOps
    /// tool reverts unless Git says false too.
    #[command(after_help = ACTION_NOTE)]
    Resume {
        /// The BpfProgram's name.
        name: String,
    },
    /// Go past the current step now, skipping what remains of its pause.
    ///
    /// For a Progressing or Paused rollout. --full skips every remaining step and pause:
    /// all target nodes, maxInFlight at a time.
    #[command(after_help = ACTION_NOTE)]
    Promote {
        /// The BpfProgram's name.
        name: String,
        /// Skip every remaining step and pause (bpfleet.dev/rollout-action=promote-full).
        #[arg(long)]
        full: bool,
    },
    /// Stop the rollout and return the updated nodes to the stable revision.
    ///
    /// Every node that runs status.rollout.updateRevision goes back to
    /// status.rollout.stableRevision. For a rollout that is not Complete or RolledBack
    /// and has a stable revision.
    #[command(after_help = ACTION_NOTE)]
    Abort {
        /// The BpfProgram's name.
        name: String,
    },
    /// Start a failed or aborted rollout again from step 1.
    ///
    /// For a Halted, RolledBack, Degraded or aborted rollout of the update revision;
    /// failed nodes are tried again at once.
    #[command(after_help = ACTION_NOTE)]
    Retry {
        /// The BpfProgram's name.
        name: String,
    },
}

/// `--timeout`; None waits forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(pub Option<Duration>);

fn parse_timeout(s: &str) -> Result<Timeout, String> {
    crate::status::parse_timeout(s).map(Timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_command_lines_parse() {
        let cli =
            Cli::try_parse_from(["kubectl-bpfleet", "rollout", "status", "x", "--timeout", "1h", "--watch=false"])
                .unwrap();
        match cli.command {
            Command::Rollout(Rollout::Status { name, timeout, watch }) => {
                assert_eq!((name.as_str(), timeout, watch), ("x", Timeout(Some(Duration::from_secs(3600))), false));
            }
            c => panic!("{c:?}"),
        }
        let cli = Cli::try_parse_from(["kubectl-bpfleet", "rollout", "status", "x", "--watch"]).unwrap();
        assert!(matches!(cli.command, Command::Rollout(Rollout::Status { watch: true, .. })));
        let cli = Cli::try_parse_from(["kubectl-bpfleet", "rollout", "undo", "x", "--to-revision", "3", "-n", "ops"])
            .unwrap();
        assert_eq!(cli.namespace, "ops");
        assert!(matches!(cli.command, Command::Rollout(Rollout::Undo { to_revision: Some(3), .. })));
        for args in [
            &["rollout", "pause", "x"][..],
            &["rollout", "resume", "x"],
            &["rollout", "abort", "x"],
            &["rollout", "retry", "x"],
            &["nodes", "x", "--wide"],
            &["rollout", "history", "x", "--revision", "2"],
        ] {
            Cli::try_parse_from(std::iter::once("kubectl-bpfleet").chain(args.iter().copied())).unwrap();
        }
        assert!(Cli::try_parse_from(["kubectl-bpfleet", "rollout", "status", "x", "--timeout", "10"]).is_err());
    }

    #[test]
    fn promote_takes_full() {
        let cli = Cli::try_parse_from(["kubectl-bpfleet", "rollout", "promote", "x", "--full"]).unwrap();
        assert!(matches!(cli.command, Command::Rollout(Rollout::Promote { full: true, .. })));
        let cli = Cli::try_parse_from(["kubectl-bpfleet", "rollout", "promote", "x"]).unwrap();
        assert!(matches!(cli.command, Command::Rollout(Rollout::Promote { full: false, .. })));
    }
}
