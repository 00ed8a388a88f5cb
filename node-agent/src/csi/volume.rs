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
    /// The pod's namespace (the kubelet's `csi.storage.k8s.io/pod.namespace`).
    pub namespace: String,
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
    let writable = match context.get("writable").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(Refused::Invalid(format!("volumeAttributes.writable is {other:?}: true or false"))),
    };
    if writable && kubelet_readonly {
        return Err(Refused::Invalid("the volume is readOnly and asks writable: true; choose one".into()));
    }
    let namespace = context.get("csi.storage.k8s.io/pod.namespace").cloned().unwrap_or_default();
    Ok(VolumeRequest { program: program.clone(), maps, writable, namespace })
}

/// Whether pods of `namespace` may mount maps here: the namespaces the agent was given
/// (`--csi-namespaces`, the chart's `csi.namespaces`).
pub fn allowed(request: &VolumeRequest, namespaces: &[String]) -> Result<(), Refused> {
    if namespaces.contains(&request.namespace) {
        return Ok(());
    }
    Err(Refused::Denied(format!(
        "pods of namespace {:?} may not mount BpfProgram maps on this node: the chart's csi.namespaces \
         (--csi-namespaces) lists the namespaces that may",
        request.namespace
    )))
}

/// The pins of the maps `request` names, from the records of what runs here.
pub fn pins(request: &VolumeRequest, records: &[OwnerRecord]) -> Result<Vec<(MapName, PathBuf)>, Refused> {
    let record = records.iter().find(|r| r.name == request.program).ok_or_else(|| {
        Refused::NotFound(format!(
            "BpfProgram {} does not run on this node (yet): the pod starts once it does",
            request.program
        ))
    })?;
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

/// Mount a fresh bpffs at `target` holding `pins` under their map names (0444, or 0666
/// when writable), then make the mount read-only. Idempotent: a target that is a bpffs
/// already is left as it is. On failure nothing stays mounted.
pub fn publish(target: &Path, pins: &[(MapName, PathBuf)], writable: bool) -> Result<(), Refused> {
    std::fs::create_dir_all(target).map_err(|e| Refused::Failed(format!("cannot create {}: {e}", target.display())))?;
    if crate::kernel::is_bpffs(target).unwrap_or(false) {
        return Ok(());
    }
    let t = cstring(target)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: NUL-terminated strings that outlive the call.
    if unsafe { libc::mount(c"bpf".as_ptr(), t.as_ptr(), c"bpf".as_ptr(), flags, c"mode=0755".as_ptr().cast()) } != 0 {
        return Err(failed("cannot mount a bpffs at", target));
    }
    let filled = (|| {
        for (name, pin) in pins {
            let fd = crate::kernel::obj_get(pin).map_err(|e| {
                Refused::Failed(format!("the map {} does not open at {}: {e}", name.as_str(), pin.display()))
            })?;
            let file = target.join(name.as_str());
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
        // Read-only: no pin can be opened for writing, none added or removed. A writable
        // volume stays writable (opening a pin for writing needs a writable mount).
        if !writable {
            let ro = libc::MS_REMOUNT | libc::MS_RDONLY | flags;
            // SAFETY: as above; a remount takes no source or type.
            if unsafe { libc::mount(std::ptr::null(), t.as_ptr(), std::ptr::null(), ro, std::ptr::null()) } != 0 {
                return Err(failed("cannot make read-only the bpffs at", target));
            }
        }
        Ok(())
    })();
    if filled.is_err() {
        let _ = unpublish(target);
    }
    filled
}

/// Unmount the volume's bpffs (its pins go with it; the maps stay, their owner holds them)
/// and remove the directory. Idempotent: nothing mounted, or no directory, is done.
pub fn unpublish(target: &Path) -> Result<(), Refused> {
    if crate::kernel::is_bpffs(target).unwrap_or(false) {
        let t = cstring(target)?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::umount2(t.as_ptr(), 0) } != 0 {
            return Err(failed("cannot unmount", target));
        }
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
        let ok = request(
            &context(&[
                ("program", "flows"),
                ("maps", "flows, by_kind"),
                ("csi.storage.k8s.io/pod.namespace", "team-a"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            (ok.program.as_str(), ok.maps.len(), ok.writable, ok.namespace.as_str()),
            ("flows", 2, false, "team-a")
        );
        for (ctx, ro, want) in [
            (context(&[("maps", "m")]), false, "names no program"),
            (context(&[("program", "p")]), false, "names no maps"),
            (context(&[("program", "p"), ("maps", "../x")]), false, "volumeAttributes.maps"),
            (context(&[("program", "p"), ("maps", "m"), ("writable", "yes")]), false, "true or false"),
            (context(&[("program", "p"), ("maps", "m"), ("writable", "true")]), true, "choose one"),
        ] {
            match request(&ctx, ro) {
                Err(Refused::Invalid(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{ctx:?}: {other:?}"),
            }
        }
        let denied = allowed(&ok, &["team-b".into()]).unwrap_err();
        assert!(matches!(&denied, Refused::Denied(m) if m.contains("csi.namespaces")), "{denied:?}");
        assert!(allowed(&ok, &["team-a".into()]).is_ok());
    }
}
