//! Text many objects hold alike, kept once: `spec.bytecode.inline`.
//!
//! The operator caches every BpfProgram, and a fleet's programs often carry the same object
//! inline (one BpfProgram per tenant, per interface or per setting of its global data).
//! Each copy read from the API server would be an allocation of up to 1.3 MiB; a
//! [`SharedText`] read while another with the same text is held is that one instead. The
//! table of texts held weakly loses an entry when its last holder drops it; the text is
//! boxed inside the shared allocation, so an entry left behind (two last holders dropping
//! at once) keeps a few bytes until a sweep, never the text.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable string, shared with every other [`SharedText`] of the same text that is
/// held when it is made. Reads, serializes and has the schema of a plain string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedText(Arc<Box<str>>);

/// Texts by hash, held weakly.
type Table = HashMap<u64, Vec<Weak<Box<str>>>>;
static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);
/// Texts made since the table was last swept of entries nobody holds (two last holders
/// dropped at once can each leave the entry to the other).
static MADE: AtomicUsize = AtomicUsize::new(0);
const SWEEP_EVERY: usize = 256;
static HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);

impl SharedText {
    pub fn new(text: String) -> Self {
        let hash = HASHER.hash_one(text.as_str());
        let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
        if MADE.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            table.retain(|_, held| {
                held.retain(|w| w.strong_count() > 0);
                !held.is_empty()
            });
        }
        let held = table.entry(hash).or_default();
        if let Some(same) = held.iter().filter_map(Weak::upgrade).find(|t| ***t == *text) {
            return Self(same);
        }
        held.retain(|w| w.strong_count() > 0);
        let shared = Arc::new(text.into_boxed_str());
        held.push(Arc::downgrade(&shared));
        Self(shared)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Holders of this text (for tests).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl Drop for SharedText {
    fn drop(&mut self) {
        // The last holder: the entry goes, and the text's memory with it (a weak reference
        // would keep the allocation). A text made again meanwhile at worst is not shared.
        if Arc::strong_count(&self.0) > 1 {
            return;
        }
        let hash = HASHER.hash_one(&**self.0);
        let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
        // Looked at again under the lock: `new` may have handed the text out meanwhile.
        if Arc::strong_count(&self.0) > 1 {
            return;
        }
        if let Some(held) = table.get_mut(&hash) {
            held.retain(|w| !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.0)) && w.strong_count() > 0);
            if held.is_empty() {
                table.remove(&hash);
            }
        }
    }
}

impl Deref for SharedText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedText {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<String> for SharedText {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl From<&str> for SharedText {
    fn from(text: &str) -> Self {
        Self::new(text.to_owned())
    }
}

impl PartialEq<str> for SharedText {
    fn eq(&self, other: &str) -> bool {
        **self.0 == *other
    }
}

impl PartialEq<&str> for SharedText {
    fn eq(&self, other: &&str) -> bool {
        **self.0 == **other
    }
}

impl fmt::Debug for SharedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl fmt::Display for SharedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SharedText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

impl JsonSchema for SharedText {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        String::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> std::sync::MutexGuard<'static, Table> {
        TABLE.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the table still has an entry for the allocation `w` points to (`w` keeps the
    /// allocation, so no other text can take its address meanwhile).
    fn listed(w: &Weak<Box<str>>) -> bool {
        table().values().flatten().any(|e| e.ptr_eq(w))
    }

    #[test]
    fn the_same_text_is_one_allocation_while_held() {
        let text = "f0VMRgIBAQ".repeat(100) + "shared-text-test-1";
        let a: SharedText = serde_json::from_value(serde_json::json!(text)).unwrap();
        let b: SharedText = serde_json::from_value(serde_json::json!(text)).unwrap();
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "one allocation for both");
        assert_eq!(a.holders(), 2);
        let other = SharedText::from(format!("{text}!"));
        assert!(!std::ptr::eq(a.as_str(), other.as_str()));
        assert_eq!(serde_json::to_value(&a).unwrap(), serde_json::json!(text));
        assert_eq!(a, *text.as_str());
        assert_eq!(format!("{a:?}"), format!("{text:?}"));

        // The last holder takes the entry with it.
        let (wa, wo) = (Arc::downgrade(&a.0), Arc::downgrade(&other.0));
        assert!(listed(&wa) && listed(&wo));
        drop(a);
        assert!(listed(&wa), "b still holds it");
        drop((b, other));
        assert!(!listed(&wa) && !listed(&wo), "no entry left for a text nobody holds");
    }

    #[test]
    fn many_distinct_texts_leave_no_entries() {
        let texts: Vec<SharedText> = (0..200).map(|i| SharedText::from(format!("shared-text-test-2-{i}"))).collect();
        let again: Vec<SharedText> = (0..200).map(|i| SharedText::from(format!("shared-text-test-2-{i}"))).collect();
        assert!(texts.iter().zip(&again).all(|(a, b)| std::ptr::eq(a.as_str(), b.as_str())));
        let weak: Vec<_> = texts.iter().map(|t| Arc::downgrade(&t.0)).collect();
        assert!(weak.iter().all(listed));
        drop((texts, again));
        assert!(!weak.iter().any(listed), "entries left behind");
    }

    #[test]
    fn its_schema_is_a_string() {
        let mut generator = SchemaGenerator::default();
        assert_eq!(SharedText::json_schema(&mut generator), String::json_schema(&mut generator));
    }
}
