//! Owner locks: one async mutex per owner uid, in a map that holds only the owners with
//! work in flight.

use std::sync::Arc;

use super::Manager;

/// One owner's lock, held: dropping it unlocks, then forgets the lock when nobody else
/// holds or waits for it (in that order, or the entry would outlive its last user).
pub(super) struct OwnerLock<'a> {
    manager: &'a Manager,
    uid: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for OwnerLock<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.manager.release_lock(&self.uid, &self.lock);
    }
}

impl Manager {
    /// Wait for the owner's lock and hold it until the guard drops.
    pub(super) async fn lock_owner(&self, uid: &str) -> OwnerLock<'_> {
        let lock = self.lock_for(uid);
        let guard = Arc::clone(&lock).lock_owned().await;
        OwnerLock { manager: self, uid: uid.to_string(), lock, guard: Some(guard) }
    }

    /// The owner's lock if nobody holds it now.
    pub(super) fn try_lock_owner(&self, uid: &str) -> Option<OwnerLock<'_>> {
        let lock = self.lock_for(uid);
        match Arc::clone(&lock).try_lock_owned() {
            Ok(guard) => Some(OwnerLock { manager: self, uid: uid.to_string(), lock, guard: Some(guard) }),
            Err(_) => {
                self.release_lock(uid, &lock);
                None
            }
        }
    }

    fn lock_for(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(uid.to_string()).or_default().clone()
    }

    /// Forget an owner's lock once nobody holds or waits for it: the map stays as small
    /// as the work in flight, however many owners come and go.
    fn release_lock(&self, uid: &str, lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // The map's reference and ours: no other caller cloned it (they do under this mutex).
        if Arc::strong_count(lock) == 2 {
            locks.remove(uid);
        }
    }

    /// Owner locks currently held or waited for (tests, metrics).
    pub fn locks_in_use(&self) -> usize {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
