//! The slot through which the group-commit writer hands a member its result.
//!
//! The writer completes it after the member's commit. The waiting side either awaits it (an
//! async task), or leaves a callback that the writer runs when it completes. The callback
//! form lets a registry thread forward the result of a request straight to its caller
//! (`registry`), so the caller's executor is woken once per request, by the writer. Before,
//! the registry's reply woke it a first time. Callbacks run on the writer thread, so they
//! must be short and must never submit to the writer.
//!
//! A sender dropped without sending (a writer that stopped) completes the slot with `None`.
//! A callback that panics is caught and logged, on whichever thread runs it; its caller
//! gets no answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// A callback left for the value.
type Callback<T> = Box<dyn FnOnce(Option<T>) + Send>;

enum State<T> {
    /// Nobody waits yet, and no value is there.
    Empty,
    /// A task waits for the value.
    Waiting(Waker),
    /// The value arrived before anyone took it (`None`: the sender was dropped).
    Ready(Option<T>),
    /// A callback waits for the value.
    Call(Callback<T>),
    /// The value was handed over.
    Taken,
}

struct Slot<T> {
    state: Mutex<State<T>>,
}

impl<T> Slot<T> {
    /// The state, locked (a poisoned lock still holds a consistent state: every change
    /// is one assignment).
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn complete(&self, v: Option<T>) {
        let mut g = self.lock();
        match std::mem::replace(&mut *g, State::Taken) {
            State::Call(f) => {
                drop(g);
                run(f, v);
            }
            State::Waiting(w) => {
                *g = State::Ready(v);
                drop(g);
                w.wake();
            }
            State::Empty => *g = State::Ready(v),
            // Completed twice cannot happen (the sender is consumed); keep the first.
            done @ (State::Ready(_) | State::Taken) => *g = done,
        }
    }
}

/// Runs a callback. One that panics must not take the writer thread (or the registry
/// thread that left it, when the value was already there) down with it: its caller loses
/// its answer (the reply sender is dropped while unwinding, which it sees as
/// `Unavailable`), and everything else goes on.
fn run<T>(f: impl FnOnce(Option<T>), v: Option<T>) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(v))).is_err() {
        tracing::error!("a commit callback panicked; its caller gets no answer");
    }
}

/// The writer's end.
pub(crate) struct AckSender<T> {
    slot: Option<Arc<Slot<T>>>,
}

/// The waiting end.
pub(crate) struct AckReceiver<T> {
    slot: Arc<Slot<T>>,
}

/// A new, empty slot.
pub(crate) fn channel<T>() -> (AckSender<T>, AckReceiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Empty),
    });
    (
        AckSender {
            slot: Some(slot.clone()),
        },
        AckReceiver { slot },
    )
}

impl<T> AckSender<T> {
    /// Hands `v` to the waiting task or callback (or keeps it until one comes).
    pub(crate) fn send(mut self, v: T) {
        if let Some(slot) = self.slot.take() {
            slot.complete(Some(v));
        }
    }
}

impl<T> Drop for AckSender<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.complete(None);
        }
    }
}

impl<T> AckReceiver<T> {
    /// Runs `f` with the value once it arrives: on this thread now if it is already there,
    /// else on the sender's thread when it sends (or drops).
    pub(crate) fn then(self, f: impl FnOnce(Option<T>) + Send + 'static) {
        // One lock from look to leave: a send in between would find no one to hand to.
        let mut g = self.slot.lock();
        match std::mem::replace(&mut *g, State::Taken) {
            State::Ready(v) => {
                drop(g);
                run(f, v);
            }
            State::Empty | State::Waiting(_) => *g = State::Call(Box::new(f)),
            // Already handed over (a receiver polled to completion is consumed by `.await`).
            State::Call(_) | State::Taken => {
                drop(g);
                run(f, None);
            }
        }
    }

    /// Blocks the thread until the value arrives. Not for async executors.
    pub(crate) fn recv_blocking(self) -> Option<T>
    where
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.then(move |v| {
            let _ = tx.send(v);
        });
        rx.recv().ok().flatten()
    }
}

