//! One map volume: a bpffs of its own at the pod's target path, holding only the maps the
//! volume names (pinned again from the owner's pins), read-only unless the volume asks to
//! write, and gone at unpublish. The pod gets files it may open with bpf(2) and nothing
//! else: no capability, no other map, no program.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crds::names::MapName;

use crate::store::OwnerRecord;

/// What a volume asks (`volumeAttributes` of the pod's CSI volume, and who the pod is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRequest {
    /// The BpfProgram whose maps are mounted.
    pub program: String,
    /// Its maps by ELF name.
    pub maps: Vec<MapName>,
    /// `writable: "true"`: the pins may be opened for writing; else read-only.
    pub writable: bool,
    /// The pod's namespace and uid, as the kubelet tells them (`podInfoOnMount`).
    pub namespace: String,
    pub pod_uid: String,
}

/// Why a volume is refused, with the gRPC code it maps to.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Invalid(String),
    Denied(String),
    NotFound(String),
    Failed(String),
}

/// Read a volume's attributes: `program` and `maps` (comma-separated) required,
/// `writable` optional.
pub fn request(context: &BTreeMap<String, String>, kubelet_readonly: bool) -> Result<VolumeRequest, Refused> {
    let program = context.get("program").filter(|p| !p.is_empty()).ok_or_else(|| {
        Refused::Invalid("the volume names no program: set volumeAttributes.program to a BpfProgram's name".into())
    })?;
    let maps = context
        .get("maps")
        .map(|m| m.split(',').map(str::trim).filter(|m| !m.is_empty()).collect::<Vec<_>>())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            Refused::Invalid("the volume names no maps: set volumeAttributes.maps (comma-separated)".into())
        })?;
    let maps = maps
        .into_iter()
        .map(|m| MapName::new(m).map_err(|e| Refused::Invalid(format!("volumeAttributes.maps: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if (1..maps.len()).any(|i| maps[..i].contains(&maps[i])) {
        return Err(Refused::Invalid("volumeAttributes.maps names a map twice".into()));
    }
    // The kubelet sets these (over anything the pod's spec says) for an ephemeral volume
    // of a driver with podInfoOnMount: without them, the caller is not a kubelet mounting
    // a pod's inline volume.
    if context.get("csi.storage.k8s.io/ephemeral").map(String::as_str) != Some("true") {
        return Err(Refused::Invalid(
            "not an ephemeral inline volume with pod information: map volumes are a pod's csi volume, and the \
             CSIDriver csi.bpfleet.dev must have podInfoOnMount"
                .into(),
        ));
    }
    let writable = match context.get("writable").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(Refused::Invalid(format!("volumeAttributes.writable is {other:?}: true or false"))),
    };
    if writable && kubelet_readonly {
        return Err(Refused::Invalid("the volume is readOnly and asks writable: true; choose one".into()));
    }
    let namespace = context.get("csi.storage.k8s.io/pod.namespace").cloned().unwrap_or_default();
    let pod_uid = context.get("csi.storage.k8s.io/pod.uid").cloned().unwrap_or_default();
    if namespace.is_empty() || pod_uid.is_empty() {
        return Err(Refused::Invalid("the kubelet gave no pod namespace or uid (podInfoOnMount)".into()));
    }
    Ok(VolumeRequest { program: program.clone(), maps, writable, namespace, pod_uid })
}

/// Whether pods of the request's namespace may mount maps here (`--csi-namespaces`, the
/// chart's `csi.namespaces`), and writable ones only from `writable_namespaces`
/// (`--csi-writable-namespaces`): writing a map changes how its program behaves.
pub fn allowed(request: &VolumeRequest, namespaces: &[String], writable_namespaces: &[String]) -> Result<(), Refused> {
    if request.writable && !writable_namespaces.contains(&request.namespace) {
        return Err(Refused::Denied(format!(
            "pods of namespace {:?} may not mount BpfProgram maps writable on this node: the chart's \
             csi.writableNamespaces (--csi-writable-namespaces) lists the namespaces that may",
            request.namespace
        )));
    }
    if namespaces.contains(&request.namespace) || writable_namespaces.contains(&request.namespace) {
        return Ok(());
    }
    Err(Refused::Denied(format!(
        "pods of namespace {:?} may not mount BpfProgram maps on this node: the chart's csi.namespaces \
         (--csi-namespaces) lists the namespaces that may",
        request.namespace
    )))
}

/// The target must be the pod's own volume directory (`…/pods/<pod uid>/volumes/…`), so a
/// caller cannot have a bpffs mounted anywhere else.
pub fn check_target(request: &VolumeRequest, target: &Path) -> Result<(), Refused> {
    let want = format!("/pods/{}/volumes/kubernetes.io~csi/", request.pod_uid);
    if target.to_string_lossy().contains(&want) {
        return Ok(());
    }
    Err(Refused::Invalid(format!(
        "target_path {} is not a volume directory of pod {}",
        target.display(),
        request.pod_uid
    )))
}

/// The pins of the maps `request` names, from the records of what runs here.
pub fn pins(request: &VolumeRequest, records: &[OwnerRecord]) -> Result<Vec<(MapName, PathBuf)>, Refused> {
    let mut named = records.iter().filter(|r| r.name == request.program);
    let record = named.next().ok_or_else(|| {
        Refused::NotFound(format!(
            "BpfProgram {} does not run on this node (yet): the pod starts once it does",
            request.program
        ))
    })?;
    // A program deleted and created again may have two owners here for a moment.
    if named.next().is_some() {
        return Err(Refused::Failed(format!(
            "two BpfPrograms named {} run on this node (one being replaced): the kubelet retries",
            request.program
        )));
    }
    request
        .maps
        .iter()
        .map(|m| {
            record.maps.iter().find(|r| r.name == m.as_str()).map(|r| (m.clone(), r.pin_path.clone())).ok_or_else(
                || {
                    let names: Vec<&str> = record.maps.iter().map(|r| r.name.as_str()).collect();
                    Refused::NotFound(format!(
                        "BpfProgram {} has no map {} (its maps: {})",
                        request.program,
                        m.as_str(),
                        names.join(", ")
                    ))
                },
            )
        })
        .collect()
}

fn cstring(p: &Path) -> Result<CString, Refused> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| Refused::Invalid(format!("{} is not a path", p.display())))
}

