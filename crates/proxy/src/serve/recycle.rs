//! A box for the per-request future that reuses its allocation.
//!
//! Every request's future lives on the heap (moving it by value through hyper costs a copy of
//! its whole size per move). It is about 9 KiB, above glibc's per-thread cache (tcache, up to
//! 1 KiB), so each `Box::pin` took glibc's slow path: `_int_malloc` over the bins, at times a
//! `malloc_consolidate`, and `_int_free` with chunk coalescing on the way out, about 900
//! instructions per request of a plain HTTP/1.1 hop that a pointer pop and push replace.
//!
//! Each thread keeps a short stack of freed allocations of one layout (the first one boxed on
//! it: the request future, the only type boxed here); a future of another layout, or a box
//! freed when the stack is full, goes to the allocator as usual. The stack holds at most
//! [`KEPT`] allocations, so what it keeps is bounded by what was in flight at once anyway.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Freed allocations kept per thread: one per request in flight at once on the thread is what
/// a busy connection set needs; beyond that, memory goes back to the allocator.
const KEPT: usize = 32;

/// A future on the heap, in an allocation that goes back to its thread's stack when dropped.
pub(crate) struct Recycled<F> {
    /// Points to a live `F`, written once in [`Recycled::new`] and dropped in place in `drop`;
    /// never moved out, so polling it pinned is sound.
    ptr: NonNull<F>,
}

// SAFETY: `Recycled<F>` owns its `F` exactly as `Box<F>` does; sending it sends the `F`.
#[allow(unsafe_code)]
unsafe impl<F: Send> Send for Recycled<F> {}

// The future is behind the pointer and never moves with the handle.
impl<F> Unpin for Recycled<F> {}

impl<F: Future> Recycled<F> {
    /// Builds the future straight into a (reused) allocation: `make` runs after the memory is
    /// found, so the compiler can write its result in place rather than copying it.
    #[inline]
    pub(crate) fn new(make: impl FnOnce() -> F) -> Self {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            // Nothing to allocate; a dangling pointer is the zero-size value's address.
            let ptr = NonNull::<F>::dangling();
            #[allow(unsafe_code)]
            // SAFETY: writing a zero-size value through a dangling, aligned pointer is valid.
            unsafe {
                ptr.as_ptr().write(make())
            };
            return Self { ptr };
        }
        let ptr = take(layout)
            .unwrap_or_else(|| {
                #[allow(unsafe_code)]
                // SAFETY: the layout's size is not zero (checked above).
                let raw = unsafe { alloc(layout) };
                NonNull::new(raw).unwrap_or_else(|| handle_alloc_error(layout))
            })
            .cast::<F>();
        #[allow(unsafe_code)]
        // SAFETY: `ptr` is an allocation of `F`'s layout that holds no value (fresh from the
        // allocator, or emptied by `drop` before it went on the stack).
        unsafe {
            ptr.as_ptr().write(make())
        };
        Self { ptr }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        #[allow(unsafe_code)]
        // SAFETY: the `F` at `ptr` stays at that address until `drop` drops it in place, and
        // nothing moves it out, so it is pinned for as long as it lives.
        let fut = unsafe { Pin::new_unchecked(&mut *self.get_mut().ptr.as_ptr()) };
        fut.poll(cx)
    }
}

impl<F> Drop for Recycled<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        #[allow(unsafe_code)]
        // SAFETY: `ptr` holds a live `F` (written in `new`); it is dropped exactly once, here,
        // in place, which also keeps the pinning promise.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr())
        };
        if layout.size() != 0 {
            give(self.ptr.cast(), layout);
        }
    }
}

/// One thread's freed allocations, all of `layout`.
struct Stack {
    layout: Option<Layout>,
    free: Vec<NonNull<u8>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(layout) = self.layout {
            for ptr in self.free.drain(..) {
                #[allow(unsafe_code)]
                // SAFETY: every pointer on the stack came from `alloc(layout)` and holds no
                // value; each is on the stack once.
                unsafe {
                    dealloc(ptr.as_ptr(), layout)
                };
            }
        }
    }
}

thread_local! {
    static STACK: RefCell<Stack> = const {
        RefCell::new(Stack { layout: None, free: Vec::new() })
    };
}

