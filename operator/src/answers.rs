//! What an agent's answers must look like before anything in them reaches the index: the
//! agent that answered is the node that was dialled, and a List or a Watch stays within
//! bounds whatever the agent sends (issue 21, points 4 and 5).
//!
//! Pure checks over the wire types; `dispatch` applies them to every answer and treats a
//! violation as an unreachable agent (backoff, no Remove, `AgentUnreachable` in status).

use std::collections::HashSet;
use std::time::Instant;

use crds::limits::MAX_OWNERS_PER_NODE;
use crds::names::OwnerUid;
use proto::v1;

/// Bytes of one List read in full, across its pages.
pub const MAX_LIST_BYTES: usize = 32 << 20;
/// List pages in one read: every page but the last carries at least one owner.
pub const MAX_LIST_PAGES: usize = MAX_OWNERS_PER_NODE;
/// Watch events an agent may send beyond its first [`MAX_OWNERS_PER_NODE`] (the snapshot
/// of every owner), per second, sustained. A real agent sends a few per Apply.
pub const MAX_WATCH_EVENTS_PER_SECOND: f64 = 500.0;

/// The node that answered is the node dialled. `answered` may be empty only where the
/// field is newer than the message (`required` false: an agent older than the node-name
/// check, which does not refuse requests for other nodes either; its List answers, which
/// always named the node, are still checked).
pub fn same_node(dialled: &str, answered: &str, required: bool) -> Result<(), String> {
    if answered == dialled || (answered.is_empty() && !required) {
        return Ok(());
    }
    Err(format!(
        "the agent at node {dialled:?}'s address runs on node {answered:?}: node {dialled:?}'s InternalIP leads to \
         another node's agent; nothing is sent there"
    ))
}

/// The owner uid of a state, checked: present and in the uid format.
pub fn owner_uid(state: &v1::OwnerState) -> Result<&str, String> {
    let owner = state.owner.as_ref().ok_or("an owner state without an owner")?;
    OwnerUid::new(owner.uid.as_str()).map_err(|e| format!("{e} (uid {:?})", shorten(&owner.uid)))?;
    Ok(&owner.uid)
}

/// Checks a List read page by page: node name, uid format, uids strictly ascending across
/// pages (as agents page them, so no owner twice and every page makes progress), and at
/// most [`MAX_OWNERS_PER_NODE`] owners, [`MAX_LIST_PAGES`] pages, [`MAX_LIST_BYTES`] bytes.
#[derive(Debug, Default)]
pub struct ListCheck {
    owners: usize,
    pages: usize,
    bytes: usize,
    last_uid: Option<String>,
}

impl ListCheck {
    pub fn page(&mut self, dialled: &str, page: &v1::ListResponse) -> Result<(), String> {
        use prost::Message;
        same_node(dialled, &page.node_name, true)?;
        self.pages += 1;
        self.bytes += page.encoded_len();
        self.owners += page.owners.len();
        if self.owners > MAX_OWNERS_PER_NODE {
            return Err(format!("List answered more than {MAX_OWNERS_PER_NODE} owners; cut off"));
        }
        if self.bytes > MAX_LIST_BYTES {
            return Err(format!("List answered more than {} MiB; cut off", MAX_LIST_BYTES >> 20));
        }
        if self.pages > MAX_LIST_PAGES || (page.owners.is_empty() && !page.next_page_token.is_empty()) {
            return Err(format!("List pages make no progress ({} pages); cut off", self.pages));
        }
        for state in &page.owners {
            let uid = owner_uid(state).map_err(|e| format!("List answered {e}"))?;
            if self.last_uid.as_deref().is_some_and(|last| uid <= last) {
                return Err(format!("List answered owner {uid:?} twice or out of order; cut off"));
            }
            self.last_uid = Some(uid.to_owned());
        }
        Ok(())
    }
}

/// Checks a Watch stream event by event: node name, uid format, at most
/// [`MAX_OWNERS_PER_NODE`] owners known at once, and a rate (a token bucket of
/// [`MAX_OWNERS_PER_NODE`] events refilled at [`MAX_WATCH_EVENTS_PER_SECOND`]).
#[derive(Debug)]
pub struct WatchCheck {
    owners: HashSet<String>,
    tokens: f64,
    last: Instant,
}

impl WatchCheck {
    pub fn new(now: Instant) -> Self {
        Self { owners: HashSet::new(), tokens: MAX_OWNERS_PER_NODE as f64, last: now }
    }

    pub fn event(&mut self, dialled: &str, ev: &v1::WatchEvent, now: Instant) -> Result<(), String> {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * MAX_WATCH_EVENTS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(MAX_OWNERS_PER_NODE as f64);
        self.last = now;
        if self.tokens < 1.0 {
            return Err(format!(
                "the change stream floods (more than {MAX_WATCH_EVENTS_PER_SECOND} events a second); cut off"
            ));
        }
        self.tokens -= 1.0;
        same_node(dialled, &ev.node_name, false)?;
        let state = ev.state.as_ref().ok_or("the change stream sent an event without a state")?;
        let uid = owner_uid(state).map_err(|e| format!("the change stream sent {e}"))?;
        if ev.kind == v1::watch_event::Kind::Removed as i32 {
            self.owners.remove(uid);
        } else if !self.owners.contains(uid) {
            if self.owners.len() >= MAX_OWNERS_PER_NODE {
                return Err(format!("the change stream names more than {MAX_OWNERS_PER_NODE} owners; cut off"));
            }
            self.owners.insert(uid.to_owned());
        }
        Ok(())
    }
}

