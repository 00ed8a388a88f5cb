//! The clsact filters on an interface, read from the kernel over rtnetlink (a dump of
//! RTM_GETTFILTER). A clsact filter has no file descriptor or pin: this is the only way
//! to see whether one is still there, and which program it runs.

use std::io;

use crds::program::Direction;

/// One BPF classifier filter on a clsact hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// The program it runs (TCA_BPF_ID), when the kernel says.
    pub program_id: Option<u32>,
}

const RTM_GETTFILTER: u16 = 46;
const RTM_NEWTFILTER: u16 = 44;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_ID: u16 = 11;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The clsact parent of a direction: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_{INGRESS,EGRESS}).
fn parent(direction: Direction) -> u32 {
    match direction {
        Direction::Ingress => 0xFFFF_FFF2,
        Direction::Egress => 0xFFFF_FFF3,
    }
}

#[repr(C)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    // struct tcmsg
    family: u8,
    pad1: u8,
    pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

/// Every BPF filter on `ifindex`'s clsact hook in `direction` (empty without clsact).
pub fn bpf_filters(ifindex: u32, direction: Direction) -> io::Result<Vec<Filter>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the result is checked and then owned.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let req = Request {
        len: std::mem::size_of::<Request>() as u32,
        kind: RTM_GETTFILTER,
        flags: NLM_F_REQUEST | NLM_F_DUMP,
        seq: 1,
        pid: 0,
        family: libc::AF_UNSPEC as u8,
        pad1: 0,
        pad2: 0,
        ifindex: ifindex as i32,
        handle: 0,
        parent: parent(direction),
        info: 0,
    };
    // SAFETY: `req` is a plain repr(C) struct read for its own size.
    let sent =
        unsafe { libc::send(sock.as_raw_fd(), &req as *const Request as *const libc::c_void, req.len as usize, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().unwrap_or_default());
            if len < 16 || len > msgs.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message"));
            }
            let body = &msgs[16..len];
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code =
                        body.get(0..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default())).unwrap_or(0);
                    // No clsact qdisc: no filters.
                    if code == -libc::EINVAL || code == -libc::ENOENT || code == 0 {
                        return Ok(out);
                    }
                    return Err(io::Error::from_raw_os_error(-code));
                }
                RTM_NEWTFILTER => {
                    if let Some(f) = parse_filter(body) {
                        out.push(f);
                    }
                }
                _ => {}
            }
            msgs = &msgs[align(len).min(msgs.len())..];
        }
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A tcmsg and its attributes; only BPF filters count.
fn parse_filter(body: &[u8]) -> Option<Filter> {
    // struct tcmsg: family u8, pad u8, pad u16, ifindex i32, handle u32, parent u32, info u32.
    let handle = u32::from_ne_bytes(body.get(8..12)?.try_into().ok()?);
    let info = u32::from_ne_bytes(body.get(16..20)?.try_into().ok()?);
    let mut is_bpf = false;
    let mut program_id = None;
    for (kind, data) in attrs(body.get(20..)?) {
        match kind {
            TCA_KIND => is_bpf = data.starts_with(b"bpf\0"),
            TCA_OPTIONS => {
                for (k, d) in attrs(data) {
                    if k == TCA_BPF_ID && d.len() >= 4 {
                        program_id = Some(u32::from_ne_bytes(d[..4].try_into().ok()?));
                    }
                }
            }
            _ => {}
        }
    }
    // The kernel also reports the chain's head (handle 0): not a filter.
    (is_bpf && handle != 0).then_some(Filter { priority: (info >> 16) as u16, handle, program_id })
}

fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let data = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((kind, data))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend(kind.to_ne_bytes());
        v.extend(data);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    #[test]
    fn bpf_filters_are_parsed_from_tcmsg_and_attributes() {
        let mut body = vec![0u8; 20];
        body[8..12].copy_from_slice(&7u32.to_ne_bytes());
        body[16..20].copy_from_slice(&((1000u32 << 16) | 0x0300).to_ne_bytes());
        body.extend(attr(TCA_KIND, b"bpf\0"));
        body.extend(attr(TCA_OPTIONS, &attr(TCA_BPF_ID, &42u32.to_ne_bytes())));
        assert_eq!(parse_filter(&body), Some(Filter { priority: 1000, handle: 7, program_id: Some(42) }));
        let mut u32_filter = vec![0u8; 20];
        u32_filter[8..12].copy_from_slice(&1u32.to_ne_bytes());
        u32_filter.extend(attr(TCA_KIND, b"u32\0"));
        assert_eq!(parse_filter(&u32_filter), None, "only BPF filters");
        assert_eq!(parse_filter(&[0u8; 8]), None, "truncated");
    }
}
