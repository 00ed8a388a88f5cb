//! One shared copy of equal values: uids, names and revisions in the index, node sets
//! shared by every program that selects the same nodes. Thousands of programs over
//! thousands of nodes would otherwise each hold their own copies.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

/// Values nobody else holds any more are dropped once the set has doubled since the last
/// sweep (and holds more than `floor`), so the cost of sweeping is spread over the
/// insertions that made it necessary.
#[derive(Debug)]
pub struct Interner<T: ?Sized> {
    set: HashSet<Arc<T>>,
    /// Size of the set after the last sweep.
    swept: usize,
    floor: usize,
}

/// The index's: sweeps start once it holds 512 values.
impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Self { set: HashSet::new(), swept: 0, floor: 512 }
    }
}

impl<T: ?Sized + Hash + Eq> Interner<T> {
    pub fn new(floor: usize) -> Self {
        Self { set: HashSet::new(), swept: 0, floor }
    }

    /// The shared copy of `key`, made with `make` if there is none.
    pub fn get<Q>(&mut self, key: &Q, make: impl FnOnce(&Q) -> Arc<T>) -> Arc<T>
    where
        Arc<T>: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        if let Some(a) = self.set.get(key) {
            return a.clone();
        }
        let a = make(key);
        self.set.insert(a.clone());
        if self.set.len() > 2 * self.swept.max(self.floor) {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.swept = self.set.len();
        }
        a
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

impl Interner<str> {
    /// The shared copy of `s`.
    pub fn str(&mut self, s: &str) -> Arc<str> {
        self.get(s, |s| Arc::from(s))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn equal_values_share_one_copy_and_unheld_ones_are_swept() {
        let mut strings: Interner<str> = Interner::new(4);
        let a = strings.str("uid-1");
        let b = strings.str("uid-1");
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..8 {
            strings.str(&format!("gone-{i}"));
        }
        assert!(strings.len() <= 9, "unheld copies are swept: {}", strings.len());
        assert!(Arc::ptr_eq(&a, &strings.str("uid-1")), "held ones stay");

        let mut sets: Interner<BTreeSet<String>> = Interner::new(4);
        let nodes: BTreeSet<String> = ["n1".to_string(), "n2".to_string()].into();
        let x = sets.get(&nodes, |s| Arc::new(s.clone()));
        let y = sets.get(&nodes.clone(), |s| Arc::new(s.clone()));
        assert!(Arc::ptr_eq(&x, &y));
    }
}
