//! The listeners: the API port (HTTP/1.1 and HTTP/2, auto-detected on plain TCP, by ALPN
//! under TLS) and the admin port, with graceful shutdown that drains in-flight requests
//! within a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admin::Admin;
use crate::proxy::{ConnInfo, Gateway};

/// How long a client may take to finish a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn http_builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// Serves the API port until `shutdown` resolves, then drains connections for at most `grace`.
pub(crate) async fn serve_api(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
    header_read_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(http_builder(header_read_timeout));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            remote,
            https: tls.is_some(),
        };
        let conn = Connection {
            builder: builder.clone(),
            gateway: gateway.clone(),
            watcher: graceful.watcher(),
        };
        match &tls {
            None => conn.serve(stream, info),
            Some(acceptor) => conn.serve_tls(acceptor.clone(), stream, info),
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!("drain deadline passed; closing remaining connections"),
    }
}

/// What one accepted API connection needs: the protocol builder, the gateway, and the
/// shutdown watcher that lets the drain wait for it.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    gateway: Arc<Gateway>,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Connection {
    /// Serves a plain TCP connection on a task of its own.
    fn serve(self, stream: tokio::net::TcpStream, info: ConnInfo) {
        tokio::spawn(self.run(TokioIo::new(stream), info));
    }

    /// Completes the TLS handshake (within `TLS_HANDSHAKE_TIMEOUT`), then serves the connection.
    fn serve_tls(self, acceptor: TlsAcceptor, stream: tokio::net::TcpStream, info: ConnInfo) {
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(s)) => self.run(TokioIo::new(s), info).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => {}
            }
        });
    }

    /// Serves HTTP/1.1 or HTTP/2 on `io` until the client leaves or the drain ends it.
    async fn run<I>(self, io: TokioIo<I>, info: ConnInfo)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let gateway = self.gateway;
        let metrics = gateway.metrics.clone();
        let svc = service_fn(move |req| {
            let gw = gateway.clone();
            async move { Ok::<_, Infallible>(gw.handle(req, info).await) }
        });
        let conn = self.builder.serve_connection(io, svc).into_owned();
        metrics.open_connections.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        metrics.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves the admin port (plain HTTP/1.1) until `shutdown` resolves.
pub(crate) async fn serve_admin(
    listener: TcpListener,
    admin: Arc<Admin>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = &mut shutdown => return,
        };
        let admin = admin.clone();
        let svc = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.handle(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
