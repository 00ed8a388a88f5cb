//! XDP and TC inside a pod's network namespace.
//!
//! The agent's own threads never change namespace. Each operation here runs on a thread
//! started for it alone, which enters the pod's namespace (`setns`, a per-thread change),
//! does its work and exits: no pool can ever hand out a thread left in a pod's namespace.
//! On that thread every name means the pod's: `if_nametoindex`, BPF_LINK_CREATE's
//! ifindex and aya's netlink sockets all work in the calling thread's namespace, so
//! `eth0` is the pod's `eth0`, never the node's.
//!
//! XDP and TCX links are pinned like the node's: bpffs is not per network namespace, so
//! the pin keeps the attachment alive after the thread exits, and detaching + unpinning
//! ends it. A clsact filter (TC on kernels before 6.6) has no pin: it is removed by
//! entering the namespace again. When the pod's namespace goes, its interfaces go and
//! every attachment with them (a pinned link stays, detached, until it is unpinned).
//!
//! A pod can stop at any moment. Its namespace's path then no longer exists (or, while
//! the runtime tears it down, no longer holds the namespace): that is [`PodError::Gone`],
//! whether found before entering or after an attach (which is then undone), so the
//! caller drops the pod instead of reporting a failure.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::programs::tc::{NlOptions, TcAttachOptions, qdisc_add_clsact};
use aya::programs::{SchedClassifier, Xdp};
use crds::names::{InterfaceName, ProgramName};
use crds::program::{Direction, XdpMode};

use super::pod::{LinkPin, Place, PlaceKind, PodError};
use super::{TcBackend, TcPeer, keep_link};
use crate::error::{AgentError, Reason, chain, errno};

/// statfs magic of nsfs, the file system of namespace files (linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// A pod's network namespace, by the path the container runtime bind-mounts it at
/// (`/run/netns/cni-…`, containerd's `…/io.containerd.grpc.v1.cri/netns/cni-…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetns {
    place: Place,
}

/// Where a TC program goes inside a pod.
#[derive(Clone, Copy, Debug)]
pub struct TcHook<'a> {
    pub interface: &'a InterfaceName,
    pub direction: Direction,
    pub priority: u16,
    pub backend: TcBackend,
    /// bpfleet's TC programs already on this pod's interfaces (interface names are the
    /// pod's), which order a TCX link by priority as on the node.
    pub peers: &'a [TcPeer],
}

/// What a TC attach inside a pod left in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodTcLink {
    /// A TCX link, pinned.
    Tcx(LinkPin),
    /// A clsact filter: no file descriptor, no pin; it lives in the pod's namespace
    /// until [`detach_tc`] removes it there, or until the namespace goes.
    Filter { interface: String, direction: Direction, priority: u16, handle: u32 },
}

impl PodNetns {
    /// `context` says whose namespace it is in messages ("pod team-a/web-7f…").
    pub fn new(path: impl Into<PathBuf>, context: impl Into<String>) -> Self {
        Self { place: Place::new(PlaceKind::NetworkNamespace, path, context) }
    }

    pub fn place(&self) -> &Place {
        &self.place
    }

    pub fn path(&self) -> &Path {
        self.place.path()
    }

