//! The client for a plain-HTTP upstream: hyper's HTTP/1.1 `client::conn` over pooled
//! keep-alive connections, without hyper-util's general-purpose pool.
//!
//! Why not hyper-util's legacy client here: for one fixed upstream it still hashes a pool key,
//! clones and drops its connector, and spawns a task per request to wait until the
//! connection is idle again; together about a fifth of a pass-through request's instructions.
//! This pool keeps idle connections in a few shards, one per thread in practice (a thread
//! takes from its own shard first, so a connection's I/O task and its requests stay on one
//! thread), hands a connection back as soon as the answer's head has arrived and skips
//! connections that are still reading a previous body. A request the connection never wrote
//! (it closed while idle, or was still busy) is retried on another connection, as the legacy
//! client does. HTTPS upstreams keep the legacy client (TLS and HTTP/2 by ALPN).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::Body;

/// Shards of idle connections; a thread maps to one by a number given at its first request.
const SHARDS: usize = 16;
/// A connection idle for longer than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Fresh connections tried for one request before giving up.
const FRESH_ATTEMPTS: usize = 2;

/// Why an upstream request failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened.
    Connect(std::io::Error),
    /// The connection failed while sending or before the answer's head arrived.
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
        }
    }
}

struct Idle {
    conn: SendRequest<Body>,
    since: Instant,
}

#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<Vec<Idle>>);

pub(crate) struct Http1Pool {
    /// `host:port` to connect to.
    target: String,
    connect_timeout: Duration,
    max_idle: usize,
    shards: Box<[Shard]>,
}

fn shard_index() -> usize {
    crate::metrics::thread_slot() % SHARDS
}

impl Http1Pool {
    pub(crate) fn new(target: String, connect_timeout: Duration, max_idle: usize) -> Http1Pool {
        Http1Pool {
            target,
            connect_timeout,
            max_idle: max_idle.max(1),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) and returns the answer once its head arrived.
    pub(crate) async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let home = shard_index();
        // Pooled connections first; each is tried at most once.
        while let Some(mut conn) = self.checkout(home) {
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(home, conn);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        let mut last = None;
        for _ in 0..FRESH_ATTEMPTS {
            let mut conn = self.connect().await?;
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(home, conn);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        req = unsent;
                        last = Some(e.into_error());
                    }
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        Err(match last {
            Some(e) => SendError::Http(e),
            None => SendError::Connect(std::io::Error::other("no connection")),
        })
    }

    /// An idle connection ready for a request: the thread's own shard first, then the others.
    fn checkout(&self, home: usize) -> Option<SendRequest<Body>> {
        for i in 0..SHARDS {
            let shard = &self.shards[(home + i) % SHARDS];
            let mut idle = match shard.0.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if idle.is_empty() {
                continue;
            }
            let now = Instant::now();
            // Newest first: the one most likely still open and warm.
            let mut j = idle.len();
            while j > 0 {
                j -= 1;
                let entry = &idle[j];
                if entry.conn.is_closed() || now.duration_since(entry.since) > IDLE_TIMEOUT {
                    idle.swap_remove(j);
                } else if entry.conn.is_ready() {
                    return Some(idle.swap_remove(j).conn);
                }
            }
        }
        None
    }

    /// Hands a connection back. It may still be reading the answer's body; `checkout`
    /// skips it until it is idle.
    fn checkin(&self, home: usize, conn: SendRequest<Body>) {
        let mut idle = match self.shards[home].0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if idle.len() >= self.max_idle {
            // The oldest goes (closing it); the pool keeps what recent load needed.
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| {
                SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })??;
        let (conn, driver) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(conn)
    }

    /// A TCP connection to the first address of the target that accepts one.
    async fn open(&self) -> Result<TcpStream, SendError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(self.target.as_str())
            .await
            .map_err(SendError::Connect)?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
                    let _ = socket2::SockRef::from(&s).set_tcp_keepalive(&keepalive);
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(SendError::Connect(last))
    }
}
