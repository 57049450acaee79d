//! The one way the discovery caches take their locks.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, going on past a poisoned lock: the discovery caches (`cache`, `shapes`,
/// `wake`) hold plain maps that a panicking holder cannot leave in a state worse than a
/// missed or spurious entry (a compile or a wake-up more or less).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
