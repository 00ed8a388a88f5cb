//! The command line: `kubectl bpfleet rollout …`, `kubectl bpfleet nodes …` and
//! `kubectl bpfleet image …` (its arguments are in [`crate::image`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};

const GITOPS_NOTE: &str = "\
Both pause and resume patch the BpfProgram's spec (spec.rollout.paused, spec.rollout.resume), \
so they are visible to GitOps tools. With Argo CD self-heal or Flux, a patch that differs from \
Git is reverted at the next sync: commit the same change to Git (or exclude spec.rollout from \
sync) instead of, or as well as, running these commands. The same holds for `rollout undo`.";

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
    /// Follow, inspect, undo, pause and resume the rollout of a BpfProgram's revisions.
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
    /// Exit status: 0 when every target node runs the current revision (phase Complete,
    /// reported for the current generation); 1 when the rollout is Halted or RolledBack,
    /// with its message (or when the command itself fails); 2 on timeout, or with
    /// --watch=false while the rollout is still going or paused.
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
    /// One merge patch of the spec (see `rollout pause --help` about GitOps). Default: the newest revision that is not the current one. A ConfigMap that no
    /// longer holds the recorded object is not trusted: the recorded bytes are restored
    /// as spec.bytecode.inline (if at most 1 MiB), or undo refuses.
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
    /// Let the rollout go on: sets spec.rollout.paused=false (and spec.rollout.resume).
    ///
    /// When the rollout waits on a pause step without a duration or is halted, also sets
    /// spec.rollout.resume={revision: status.rollout.updateRevision, step:
    /// status.rollout.step}, which lets that revision go past that step only.
    #[command(after_help = GITOPS_NOTE)]
    Resume {
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
            &["nodes", "x", "--wide"],
            &["rollout", "history", "x", "--revision", "2"],
        ] {
            Cli::try_parse_from(std::iter::once("kubectl-bpfleet").chain(args.iter().copied())).unwrap();
        }
        assert!(Cli::try_parse_from(["kubectl-bpfleet", "rollout", "status", "x", "--timeout", "10"]).is_err());
    }
}
