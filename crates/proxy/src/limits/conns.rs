//! `--max-connections`: the open connections of one listener, counted from accept until the
//! connection's task ends. A connection over the limit is closed at once (TCP has no way to
//! say why; HTTP could only say it after reading a request, which is what the limit saves).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// One listener's count; cheap to clone into each accepted connection's guard.
#[derive(Clone, Debug)]
pub struct ConnLimit {
    open: Arc<AtomicU32>,
    max: Option<u32>,
}

/// Held by an accepted connection's task; gives its slot back on drop.
#[derive(Debug)]
pub struct ConnSlot {
    open: Arc<AtomicU32>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Relaxed);
    }
}

impl ConnLimit {
    pub fn new(max: Option<u32>) -> Self {
        Self {
            open: Arc::default(),
            max,
        }
    }

    /// A slot for a new connection, or `None` when the listener is full.
    pub fn try_acquire(&self) -> Option<ConnSlot> {
        let prev = self.open.fetch_add(1, Relaxed);
        let slot = ConnSlot {
            open: self.open.clone(),
        };
        match self.max {
            // `slot` drops here and gives the count back.
            Some(max) if prev >= max => None,
            _ => Some(slot),
        }
    }

    pub fn open(&self) -> u32 {
        self.open.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back() {
        let limit = ConnLimit::new(Some(2));
        let a = limit.try_acquire().expect("first");
        let _b = limit.try_acquire().expect("second");
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.open(), 2);
        drop(a);
        assert!(limit.try_acquire().is_some());
        assert!(ConnLimit::new(None).try_acquire().is_some());
    }
}