impl<T> Future for AckReceiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut g = self.slot.lock();
        match std::mem::replace(&mut *g, State::Taken) {
            State::Ready(v) => Poll::Ready(v),
            State::Empty | State::Waiting(_) => {
                *g = State::Waiting(cx.waker().clone());
                Poll::Pending
            }
            // `then` consumes the receiver, so a callback cannot be waiting here.
            State::Call(_) | State::Taken => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn an_awaiting_task_gets_the_value_sent_later_or_before() {
        let (tx, rx) = channel();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send(7u32);
        });
        assert_eq!(rx.await, Some(7));
        t.join().unwrap();
        let (tx, rx) = channel();
        tx.send(8u32);
        assert_eq!(rx.await, Some(8));
    }

    #[test]
    fn a_callback_runs_once_with_the_value_whenever_it_comes() {
        let runs = Arc::new(AtomicUsize::new(0));
        // Left before the value: runs on the sender's thread, at the send.
        let (tx, rx) = channel();
        let (r, seen) = (runs.clone(), Arc::new(Mutex::new(None)));
        let s = seen.clone();
        rx.then(move |v| {
            r.fetch_add(1, Ordering::SeqCst);
            *s.lock().unwrap() = Some((v, std::thread::current().id()));
        });
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        let sender = std::thread::spawn(move || {
            tx.send("a");
            std::thread::current().id()
        })
        .join()
        .unwrap();
        assert_eq!(*seen.lock().unwrap(), Some((Some("a"), sender)));
        // Left after the value: runs at once, here.
        let (tx, rx) = channel();
        tx.send("b");
        let r = runs.clone();
        rx.then(move |v| {
            assert_eq!(v, Some("b"));
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_dropped_sender_completes_with_none() {
        let (tx, rx) = channel::<u8>();
        drop(tx);
        assert_eq!(rx.await, None);
        let (tx, rx) = channel::<u8>();
        let got = Arc::new(Mutex::new(Some(1)));
        let g = got.clone();
        rx.then(move |v| *g.lock().unwrap() = v);
        drop(tx);
        assert_eq!(*got.lock().unwrap(), None);
        let (tx, rx) = channel::<u8>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(tx);
        });
        assert_eq!(rx.recv_blocking(), None);
        t.join().unwrap();
    }

    #[test]
    fn recv_blocking_waits_for_the_value() {
        let (tx, rx) = channel();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send(vec![1, 2, 3]);
        });
        assert_eq!(rx.recv_blocking(), Some(vec![1, 2, 3]));
        t.join().unwrap();
    }

    #[test]
    fn a_panicking_callback_does_not_unwind_into_the_sender() {
        let (tx, rx) = channel::<u8>();
        rx.then(|_| panic!("callback bug"));
        tx.send(1); // must return normally
        // Nor into the thread that leaves it when the value is already there.
        let (tx, rx) = channel::<u8>();
        tx.send(2);
        rx.then(|_| panic!("callback bug"));
        let (tx, rx) = channel::<u8>();
        let (dropped_tx, dropped) = std::sync::mpsc::channel::<()>();
        rx.then(move |_| {
            let _keep = dropped_tx;
            panic!("callback bug");
        });
        drop(tx);
        // The callback's captures were dropped while unwinding.
        assert!(dropped.recv().is_err());
    }

    /// Many senders racing many receivers (awaiting and callback): every value arrives once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_senders_and_receivers_lose_nothing() {
        let delivered = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..2000usize {
            let (tx, rx) = channel();
            std::thread::spawn(move || tx.send(i));
            if i % 2 == 0 {
                let d = delivered.clone();
                tasks.push(tokio::spawn(async move {
                    assert_eq!(rx.await, Some(i));
                    d.fetch_add(1, Ordering::SeqCst);
                }));
            } else {
                let d = delivered.clone();
                rx.then(move |v| {
                    assert_eq!(v, Some(i));
                    d.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        // The callbacks run on the sender threads; give the last ones a moment.
        for _ in 0..200 {
            if delivered.load(Ordering::SeqCst) == 2000 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(delivered.load(Ordering::SeqCst), 2000);
    }
}
