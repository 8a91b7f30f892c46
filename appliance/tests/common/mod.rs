//! Shared by the appliance's integration tests: the HTTP server of an already started
//! appliance, run on `127.0.0.1:0` in a thread of its own until it is halted or dropped.

use hexa_appliance::http::AppState;
use std::net::SocketAddr;
use std::sync::Arc;

/// A running `http::run` on a loopback port.
pub struct Listening {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listening {
    /// Serves `state` on a fresh loopback port. The runtime is multi-threaded, as in
    /// `hexa serve`.
    pub fn serve(state: Arc<AppState>) -> Listening {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (atx, arx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                atx.send(l.local_addr().unwrap()).unwrap();
                hexa_appliance::http::run(l, state, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = arx.recv().unwrap();
        Listening {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops the server and waits for it (idempotent).
    pub fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.halt();
    }
}