fn failed(what: &str, path: &Path) -> Refused {
    Refused::Failed(format!("{what} {}: {}", path.display(), std::io::Error::last_os_error()))
}

const BPF_OBJ_PIN: libc::c_long = 6;

/// Fill `target` with `pins` under their map names (0444, or 0666 when writable), on a
/// bpffs of its own: one is mounted at a staging directory beside `target` (in the
/// kubelet's volume directory, never the pod's), the pins go into a subdirectory of it,
/// and only that subdirectory is bind-mounted at `target`; the staging mount is then
/// detached. So the pod sees the named maps and nothing else (a new bpffs also holds the
/// kernel's `maps.debug` and `progs.debug`, which list every map and program of the node
/// and cannot be removed). Read-only unless writable. Idempotent: a retry finds the volume
/// as it should be, or makes it again; on failure nothing stays mounted.
pub fn publish(target: &Path, pins: &[(MapName, PathBuf)], writable: bool) -> Result<(), Refused> {
    let create = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| Refused::Failed(format!("cannot create {}: {e}", p.display())))
    };
    create(target)?;
    if crate::kernel::is_bpffs(target).unwrap_or(false) {
        // A kubelet retry: done if it is exactly this volume, else (a mount a crash cut
        // short) made again.
        if is_published(target, pins, writable) {
            return Ok(());
        }
        unpublish(target)?;
        create(target)?;
    }
    let staging = target.with_file_name(".bpffs-staging");
    let _ = unmount(&staging, libc::MNT_DETACH);
    create(&staging)?;
    let st = cstring(&staging)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: NUL-terminated strings that outlive the call.
    if unsafe { libc::mount(c"bpf".as_ptr(), st.as_ptr(), c"bpf".as_ptr(), flags, c"mode=0755".as_ptr().cast()) } != 0 {
        let err = failed("cannot mount a bpffs at", &staging);
        let _ = std::fs::remove_dir(&staging);
        let _ = std::fs::remove_dir(target);
        return Err(err);
    }
    let filled = fill(&staging, target, pins, writable, flags);
    // The volume's bpffs lives on in the bind mount (when it was made); the staging mount
    // goes either way.
    let _ = unmount(&staging, libc::MNT_DETACH);
    let _ = std::fs::remove_dir(&staging);
    if filled.is_err() {
        let _ = unpublish(target);
    }
    filled
}

/// Pin `pins` into `<staging>/maps`, bind-mount that at `target`, read-only unless writable.
fn fill(
    staging: &Path,
    target: &Path,
    pins: &[(MapName, PathBuf)],
    writable: bool,
    flags: libc::c_ulong,
) -> Result<(), Refused> {
    let dir = staging.join("maps");
    std::fs::create_dir(&dir).map_err(|e| Refused::Failed(format!("cannot create {}: {e}", dir.display())))?;
    for (name, pin) in pins {
        let fd = crate::kernel::obj_get(pin).map_err(|e| {
            Refused::Failed(format!("the map {} does not open at {}: {e}", name.as_str(), pin.display()))
        })?;
        let file = dir.join(name.as_str());
        let c = cstring(&file)?;
        // union bpf_attr for BPF_OBJ_PIN: pathname, bpf_fd, file_flags, path_fd.
        let attr: [u64; 3] = [c.as_ptr() as u64, u64::from(fd.as_raw_fd() as u32), 0];
        // SAFETY: a zero-padded bpf_attr; `c` and `fd` outlive the call.
        if unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), std::mem::size_of_val(&attr)) } < 0 {
            return Err(failed("cannot pin the map at", &file));
        }
        let mode = if writable { 0o666 } else { 0o444 };
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::chmod(c.as_ptr(), mode) } != 0 {
            return Err(failed("cannot set the mode of", &file));
        }
    }
    let (d, t) = (cstring(&dir)?, cstring(target)?);
    // SAFETY: NUL-terminated paths; a bind mount takes no type or data.
    if unsafe { libc::mount(d.as_ptr(), t.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) } != 0 {
        return Err(failed("cannot bind the maps at", target));
    }
    // Read-only: no pin can be opened for writing, none added or removed. A writable
    // volume stays writable (opening a pin for writing needs a writable mount).
    let ro = if writable { 0 } else { libc::MS_RDONLY };
    let remount = libc::MS_REMOUNT | libc::MS_BIND | ro | flags;
    // SAFETY: as above.
    if unsafe { libc::mount(std::ptr::null(), t.as_ptr(), std::ptr::null(), remount, std::ptr::null()) } != 0 {
        return Err(failed("cannot restrict the mount at", target));
    }
    Ok(())
}

