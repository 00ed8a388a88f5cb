//! The libbpf baseline of bpfleet-bench: the system's libbpf (libbpf.so.1, as bpftool and
//! tc use it) opened with dlopen, so building the agent never needs libbpf. Each run is
//! what a small libbpf loader does: open the object from memory, load it, attach every
//! program to the same hook the agent uses.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;

use anyhow::{Context, bail};

/// `enum bpf_attach_type` value of TCX ingress (kernel >= 6.6; newer than libbpf 1.1's
/// headers, so spelled out).
const BPF_TCX_INGRESS: u32 = 46;

/// `struct bpf_uprobe_opts` of libbpf 1.1.
#[repr(C)]
struct UprobeOpts {
    sz: usize,
    ref_ctr_offset: usize,
    bpf_cookie: u64,
    retprobe: bool,
    func_name: *const c_char,
}

type Ptr = *mut c_void;

/// A function of the library behind `handle`, as the function pointer type `F`.
///
/// # Safety
/// `F` must be the `extern "C"` signature the library declares for `name`.
unsafe fn sym<F: Copy>(handle: Ptr, name: &CStr) -> anyhow::Result<F> {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<Ptr>());
    // SAFETY: a valid handle and a NUL-terminated name.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        bail!("libbpf.so.1 has no {name:?}");
    }
    // SAFETY: same size, and the caller vouches for the signature.
    Ok(unsafe { std::mem::transmute_copy::<Ptr, F>(&p) })
}

/// The libbpf entry points the baseline calls.
pub struct Libbpf {
    open_mem: unsafe extern "C" fn(*const c_void, usize, *const c_void) -> Ptr,
    load: unsafe extern "C" fn(Ptr) -> c_int,
    close: unsafe extern "C" fn(Ptr),
    find_program: unsafe extern "C" fn(Ptr, *const c_char) -> Ptr,
    find_map: unsafe extern "C" fn(Ptr, *const c_char) -> Ptr,
    map_initial_value: unsafe extern "C" fn(Ptr, *mut usize) -> *const c_void,
    map_set_initial_value: unsafe extern "C" fn(Ptr, *const c_void, usize) -> c_int,
    program_fd: unsafe extern "C" fn(Ptr) -> c_int,
    attach: unsafe extern "C" fn(Ptr) -> Ptr,
    attach_xdp: unsafe extern "C" fn(Ptr, c_int) -> Ptr,
    attach_uprobe_opts: unsafe extern "C" fn(Ptr, libc::pid_t, *const c_char, usize, *const UprobeOpts) -> Ptr,
    link_create: unsafe extern "C" fn(c_int, c_int, u32, *const c_void) -> c_int,
    link_destroy: unsafe extern "C" fn(Ptr) -> c_int,
    pub version: String,
}

/// Where a baseline program is attached.
pub enum LibbpfHook<'a> {
    /// bpf_link XDP; on an interface without a driver hook (lo) the kernel uses generic XDP.
    Xdp {
        ifindex: i32,
    },
    /// TCX ingress link.
    Tcx {
        ifindex: i32,
    },
    /// The tracepoint its section names.
    FromSection,
    Uprobe {
        target: &'a Path,
        symbol: &'a str,
        retprobe: bool,
    },
}

/// What one baseline run holds in the kernel; dropping it detaches and unloads everything.
pub struct Loaded<'a> {
    lib: &'a Libbpf,
    obj: Ptr,
    links: Vec<Ptr>,
    link_fds: Vec<c_int>,
    pub program_fds: Vec<c_int>,
}

impl Drop for Loaded<'_> {
    fn drop(&mut self) {
        // SAFETY: each pointer and fd came from libbpf in `Libbpf::run` and is released once.
        unsafe {
            for l in self.links.drain(..) {
                (self.lib.link_destroy)(l);
            }
            for fd in self.link_fds.drain(..) {
                libc::close(fd);
            }
            (self.lib.close)(self.obj);
        }
    }
}

fn last_error(what: &str) -> anyhow::Error {
    anyhow::anyhow!("libbpf {what}: {}", std::io::Error::last_os_error())
}

