//! What the kernel says of a map (`bpf_map_info`, including its BTF ids) and the BTF blob
//! a map was created with: the raw bytes a reader decodes keys and values with.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;

/// The largest BTF blob the agent reads for one map (an object's BTF is a few KiB; the
/// kernel's own is several MiB and never a map's).
pub const MAX_BTF_BYTES: u32 = 4 << 20;

/// A map as the kernel reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelMap {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// 0 when the map was created without BTF.
    pub btf_id: u32,
    pub btf_key_type_id: u32,
    pub btf_value_type_id: u32,
}

/// `struct bpf_map_info` up to `btf_value_type_id` (the kernel fills what fits).
#[repr(C)]
#[derive(Default)]
struct MapInfoRaw {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; 16],
    ifindex: u32,
    btf_vmlinux_value_type_id: u32,
    netns_dev: u64,
    netns_ino: u64,
    btf_id: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    _pad: u32,
    map_extra: u64,
}

/// `struct bpf_btf_info`.
#[repr(C)]
#[derive(Default)]
struct BtfInfoRaw {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

/// BPF_OBJ_GET_INFO_BY_FD into `info` (a `#[repr(C)]` kernel info struct).
fn info_by_fd<T>(fd: BorrowedFd<'_>, info: &mut T) -> std::io::Result<()> {
    // union bpf_attr's info member: bpf_fd, info_len, info (pointer).
    let attr: [u64; 2] =
        [u64::from(fd.as_raw_fd() as u32) | ((std::mem::size_of::<T>() as u64) << 32), info as *mut T as u64];
    // SAFETY: `info` is writable for size_of::<T>() bytes for the duration of the call.
    let r =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's description of the map `fd` refers to.
pub fn map_info(fd: BorrowedFd<'_>) -> std::io::Result<KernelMap> {
    let mut raw = MapInfoRaw::default();
    info_by_fd(fd, &mut raw)?;
    Ok(KernelMap {
        map_type: raw.map_type,
        id: raw.id,
        key_size: raw.key_size,
        value_size: raw.value_size,
        max_entries: raw.max_entries,
        flags: raw.map_flags,
        btf_id: raw.btf_id,
        btf_key_type_id: raw.btf_key_type_id,
        btf_value_type_id: raw.btf_value_type_id,
    })
}

/// The raw BTF blob with kernel id `btf_id` (BPF_BTF_GET_FD_BY_ID, then its info twice:
/// once for the size, once for the bytes). Refuses a blob over [`MAX_BTF_BYTES`].
pub fn btf_blob(btf_id: u32) -> std::io::Result<Vec<u8>> {
    // union bpf_attr's get-by-id member: the id first, then next_id and open_flags.
    let attr: [u32; 3] = [btf_id, 0, 0];
    // SAFETY: a zero-padded bpf_attr of the given size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_BTF_GET_FD_BY_ID, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = BtfInfoRaw::default();
    info_by_fd(fd_ref(&fd), &mut info)?;
    if info.btf_size > MAX_BTF_BYTES {
        return Err(std::io::Error::other(format!(
            "the map's BTF is {} bytes, more than the {MAX_BTF_BYTES} this agent reads",
            info.btf_size
        )));
    }
    let mut blob = vec![0u8; info.btf_size as usize];
    let mut info = BtfInfoRaw { btf: blob.as_mut_ptr() as u64, btf_size: blob.len() as u32, ..Default::default() };
    info_by_fd(fd_ref(&fd), &mut info)?;
    blob.truncate(info.btf_size as usize);
    Ok(blob)
}

fn fd_ref(fd: &OwnedFd) -> BorrowedFd<'_> {
    use std::os::fd::AsFd;
    fd.as_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_info_structs_have_the_kernels_layout() {
        // Offsets of struct bpf_map_info (uapi/linux/bpf.h): btf_id at 64, map_extra at 80.
        assert_eq!(std::mem::offset_of!(MapInfoRaw, btf_id), 64);
        assert_eq!(std::mem::offset_of!(MapInfoRaw, btf_value_type_id), 72);
        assert_eq!(std::mem::offset_of!(MapInfoRaw, map_extra), 80);
        assert_eq!(std::mem::size_of::<BtfInfoRaw>(), 32);
    }
}