/// At most 80 characters of what an agent sent, for a message.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 80 { s.to_owned() } else { format!("{}…", s.chars().take(80).collect::<String>()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn state(uid: &str) -> v1::OwnerState {
        v1::OwnerState { owner: Some(v1::Owner { uid: uid.into(), name: "p".into() }), ..Default::default() }
    }

    fn page(node: &str, uids: &[String], next: &str) -> v1::ListResponse {
        v1::ListResponse {
            node_name: node.into(),
            owners: uids.iter().map(|u| state(u)).collect(),
            next_page_token: next.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_answering_node_must_be_the_dialled_one() {
        same_node("a", "a", true).unwrap();
        same_node("a", "", false).unwrap();
        let e = same_node("a", "b", false).unwrap_err();
        assert!(e.contains("\"a\"") && e.contains("\"b\""), "{e}");
        same_node("a", "", true).unwrap_err();
        let mut list = ListCheck::default();
        assert!(list.page("a", &page("b", &[], "")).unwrap_err().contains("\"b\""));
    }

    #[test]
    fn an_endless_list_is_cut_off() {
        // The same page again and again: out of order at the second.
        let mut list = ListCheck::default();
        let p = page("n", &["u1".into(), "u2".into()], "u2");
        list.page("n", &p).unwrap();
        assert!(list.page("n", &p).unwrap_err().contains("twice or out of order"));
        // Empty pages that never end.
        let mut list = ListCheck::default();
        assert!(list.page("n", &page("n", &[], "more")).unwrap_err().contains("no progress"));
        // Fresh owners forever: cut at the bound.
        let mut list = ListCheck::default();
        let mut n = 0;
        let err = loop {
            let uids: Vec<String> = (n..n + 500).map(|i| format!("u{i:08}")).collect();
            n += 500;
            if let Err(e) = list.page("n", &page("n", &uids, "next")) {
                break e;
            }
            assert!(n <= MAX_OWNERS_PER_NODE, "not cut at {n}");
        };
        assert!(err.contains("more than 10000 owners"), "{err}");
        // Garbage uids.
        let mut list = ListCheck::default();
        let err = list.page("n", &page("n", &["../../etc".into()], "")).unwrap_err();
        assert!(err.contains("owner uid"), "{err}");
        let ownerless =
            v1::ListResponse { node_name: "n".into(), owners: vec![v1::OwnerState::default()], ..Default::default() };
        ListCheck::default().page("n", &ownerless).unwrap_err();
    }

    #[test]
    fn a_list_too_large_in_bytes_is_cut_off() {
        let mut list = ListCheck::default();
        let big = "x".repeat(1 << 20);
        let mut n = 0;
        let err = loop {
            let mut p = page("n", &[format!("u{n:08}")], "next");
            p.owners[0].last_error = big.clone();
            n += 1;
            if let Err(e) = list.page("n", &p) {
                break e;
            }
        };
        assert!(err.contains("32 MiB") && n <= 33, "{err} after {n}");
    }

    #[test]
    fn a_flooding_or_garbage_watch_is_cut_off() {
        let t0 = Instant::now();
        let ev = |uid: &str, kind: v1::watch_event::Kind| v1::WatchEvent {
            kind: kind as i32,
            state: Some(state(uid)),
            node_name: "n".into(),
            ..Default::default()
        };
        let mut w = WatchCheck::new(t0);
        // A snapshot of many owners, then steady changes, pass.
        for i in 0..5000 {
            w.event("n", &ev(&format!("u{i}"), v1::watch_event::Kind::Updated), t0).unwrap();
        }
        for i in 0..100 {
            w.event("n", &ev("u1", v1::watch_event::Kind::Updated), t0 + Duration::from_secs(i)).unwrap();
        }
        // Removed owners make room.
        w.event("n", &ev("u1", v1::watch_event::Kind::Removed), t0 + Duration::from_secs(100)).unwrap();
        // Garbage.
        let err = w.event("n", &ev("UPPER/..", v1::watch_event::Kind::Updated), t0).unwrap_err();
        assert!(err.contains("owner uid"), "{err}");
        let mut other = ev("u2", v1::watch_event::Kind::Updated);
        other.node_name = "m".into();
        assert!(w.event("n", &other, t0).unwrap_err().contains("\"m\""));
        // An endless flood of new owners at one instant: cut off.
        let mut w = WatchCheck::new(t0);
        let err = (0..).find_map(|i| w.event("n", &ev(&format!("f{i}"), v1::watch_event::Kind::Updated), t0).err());
        assert!(err.unwrap().contains("floods"));
        // Too many owners known at once, even slowly.
        let mut w = WatchCheck::new(t0);
        let mut at = t0;
        let err = (0..).find_map(|i| {
            at += Duration::from_millis(10);
            w.event("n", &ev(&format!("s{i}"), v1::watch_event::Kind::Updated), at).err()
        });
        assert!(err.unwrap().contains("more than 10000 owners"));
    }
}
