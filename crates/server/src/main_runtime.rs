//! Requests run inside the main runtime's context, whichever worker serves them.
//!
//! The HTTPS servers (actix-web) and the MQTT endpoint (ntex) serve connections on worker threads, each running a
//! Tokio runtime of its own. Whatever Tokio resource a future creates belongs to the runtime whose context is current
//! at that moment: a database connection's socket, an outbound HTTP connection, a timer, a spawned task. Pools share
//! such resources between requests, so one opened while serving a request on one worker is later used by the others.
//!
//! During a graceful stop each worker stops, and its runtime ends, as soon as its own connections are done, while
//! other workers are still draining theirs. A pooled PostgreSQL connection that the stopped worker had opened then
//! fails in whichever request takes it next ("A Tokio 1.x context was found, but it is being shutdown"), and that
//! request is answered 500.
//!
//! [`OnMainRuntime`] polls a request's future inside the context of the runtime that started the service, which
//! outlives every worker. The future still runs on its worker's thread (nothing moves between threads, and the
//! connection it answers on stays the worker's); only what it creates belongs to the main runtime. Code that needs
//! its worker's own runtime (`spawn_local`, ntex's and actix's `spawn`) must run outside it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;

pin_project_lite::pin_project! {
    /// `future`, polled inside `runtime`'s context.
    #[derive(Debug)]
    pub struct OnMainRuntime<F> {
        runtime: Handle,
        #[pin]
        future: F,
    }
}

impl<F: Future> OnMainRuntime<F> {
    /// Wraps `future`; `runtime` is the handle of the runtime that outlives every worker.
    pub fn new(runtime: Handle, future: F) -> Self {
        Self { runtime, future }
    }
}

impl<F: Future> Future for OnMainRuntime<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.runtime.enter();
        this.future.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A socket opened by a future on a worker's runtime keeps working after that runtime is gone, when the future
    /// ran on the main runtime's context; without it, the socket dies with the worker.
    #[test]
    fn what_a_wrapped_future_opens_outlives_its_worker() {
        let main = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = main.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        main.spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut reader, mut writer) = socket.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        let on_worker = |wrapped: bool| {
            let handle = main.handle().clone();
            std::thread::spawn(move || {
                let worker = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let connect = tokio::net::TcpStream::connect(address);
                let stream = if wrapped {
                    worker.block_on(OnMainRuntime::new(handle, connect))
                } else {
                    worker.block_on(connect)
                };
                stream.unwrap()
                // The worker's runtime ends here.
            })
            .join()
            .unwrap()
        };
        let echo = |mut stream: tokio::net::TcpStream| {
            main.block_on(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                stream.write_all(b"ping").await?;
                let mut answer = [0; 4];
                stream.read_exact(&mut answer).await?;
                Ok::<_, std::io::Error>(answer)
            })
        };
        assert_eq!(&echo(on_worker(true)).unwrap(), b"ping");
        let error = echo(on_worker(false)).unwrap_err();
        assert!(error.to_string().contains("being shutdown"), "{error}");
    }
}
