//! A node's digest: one number for "what this agent runs", computed the same way by the
//! agent (from its records) and by the operator (from a List it read in full), so a resync
//! of a node where nothing changed compares two numbers instead of every owner.
//!
//! The digest of a set of owners is the wrapping sum of one 64-bit hash per owner: the
//! order of owners (and of pages) does not matter, and the empty set is 0. Each owner's
//! hash is FNV-1a over its uid, name, revision and health (fields separated by a byte no
//! UTF-8 string contains), then mixed (SplitMix64's finaliser) so that sums of similar
//! owners do not cancel out. Not cryptographic: it guards against missed updates, not
//! against an agent that lies (an agent is trusted with the node anyway).
//!
//! An owner's pods (`OwnerState.pods`: programs inside pods) count too, so that a pod
//! attached, detached or failing changes the digest although the revision and health stay:
//! each pod adds its own hash, over the owner's uid and the pod's uid, namespace, name,
//! link ids, reason and message. An owner without pods hashes as it always did.

use crds::Health;

use crate::v1;

/// Separates fields: 0xff never occurs in UTF-8.
const SEPARATOR: u8 = 0xff;

/// Accumulates owners into a node's digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeDigest(u64);

impl NodeDigest {
    /// Adds one owner.
    pub fn add(&mut self, uid: &str, name: &str, revision: &str, health: Health) {
        self.0 = self.0.wrapping_add(owner_hash(uid, name, revision, health));
    }

    /// Takes out one owner added before (an agent keeping its digest as owners change).
    pub fn remove(&mut self, uid: &str, name: &str, revision: &str, health: Health) {
        self.0 = self.0.wrapping_sub(owner_hash(uid, name, revision, health));
    }

    /// Adds one owner as the wire carries it, with its pods.
    pub fn add_state(&mut self, state: &v1::OwnerState) {
        if let Some(owner) = &state.owner {
            self.add(&owner.uid, &owner.name, &state.revision, crate::health_from_wire(state.health));
            let pods = state.pods.iter().map(|p| {
                pod_hash(
                    &owner.uid,
                    PodFields {
                        uid: &p.uid,
                        namespace: &p.namespace,
                        name: &p.name,
                        link_ids: &p.link_ids,
                        reason: &p.reason,
                        message: &p.message,
                    },
                )
            });
            self.add_pods_hash(pods.fold(0, u64::wrapping_add));
        }
    }

    /// Adds one owner's pods by their [`pods_hash`]: what an index that keeps the number,
    /// not the pods, adds next to [`add`](Self::add) to find the digest the agent reports.
    pub fn add_pods_hash(&mut self, hash: u64) {
        self.0 = self.0.wrapping_add(hash);
    }

    /// The digest of every owner in `states`.
    pub fn of_states<'a>(states: impl IntoIterator<Item = &'a v1::OwnerState>) -> u64 {
        let mut d = NodeDigest::default();
        states.into_iter().for_each(|s| d.add_state(s));
        d.value()
    }

    pub fn value(self) -> u64 {
        self.0
    }
}

fn owner_hash(uid: &str, name: &str, revision: &str, health: Health) -> u64 {
    let health = match health {
        Health::Healthy => 1u8,
        Health::Degraded => 2,
        Health::Failed => 3,
    };
    fields_hash(&[uid.as_bytes(), name.as_bytes(), revision.as_bytes(), &[health]])
}

/// The part of a node's digest that one owner's pods (as a BpfNode entry holds them)
/// make: 0 for none. The same number [`NodeDigest::add_state`] adds for the wire's pods.
pub fn pods_hash(owner_uid: &str, pods: &[crds::node::PodAttachment]) -> u64 {
    pods.iter()
        .map(|p| {
            let fields = PodFields {
                uid: &p.uid,
                namespace: &p.namespace,
                name: &p.name,
                link_ids: &p.link_ids,
                reason: p.reason.as_deref().unwrap_or_default(),
                message: p.message.as_deref().unwrap_or_default(),
            };
            pod_hash(owner_uid, fields)
        })
        .fold(0, u64::wrapping_add)
}

/// What of a pod counts, whichever type carries it (an absent reason is an empty one).
struct PodFields<'a> {
    uid: &'a str,
    namespace: &'a str,
    name: &'a str,
    link_ids: &'a [u32],
    reason: &'a str,
    message: &'a str,
}

/// One pod of an owner. A leading marker field keeps a pod's hash apart from any owner's.
fn pod_hash(owner_uid: &str, pod: PodFields<'_>) -> u64 {
    let links: Vec<u8> = pod.link_ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    fields_hash(&[
        b"pod",
        owner_uid.as_bytes(),
        pod.uid.as_bytes(),
        pod.namespace.as_bytes(),
        pod.name.as_bytes(),
        &links,
        pod.reason.as_bytes(),
        pod.message.as_bytes(),
    ])
}

