//! Lookups in ascending key order. A pass over one program walks its nodes by name (the
//! targets, the index snapshot, every per-node answer are maps ordered by node name), and
//! reads the other maps for each node. Read by a tree search, that is a dozen string
//! comparisons a node and map; read by stepping through the other map beside the walk, it
//! is one (at 5,000 nodes the searches were most of a reconcile's time:
//! docs/benchmarks.md, the operator at fleet scale).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::iter::Peekable;

/// A sorted map (or set) read with keys that never go down. A key below the last one asked
/// is not found: keep the walk in the map's order.
pub struct Ascending<I: Iterator> {
    iter: Peekable<I>,
}

impl<'a, K: Ord + 'a, V: 'a, I: Iterator<Item = (&'a K, &'a V)>> Ascending<I> {
    pub fn new(map: impl IntoIterator<IntoIter = I>) -> Self {
        Self { iter: map.into_iter().peekable() }
    }

    /// The value at `key`, stepping past every smaller key.
    pub fn get<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&'a V>
    where
        K: Borrow<Q>,
    {
        seek(&mut self.iter, key, |(k, _)| k).map(|(_, v)| v)
    }
}

/// [`Ascending`] over a sorted set.
pub struct AscendingSet<I: Iterator> {
    iter: Peekable<I>,
}

impl<'a, K: Ord + 'a, I: Iterator<Item = &'a K>> AscendingSet<I> {
    pub fn new(set: impl IntoIterator<IntoIter = I>) -> Self {
        Self { iter: set.into_iter().peekable() }
    }

    /// Whether the set holds `key`, stepping past every smaller key.
    pub fn contains<Q: Ord + ?Sized>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        seek(&mut self.iter, key, |k| k).is_some()
    }
}

/// Steps `iter` past every item whose key (`key_of`) is below `key`: the item at `key`,
/// if there is one (left in place, for the same key asked again).
fn seek<'a, T: Copy, K: Borrow<Q> + 'a, Q: Ord + ?Sized>(
    iter: &mut Peekable<impl Iterator<Item = T>>,
    key: &Q,
    key_of: impl Fn(T) -> &'a K,
) -> Option<T> {
    while let Some(&item) = iter.peek() {
        match key_of(item).borrow().cmp(key) {
            Ordering::Less => {
                iter.next();
            }
            Ordering::Equal => return Some(item),
            Ordering::Greater => return None,
        }
    }
    None
}

/// The keys of two sorted sets (or maps' keys) in order, each once.
pub fn union<'a, K: Ord + 'a>(
    a: impl Iterator<Item = &'a K>,
    b: impl Iterator<Item = &'a K>,
) -> impl Iterator<Item = &'a K> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) => match x.cmp(y) {
            Ordering::Less => a.next(),
            Ordering::Greater => b.next(),
            Ordering::Equal => {
                b.next();
                a.next()
            }
        },
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn ascending_reads_agree_with_tree_searches() {
        let map: BTreeMap<String, u32> = [("b", 1), ("d", 2), ("f", 3)].map(|(k, v)| (k.to_string(), v)).into();
        let set: BTreeSet<String> = ["a", "d", "g"].map(String::from).into();
        let mut m = Ascending::new(&map);
        let mut s = AscendingSet::new(&set);
        for key in ["a", "b", "b", "c", "d", "e", "f", "g", "h"] {
            assert_eq!(m.get(key), map.get(key), "{key}");
            assert_eq!(s.contains(key), set.contains(key), "{key}");
        }
        let both: Vec<&String> = union(set.iter(), map.keys()).collect();
        assert_eq!(both, ["a", "b", "d", "f", "g"]);
        assert_eq!(union(set.iter(), [].iter()).count(), 3);
    }
}
