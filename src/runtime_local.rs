//! Values kept once per thread and Tokio runtime: connections driven where they are used.
//!
//! A connection to Redis or Postgres is driven by a task on the runtime that made it. Shared
//! by the HTTP workers (each a single-threaded runtime), every command from a worker other
//! than the driver's crosses threads twice: a wake-up of the driver's thread and one of the
//! requester's (an eventfd or futex write each, and a context switch when the other thread
//! sleeps). Made per worker, a connection is driven on the thread that sends its commands,
//! and what that thread sends in one turn of its event loop still goes out in one write.
//!
//! Keyed by runtime as well as thread: a value's driver dies with the runtime it was spawned
//! on, and a thread may run several runtimes one after the other (tests do).

use std::any::Any;
use std::cell::RefCell;
use std::sync::{Arc, Weak};

/// Asked for a value outside any Tokio runtime: there is nothing to drive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("used outside a Tokio runtime")]
pub struct NoRuntime;

/// One `T` per thread and runtime it is asked for on, for one owner (a cache, a store).
pub struct PerRuntime<T> {
    /// Identifies the owner in each thread's table; the entries of dropped owners are not
    /// used again, and go when that thread next makes a value.
    owner: Arc<()>,
    _values: std::marker::PhantomData<fn() -> T>,
}

struct Slot {
    owner: Weak<()>,
    runtime: tokio::runtime::Id,
    value: Box<dyn Any>,
}

thread_local! {
    /// Usually one entry per owner (one responder per process); tests make several.
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

impl<T: Clone + 'static> PerRuntime<T> {
    pub fn new() -> Self {
        PerRuntime { owner: Arc::new(()), _values: std::marker::PhantomData }
    }

    /// This thread's value for the current runtime, made by `make` on first use (on this
    /// thread and runtime, so that what `make` spawns runs here).
    pub fn get<E: From<NoRuntime>>(&self, make: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?.id();
        let mine = |slot: &Slot| slot.runtime == runtime && std::ptr::eq(slot.owner.as_ptr(), Arc::as_ptr(&self.owner));
        let found = SLOTS
            .with(|slots| slots.borrow().iter().find(|s| mine(s)).and_then(|s| s.value.downcast_ref::<T>().cloned()));
        if let Some(value) = found {
            return Ok(value);
        }
        // Made outside the table's borrow: `make` may itself use a `PerRuntime`.
        let value = make()?;
        SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            // Values of dropped owners or of other runtimes are not used again here.
            slots.retain(|s| s.runtime == runtime && s.owner.strong_count() > 0);
            slots.push(Slot { owner: Arc::downgrade(&self.owner), runtime, value: Box::new(value.clone()) });
        });
        Ok(value)
    }
}

impl<T: Clone + 'static> Default for PerRuntime<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counted(made: &AtomicUsize) -> Result<usize, NoRuntime> {
        Ok(made.fetch_add(1, Ordering::SeqCst))
    }

    #[test]
    fn one_value_per_runtime_and_owner() {
        let (a, b) = (PerRuntime::<usize>::new(), PerRuntime::<usize>::new());
        let made = AtomicUsize::new(0);
        let first = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (a1, a1_again, b1) = first.block_on(async {
            (a.get(|| counted(&made)).unwrap(), a.get(|| counted(&made)).unwrap(), b.get(|| counted(&made)).unwrap())
        });
        assert_eq!((a1, a1_again, b1), (0, 0, 1), "kept per owner on one runtime");
        // Another runtime on the same thread gets values of its own.
        let second = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(second.block_on(async { a.get(|| counted(&made)).unwrap() }), 2);
        // And another thread too.
        let other = std::thread::scope(|s| {
            s.spawn(|| first.block_on(async { a.get(|| counted(&made)).unwrap() })).join().unwrap()
        });
        assert_eq!(other, 3);
    }

    #[test]
    fn outside_a_runtime_there_is_no_value() {
        let values = PerRuntime::<usize>::new();
        assert_eq!(values.get(|| Ok::<_, NoRuntime>(1)), Err(NoRuntime));
    }
}