    /// Run `f` on a new OS thread that has entered this network namespace, and return
    /// what it returns. The thread ends with `f`; the caller's thread never changes
    /// namespace. A panic in `f` is resumed on the caller's thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, PodError> {
        let ns = self.open()?;
        self.run_in(&ns, f)
    }

    /// The namespace file, open: what `setns` takes, and what keeps the namespace the
    /// same one for the whole operation.
    fn open(&self) -> Result<File, PodError> {
        let file = match File::open(self.path()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(self.gone()),
            Err(e) => return Err(self.failed(Reason::TargetNotFound, format!("cannot open {}: {e}", self.place))),
        };
        // SAFETY: a zeroed statfs is a valid out-parameter; the fd is open.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(self.failed(Reason::Internal, format!("cannot inspect {}: {e}", self.place)));
        }
        if fs.f_type as i64 == NSFS_MAGIC {
            return Ok(file);
        }
        // The runtime unmounts the namespace, then removes the empty file it was mounted
        // on: in between, the pod is as gone as after.
        match file.metadata() {
            Ok(m) if m.is_file() && m.len() == 0 => Err(self.gone()),
            _ => Err(self.failed(
                Reason::TargetNotFound,
                format!(
                    "{} is not a network namespace: give the path the namespace is mounted at \
                     (as /run/netns/NAME, or the pod sandbox's netns path)",
                    self.place
                ),
            )),
        }
    }

    fn run_in<T: Send>(&self, ns: &File, f: impl FnOnce() -> T + Send) -> Result<T, PodError> {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("pod-netns".into())
                .spawn_scoped(scope, || {
                    // SAFETY: setns on an open namespace descriptor; for a network
                    // namespace it changes the calling thread only, which ends with `f`.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .map_err(|e| {
                    self.failed(Reason::Internal, format!("cannot start a thread to enter {}: {e}", self.place))
                })?;
            match thread.join() {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(self.setns_error(e)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn setns_error(&self, e: std::io::Error) -> PodError {
        match e.raw_os_error() {
            Some(libc::EINVAL) => self.failed(
                Reason::TargetNotFound,
                format!("{} is a namespace, but not a network namespace: give the pod's network namespace", self.place),
            ),
            Some(libc::EPERM) => self
                .failed(Reason::Internal, format!("cannot enter {}: {e} (the agent needs CAP_SYS_ADMIN)", self.place)),
            _ => self.failed(Reason::Internal, format!("cannot enter {}: {e}", self.place)),
        }
    }

    /// Whether the path still holds the namespace `ns` (the pod has not stopped since).
    fn still_there(&self, ns: &File) -> bool {
        match (std::fs::metadata(self.path()), ns.metadata()) {
            (Ok(now), Ok(held)) => now.dev() == held.dev() && now.ino() == held.ino(),
            _ => false,
        }
    }

    /// Run an attach inside the namespace. Whatever it did, a namespace no longer at its
    /// path by the end means the pod stopped meanwhile: the attach is undone and the
    /// answer is `Gone` (an interface that vanished with the pod is no error either).
    fn attach_in<L: Send>(
        &self,
        attach: impl FnOnce() -> Result<L, AgentError> + Send,
        undo: impl FnOnce(&File, L),
    ) -> Result<L, PodError> {
        let ns = self.open()?;
        let result = self.run_in(&ns, attach)?;
        if self.still_there(&ns) {
            return Ok(result?);
        }
        if let Ok(done) = result {
            undo(&ns, done);
        }
        Err(self.gone())
    }

    /// The interface's index in this namespace; call it on the namespace's thread.
    fn ifindex(&self, program: &ProgramName, iface: &str) -> Result<u32, AgentError> {
        crate::kernel::ifindex(iface).ok_or_else(|| {
            AgentError::for_program(
                Reason::InterfaceNotFound,
                program.as_str(),
                format!("interface {iface} not found in {}", self.place),
            )
        })
    }

    fn gone(&self) -> PodError {
        PodError::Gone(self.place.clone())
    }

    fn failed(&self, reason: Reason, message: String) -> PodError {
        PodError::Failed(AgentError::new(reason, message))
    }

    fn attach_error(
        &self,
        program: &ProgramName,
        what: &str,
        iface: &str,
        e: &(dyn std::error::Error + 'static),
    ) -> AgentError {
        let hint = if errno(e) == Some(libc::EBUSY) { " (another program is already attached there)" } else { "" };
        AgentError::for_program(
            Reason::AttachFailed,
            program.as_str(),
            format!("attaching {what} to interface {iface} in {}: {}{hint}", self.place, chain(e)),
        )
    }
}

/// Attach the loaded XDP program `xdp` to `interface` inside the pod's namespace in
/// `mode`, as on the node, and pin the link at `pin` (its directory must exist).
/// `program` names it in messages.
pub fn attach_xdp(
    xdp: &mut Xdp,
    program: &ProgramName,
    netns: &PodNetns,
    interface: &InterfaceName,
    mode: XdpMode,
    pin: &Path,
) -> Result<LinkPin, PodError> {
    let iface = interface.as_str();
    netns.attach_in(
        || {
            let ifindex = netns.ifindex(program, iface)?;
            let lid = xdp.attach_to_if_index(ifindex, super::xdp::aya_mode(mode)).map_err(|e| {
                let mut err = netns.attach_error(program, "XDP", iface, &e);
                if mode == XdpMode::Native {
                    err.message.push_str("; its driver may lack native XDP: use mode Generic or Auto");
                }
                err
            })?;
            let link = xdp.take_link(lid).map_err(|e| netns.attach_error(program, "XDP", iface, &e))?;
            let link_id = keep_link(program.as_str(), link, pin)?;
            Ok(LinkPin { path: pin.to_path_buf(), link_id })
        },
        |_, link| undo_quietly(link.detach()),
    )
}

/// Attach the loaded TC program `tc` at `hook` inside the pod's namespace, through the
/// same mechanism as on the node (`hook.backend`): a TCX link pinned at `pin`, or a
/// clsact filter (then `pin` is unused).
pub fn attach_tc(
    tc: &mut SchedClassifier,
    program: &ProgramName,
    netns: &PodNetns,
    hook: &TcHook<'_>,
    pin: &Path,
) -> Result<PodTcLink, PodError> {
    let iface = hook.interface.as_str();
    let (direction, priority) = (hook.direction, hook.priority);
    let what = format!("TC {direction:?}");
    netns.attach_in(
        || {
            netns.ifindex(program, iface)?;
            let err = |e: &(dyn std::error::Error + 'static)| netns.attach_error(program, &what, iface, e);
            let attach_type = super::attach_type(direction);
            if hook.backend.use_tcx() {
                let order = super::tc::tcx_order(hook.peers, iface, direction, priority);
                let lid = tc
                    .attach_with_options(iface, attach_type, TcAttachOptions::TcxOrder(order))
                    .map_err(|e| err(&e))?;
                let link = tc.take_link(lid).map_err(|e| err(&e))?;
                let link_id = keep_link(program.as_str(), link, pin)?;
                return Ok(PodTcLink::Tcx(LinkPin { path: pin.to_path_buf(), link_id }));
            }
            // EEXIST: the interface already has a clsact qdisc, which is what we need.
            if let Err(e) = qdisc_add_clsact(iface)
                && errno(&e) != Some(libc::EEXIST)
            {
                return Err(err(&e));
            }
            let opts = NlOptions { priority, ..Default::default() };
            let lid =
                tc.attach_with_options(iface, attach_type, TcAttachOptions::Netlink(opts)).map_err(|e| err(&e))?;
            let link = tc.take_link(lid).map_err(|e| err(&e))?;
            // Without its handle nobody could find the filter again: dropping aya's link
            // (here, in the namespace) removes it.
            let handle = u32::from(link.handle().map_err(|e| err(&e))?);
            // As on the node: the caller's record, not aya's handle, keeps the filter.
            std::mem::forget(link);
            Ok(PodTcLink::Filter { interface: iface.to_string(), direction, priority, handle })
        },
        |ns, link| undo_quietly(netns.remove_tc(ns, &link)),
    )
}

impl PodNetns {
    fn remove_tc(&self, ns: &File, link: &PodTcLink) -> Result<(), AgentError> {
        match link {
            PodTcLink::Tcx(pin) => pin.detach(),
            PodTcLink::Filter { interface, direction, priority, handle } => self
                .run_in(ns, || super::tc::detach_netlink(interface, *direction, *priority, *handle))
                .map_err(AgentError::from)?,
        }
    }
}

/// Detach what [`attach_tc`] attached. A TCX link is detached and unpinned wherever the
/// pod is; a clsact filter is removed inside the pod's namespace, and needs nothing when
/// the namespace is gone (its filters went with it).
pub fn detach_tc(netns: &PodNetns, link: &PodTcLink) -> Result<(), AgentError> {
    match (link, netns.open()) {
        (PodTcLink::Tcx(pin), _) => pin.detach(),
        (_, Ok(ns)) => netns.remove_tc(&ns, link),
        (_, Err(PodError::Gone(_))) => Ok(()),
        (_, Err(PodError::Failed(e))) => Err(e),
    }
}

/// Undoing an attach whose pod stopped: what cannot be undone goes to the log.
fn undo_quietly(r: Result<(), AgentError>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "undoing an attach in a pod that stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns_inode(path: &str) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    /// The closure runs in the namespace; the caller's thread stays where it was. (The
    /// agent's own namespace stands in for a pod's; the kernel tests use real pods'.)
    #[test]
    fn run_enters_on_its_own_thread_and_returns_the_result() {
        let mine = ns_inode("/proc/thread-self/ns/net");
        let netns = PodNetns::new("/proc/self/ns/net", "pod a/b");
        let (inode, thread) = netns
            .run(|| (ns_inode("/proc/thread-self/ns/net"), std::thread::current().name().map(str::to_string)))
            .unwrap();
        assert_eq!(inode, mine);
        assert_eq!(thread.as_deref(), Some("pod-netns"));
        assert_eq!(ns_inode("/proc/thread-self/ns/net"), mine);
    }

    #[test]
    fn missing_or_wrong_paths_are_told_apart() {
        let gone = PodNetns::new("/run/netns/bpfleet-no-such-pod", "pod a/b").run(|| ()).unwrap_err();
        assert!(gone.is_gone(), "{gone}");
        // An unmounted namespace leaves its empty file behind for a moment: gone too.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cni-1"), b"").unwrap();
        assert!(PodNetns::new(dir.path().join("cni-1"), "pod a/b").run(|| ()).unwrap_err().is_gone());
        // A file that never was a namespace is a wrong path, said so.
        std::fs::write(dir.path().join("other"), b"x").unwrap();
        let e = PodNetns::new(dir.path().join("other"), "pod a/b").run(|| ()).unwrap_err();
        let PodError::Failed(e) = e else { panic!("{e}") };
        assert_eq!(e.reason, Reason::TargetNotFound);
        assert!(e.message.contains("is not a network namespace") && e.message.contains("(pod a/b)"), "{e}");
        // Another kind of namespace: entered by nobody.
        let e = PodNetns::new("/proc/self/ns/uts", "pod a/b").run(|| ()).unwrap_err();
        assert!(e.to_string().contains("not a network namespace"), "{e}");
    }

    #[test]
    fn a_panic_inside_reaches_the_caller() {
        let netns = PodNetns::new("/proc/self/ns/net", "");
        let caught = std::panic::catch_unwind(|| netns.run(|| panic!("inside")));
        assert!(caught.is_err());
    }
}