/// FNV-1a over `fields`, each followed by the separator, then SplitMix64's finaliser.
fn fields_hash(fields: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for field in fields {
        for &b in field.iter().chain(std::iter::once(&SEPARATOR)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(owners: &[(&str, &str, &str, Health)]) -> u64 {
        let mut d = NodeDigest::default();
        for (u, n, r, h) in owners {
            d.add(u, n, r, *h);
        }
        d.value()
    }

    #[test]
    fn order_does_not_matter_and_nothing_is_zero() {
        let a = ("u1", "a", "r1", Health::Healthy);
        let b = ("u2", "b", "r2", Health::Degraded);
        assert_eq!(digest(&[a, b]), digest(&[b, a]));
        let mut d = NodeDigest::default();
        d.add(a.0, a.1, a.2, a.3);
        d.add(b.0, b.1, b.2, b.3);
        d.remove(a.0, a.1, a.2, a.3);
        assert_eq!(d.value(), digest(&[b]), "removing an owner undoes its add");
        assert_eq!(digest(&[]), 0);
        assert_ne!(digest(&[("u", "n", "", Health::Healthy)]), 0, "an owner without a revision counts too");
    }

    #[test]
    fn every_field_counts() {
        let base = digest(&[("u1", "a", "r1", Health::Healthy)]);
        for other in [
            ("u2", "a", "r1", Health::Healthy),
            ("u1", "b", "r1", Health::Healthy),
            ("u1", "a", "r2", Health::Healthy),
            ("u1", "a", "r1", Health::Degraded),
            ("u1", "a", "r1", Health::Failed),
            // Moving a character from one field to the next is a different owner.
            ("u1a", "", "r1", Health::Healthy),
        ] {
            assert_ne!(digest(&[other]), base, "{other:?}");
        }
        let two = digest(&[("u1", "a", "r1", Health::Healthy), ("u2", "a", "r1", Health::Healthy)]);
        assert_ne!(two, base);
        assert_ne!(two, 0);
    }

    #[test]
    fn wire_states_hash_like_their_fields() {
        let state = v1::OwnerState {
            owner: Some(v1::Owner { uid: "u1".into(), name: "a".into() }),
            revision: "r1".into(),
            health: v1::Health::Degraded as i32,
            ..Default::default()
        };
        assert_eq!(NodeDigest::of_states([&state]), digest(&[("u1", "a", "r1", Health::Degraded)]));
        let ownerless = v1::OwnerState { revision: "r".into(), ..Default::default() };
        assert_eq!(NodeDigest::of_states([&ownerless]), 0);
    }

    /// The operator's unchanged-digest fast path must notice a pod attached, detached or
    /// failing while the owner's revision and health stay the same.
    #[test]
    fn pods_count_and_their_order_does_not() {
        let pod = |uid: &str, links: &[u32], reason: &str| v1::PodState {
            uid: uid.into(),
            namespace: "shop".into(),
            name: format!("web-{uid}"),
            link_ids: links.to_vec(),
            reason: reason.into(),
            message: if reason.is_empty() { String::new() } else { "gone".into() },
        };
        let state = |pods: Vec<v1::PodState>| v1::OwnerState {
            owner: Some(v1::Owner { uid: "u1".into(), name: "a".into() }),
            revision: "r1".into(),
            health: v1::Health::Healthy as i32,
            pods,
            ..Default::default()
        };
        let bare = NodeDigest::of_states([&state(vec![])]);
        assert_eq!(bare, digest(&[("u1", "a", "r1", Health::Healthy)]), "no pods: the digest it always was");
        let two = NodeDigest::of_states([&state(vec![pod("p1", &[7], ""), pod("p2", &[8], "")])]);
        let swapped = NodeDigest::of_states([&state(vec![pod("p2", &[8], ""), pod("p1", &[7], "")])]);
        assert_eq!(two, swapped);
        let variants = [
            state(vec![pod("p1", &[7], "")]),
            state(vec![pod("p1", &[7], ""), pod("p2", &[9], "")]),
            state(vec![pod("p1", &[7], ""), pod("p2", &[], "TargetNotFound")]),
            state(vec![pod("p1", &[7], ""), pod("p3", &[8], "")]),
        ];
        let mut seen = std::collections::BTreeSet::from([bare, two]);
        for v in &variants {
            assert!(seen.insert(NodeDigest::of_states([v])), "{v:?}");
        }
        // The same pod under another owner is another pod.
        let mut other = state(vec![pod("p1", &[7], "")]);
        other.owner = Some(v1::Owner { uid: "u2".into(), name: "a".into() });
        let mut alone = state(vec![]);
        alone.owner = other.owner.clone();
        assert_ne!(
            NodeDigest::of_states([&other]).wrapping_sub(NodeDigest::of_states([&alone])),
            NodeDigest::of_states([&variants[0]]).wrapping_sub(bare)
        );
        // An index holding owners as BpfNode entries finds the same digest.
        for v in variants.iter().chain([&state(vec![])]) {
            let status = crate::state_to_status(v);
            let mut d = NodeDigest::default();
            d.add(&status.owner_uid, &status.owner, &status.revision, status.health);
            d.add_pods_hash(pods_hash(&status.owner_uid, &status.pods));
            assert_eq!(d.value(), NodeDigest::of_states([v]), "{v:?}");
        }
    }
}
