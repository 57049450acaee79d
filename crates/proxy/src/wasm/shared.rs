//! `proxy_get_shared_data` / `proxy_set_shared_data`: a key-value store every plugin VM of
//! the proxy sees (Envoy scopes it by vm_id; here there is one), with compare-and-swap.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Bounds what plugins can make the proxy keep.
const MAX_ENTRIES: usize = 10_000;
const MAX_VALUE: usize = 1 << 20;

/// A value and its CAS token.
type Entry = (Vec<u8>, u32);

#[derive(Debug, Default)]
pub struct SharedData {
    entries: Mutex<HashMap<Vec<u8>, Entry>>,
}

/// Why a set was refused (Proxy-Wasm status codes).
#[derive(Debug, PartialEq, Eq)]
pub enum SetError {
    CasMismatch,
    TooBig,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // One statement per update: a panic elsewhere leaves the map consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SharedData {
    /// The value and its CAS token.
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        lock(&self.entries).get(key).cloned()
    }

    /// Sets `key`; a non-zero `cas` must equal the current token.
    pub fn set(&self, key: Vec<u8>, value: Vec<u8>, cas: u32) -> Result<(), SetError> {
        if value.len() > MAX_VALUE {
            return Err(SetError::TooBig);
        }
        let mut entries = lock(&self.entries);
        let current = entries.get(&key).map_or(0, |(_, c)| *c);
        if cas != 0 && cas != current {
            return Err(SetError::CasMismatch);
        }
        if current == 0 && entries.len() >= MAX_ENTRIES {
            return Err(SetError::TooBig);
        }
        // Tokens start at 1: 0 means "no CAS check" to a caller.
        let next = current.wrapping_add(1).max(1);
        entries.insert(key, (value, next));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wasm_shared_data_cas() {
        let d = SharedData::default();
        d.set(b"k".to_vec(), b"1".to_vec(), 0).unwrap();
        let (v, cas) = d.get(b"k").unwrap();
        assert_eq!(v, b"1");
        d.set(b"k".to_vec(), b"2".to_vec(), cas).unwrap();
        assert_eq!(
            d.set(b"k".to_vec(), b"3".to_vec(), cas),
            Err(SetError::CasMismatch)
        );
        assert_eq!(d.get(b"k").unwrap().0, b"2");
    }
}
