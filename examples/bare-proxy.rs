//! The floor of the gateway's HTTP stack, for `bench/proxy.sh`: hyper's server and pooled
//! client with nothing in between (no path checks, identity, rules, headers or metrics).
//! `cargo run --release --example bare-proxy -- LISTEN_ADDR UPSTREAM_URL`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare-proxy LISTEN_ADDR UPSTREAM_URL");
        std::process::exit(2);
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .expect("bind the listen address");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move {
                    let (mut parts, body) = req.into_parts();
                    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    let answer = match format!("{upstream}{pq}").parse() {
                        Ok(uri) => {
                            parts.uri = uri;
                            let req = http::Request::from_parts(parts, body.boxed_unsync());
                            client.request(req).await.ok()
                        }
                        Err(_) => None,
                    };
                    Ok::<_, Infallible>(match answer {
                        Some(r) => r.map(|b| b.boxed_unsync()),
                        None => {
                            let mut r = http::Response::new(
                                Empty::<Bytes>::new()
                                    .map_err(|never| match never {})
                                    .boxed_unsync(),
                            );
                            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                            r
                        }
                    })
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
