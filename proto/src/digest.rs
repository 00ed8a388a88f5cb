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

    /// Adds one owner as the wire carries it.
    pub fn add_state(&mut self, state: &v1::OwnerState) {
        if let Some(owner) = &state.owner {
            self.add(&owner.uid, &owner.name, &state.revision, crate::health_from_wire(state.health));
        }
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
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let health = match health {
        Health::Healthy => 1u8,
        Health::Degraded => 2,
        Health::Failed => 3,
    };
    let mut h = OFFSET;
    for field in [uid.as_bytes(), name.as_bytes(), revision.as_bytes(), &[health]] {
        for &b in field.iter().chain(std::iter::once(&SEPARATOR)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    // SplitMix64's finaliser.
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
}