/// A freed allocation of `layout` from this thread's stack, if it has one. The first layout
/// asked for on a thread becomes its stack's layout.
fn take(layout: Layout) -> Option<NonNull<u8>> {
    STACK
        .try_with(|stack| {
            let mut stack = stack.borrow_mut();
            match stack.layout {
                Some(l) if l == layout => stack.free.pop(),
                Some(_) => None,
                None => {
                    stack.layout = Some(layout);
                    stack.free.reserve_exact(KEPT);
                    None
                }
            }
        })
        .ok()
        .flatten()
}

/// Puts an emptied allocation on this thread's stack, or frees it (another layout, a full
/// stack, or a thread that is exiting).
fn give(ptr: NonNull<u8>, layout: Layout) {
    let kept = STACK
        .try_with(|stack| {
            let mut stack = stack.borrow_mut();
            let fits = stack.layout == Some(layout) && stack.free.len() < KEPT;
            if fits {
                stack.free.push(ptr);
            }
            fits
        })
        .unwrap_or(false);
    if !kept {
        #[allow(unsafe_code)]
        // SAFETY: `ptr` came from `alloc(layout)` (directly, or through the stack, which only
        // holds allocations of its own layout) and holds no value.
        unsafe {
            dealloc(ptr.as_ptr(), layout)
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;

    /// Counts drops, to see each future dropped exactly once.
    struct Counted(Arc<AtomicUsize>, [u8; 4096]);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    fn counted_future(drops: &Arc<AtomicUsize>, value: u32) -> impl Future<Output = u32> + use<> {
        let guard = Counted(drops.clone(), [7; 4096]);
        async move {
            tokio::task::yield_now().await;
            value + u32::from(guard.1[4095] - 7)
        }
    }

    fn address<F>(r: &Recycled<F>) -> usize {
        r.ptr.as_ptr() as usize
    }

    #[tokio::test]
    async fn a_dropped_future_leaves_its_allocation_for_the_next() {
        let drops = Arc::new(AtomicUsize::new(0));
        let first = Recycled::new(|| counted_future(&drops, 1));
        let at = address(&first);
        assert_eq!(first.await, 1);
        assert_eq!(
            drops.load(Relaxed),
            1,
            "the finished future was dropped once"
        );
        let second = Recycled::new(|| counted_future(&drops, 2));
        assert_eq!(address(&second), at, "the freed allocation was reused");
        // Dropped before it finished: its state (the guard) is dropped too.
        drop(second);
        assert_eq!(drops.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn futures_in_flight_at_once_each_get_their_own_allocation() {
        let drops = Arc::new(AtomicUsize::new(0));
        let futures: Vec<_> = (0..KEPT as u32 + 8)
            .map(|i| Recycled::new(|| counted_future(&drops, i)))
            .collect();
        let mut addresses: Vec<usize> = futures.iter().map(address).collect();
        addresses.sort_unstable();
        addresses.dedup();
        assert_eq!(addresses.len(), futures.len());
        let outputs = futures_util::future::join_all(futures).await;
        assert_eq!(outputs, (0..KEPT as u32 + 8).collect::<Vec<_>>());
        assert_eq!(drops.load(Relaxed), KEPT + 8);
        // The stack kept KEPT of them; the rest went back to the allocator.
        assert_eq!(kept(), KEPT);
    }

    #[tokio::test]
    async fn another_layout_bypasses_the_stack() {
        let drops = Arc::new(AtomicUsize::new(0));
        drop(Recycled::new(|| counted_future(&drops, 1)));
        assert_eq!(kept(), 1);
        let small = Recycled::new(|| async { 5u8 });
        assert_eq!(small.await, 5);
        // Zero-size: nothing allocated, nothing given back.
        drop(Recycled::new(std::future::pending::<()>));
        assert_eq!(drops.load(Relaxed), 1);
        // Neither went on the stack, which still holds only the first layout's allocation.
        assert_eq!(kept(), 1);
        let again = Recycled::new(|| counted_future(&drops, 2));
        assert_eq!(kept(), 0, "the first layout's allocation was taken again");
        assert_eq!(again.await, 2);
    }

    /// How many freed allocations this thread's stack holds.
    fn kept() -> usize {
        STACK.with(|s| s.borrow().free.len())
    }
}