/// umount2 of `path` (not following a symlink there).
fn unmount(path: &Path, flags: libc::c_int) -> Result<(), Refused> {
    let c = cstring(path)?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags | libc::UMOUNT_NOFOLLOW) } != 0 {
        return Err(failed("cannot unmount", path));
    }
    Ok(())
}

/// Whether `target` holds exactly `pins` (by name), read-only unless `writable`.
fn is_published(target: &Path, pins: &[(MapName, PathBuf)], writable: bool) -> bool {
    let Ok(dir) = std::fs::read_dir(target) else { return false };
    let mut have: Vec<String> = dir.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    have.sort();
    let mut want: Vec<String> = pins.iter().map(|(n, _)| n.as_str().to_string()).collect();
    want.sort();
    let Ok(c) = cstring(target) else { return false };
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let read_only = unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0 && st.f_flag & libc::ST_RDONLY != 0;
    have == want && read_only != writable
}

/// Unmount the volume's bpffs (its pins go with it; the maps stay, their owner holds them)
/// and remove the directory. Idempotent: nothing mounted, or no directory, is done.
pub fn unpublish(target: &Path) -> Result<(), Refused> {
    if crate::kernel::is_bpffs(target).unwrap_or(false) {
        unmount(target, 0)?;
    }
    match std::fs::remove_dir(target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Refused::Failed(format!("cannot remove {}: {e}", target.display())))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn attributes_are_read_and_bad_ones_say_what_to_set() {
        let pod = [
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/pod.namespace", "team-a"),
            ("csi.storage.k8s.io/pod.uid", "u1"),
        ];
        let with_pod = |pairs: &[(&str, &str)]| {
            let mut c = context(pairs);
            c.extend(context(&pod));
            c
        };
        let ok = request(&with_pod(&[("program", "flows"), ("maps", "flows, by_kind")]), false).unwrap();
        assert_eq!(
            (ok.program.as_str(), ok.maps.len(), ok.writable, ok.namespace.as_str()),
            ("flows", 2, false, "team-a")
        );
        for (ctx, ro, want) in [
            (with_pod(&[("maps", "m")]), false, "names no program"),
            (with_pod(&[("program", "p")]), false, "names no maps"),
            (with_pod(&[("program", "p"), ("maps", "../x")]), false, "volumeAttributes.maps"),
            (with_pod(&[("program", "p"), ("maps", "m,m")]), false, "names a map twice"),
            (with_pod(&[("program", "p"), ("maps", "m"), ("writable", "yes")]), false, "true or false"),
            (with_pod(&[("program", "p"), ("maps", "m"), ("writable", "true")]), true, "choose one"),
            (context(&[("program", "p"), ("maps", "m")]), false, "not an ephemeral inline volume"),
        ] {
            match request(&ctx, ro) {
                Err(Refused::Invalid(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{ctx:?}: {other:?}"),
            }
        }
        let denied = allowed(&ok, &["team-b".into()], &[]).unwrap_err();
        assert!(matches!(&denied, Refused::Denied(m) if m.contains("csi.namespaces")), "{denied:?}");
        assert!(allowed(&ok, &["team-a".into()], &[]).is_ok());
        let mut rw = ok.clone();
        rw.writable = true;
        let denied = allowed(&rw, &["team-a".into()], &[]).unwrap_err();
        assert!(matches!(&denied, Refused::Denied(m) if m.contains("csi.writableNamespaces")), "{denied:?}");
        assert!(allowed(&rw, &[], &["team-a".into()]).is_ok());
        assert!(check_target(&ok, Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/maps/mount")).is_ok());
        assert!(check_target(&ok, Path::new("/var/lib/kubelet/pods/u2/volumes/kubernetes.io~csi/maps/mount")).is_err());
        assert!(check_target(&ok, Path::new("/etc")).is_err());
    }
}