impl Libbpf {
    /// Open libbpf.so.1 (an error when the system has none: the baseline is then skipped).
    pub fn open() -> anyhow::Result<Self> {
        // SAFETY: dlopen/dlsym with NUL-terminated names; every symbol is cast to the
        // signature libbpf 1.x declares for it in libbpf.h / bpf.h.
        unsafe {
            let handle = libc::dlopen(c"libbpf.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if handle.is_null() {
                bail!("cannot dlopen libbpf.so.1 (install libbpf1)");
            }
            let set_print: unsafe extern "C" fn(*const c_void) -> *const c_void = sym(handle, c"libbpf_set_print")?;
            set_print(std::ptr::null()); // quiet: errors are reported through errno
            let version: unsafe extern "C" fn() -> *const c_char = sym(handle, c"libbpf_version_string")?;
            Ok(Self {
                open_mem: sym(handle, c"bpf_object__open_mem")?,
                load: sym(handle, c"bpf_object__load")?,
                close: sym(handle, c"bpf_object__close")?,
                find_program: sym(handle, c"bpf_object__find_program_by_name")?,
                find_map: sym(handle, c"bpf_object__find_map_by_name")?,
                map_initial_value: sym(handle, c"bpf_map__initial_value")?,
                map_set_initial_value: sym(handle, c"bpf_map__set_initial_value")?,
                program_fd: sym(handle, c"bpf_program__fd")?,
                attach: sym(handle, c"bpf_program__attach")?,
                attach_xdp: sym(handle, c"bpf_program__attach_xdp")?,
                attach_uprobe_opts: sym(handle, c"bpf_program__attach_uprobe_opts")?,
                link_create: sym(handle, c"bpf_link_create")?,
                link_destroy: sym(handle, c"bpf_link__destroy")?,
                version: CStr::from_ptr(version()).to_string_lossy().into_owned(),
            })
        }
    }

    /// Open `bytes`, patch one `.rodata` global (offset, value), load, and attach each
    /// (program, hook). The returned handle keeps it all in the kernel.
    pub fn run<'a>(
        &'a self,
        bytes: &[u8],
        rodata_patch: Option<(usize, &[u8])>,
        programs: &[(&str, LibbpfHook<'_>)],
    ) -> anyhow::Result<Loaded<'a>> {
        // SAFETY: libbpf copies `bytes` in open_mem; every pointer passed back to it is one
        // it returned for this object, and `Loaded` frees them exactly once.
        unsafe {
            let obj = (self.open_mem)(bytes.as_ptr().cast(), bytes.len(), std::ptr::null());
            if obj.is_null() {
                return Err(last_error("bpf_object__open_mem"));
            }
            let mut loaded = Loaded { lib: self, obj, links: vec![], link_fds: vec![], program_fds: vec![] };
            if let Some((offset, value)) = rodata_patch {
                let map = (self.find_map)(obj, c".rodata".as_ptr());
                let mut size = 0usize;
                let data = if map.is_null() { std::ptr::null() } else { (self.map_initial_value)(map, &mut size) };
                if data.is_null() || offset + value.len() > size {
                    bail!("the object has no .rodata large enough for the global");
                }
                let mut patched = std::slice::from_raw_parts(data.cast::<u8>(), size).to_vec();
                patched[offset..offset + value.len()].copy_from_slice(value);
                if (self.map_set_initial_value)(map, patched.as_ptr().cast(), size) != 0 {
                    return Err(last_error("bpf_map__set_initial_value"));
                }
            }
            if (self.load)(obj) != 0 {
                return Err(last_error("bpf_object__load"));
            }
            for (name, hook) in programs {
                let cname = CString::new(*name)?;
                let prog = (self.find_program)(obj, cname.as_ptr());
                if prog.is_null() {
                    bail!("no program {name} in the object");
                }
                let prog_fd = (self.program_fd)(prog);
                loaded.program_fds.push(prog_fd);
                let link = match hook {
                    LibbpfHook::Xdp { ifindex } => (self.attach_xdp)(prog, *ifindex),
                    LibbpfHook::FromSection => (self.attach)(prog),
                    LibbpfHook::Tcx { ifindex } => {
                        let fd = (self.link_create)(prog_fd, *ifindex, BPF_TCX_INGRESS, std::ptr::null());
                        if fd < 0 {
                            return Err(last_error("bpf_link_create(BPF_TCX_INGRESS)"))
                                .with_context(|| name.to_string());
                        }
                        loaded.link_fds.push(fd);
                        continue;
                    }
                    LibbpfHook::Uprobe { target, symbol, retprobe } => {
                        let target = CString::new(target.as_os_str().as_encoded_bytes())?;
                        let symbol = CString::new(*symbol)?;
                        let opts = UprobeOpts {
                            sz: std::mem::size_of::<UprobeOpts>(),
                            ref_ctr_offset: 0,
                            bpf_cookie: 0,
                            retprobe: *retprobe,
                            func_name: symbol.as_ptr(),
                        };
                        (self.attach_uprobe_opts)(prog, -1, target.as_ptr(), 0, &opts)
                    }
                };
                if link.is_null() {
                    return Err(last_error("attach")).with_context(|| name.to_string());
                }
                loaded.links.push(link);
            }
            Ok(loaded)
        }
    }
}
