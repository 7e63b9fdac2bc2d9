//! Gateway core: transparent pass-through, HTTP/2, TLS, failure paths, graceful shutdown.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use support::*;

#[tokio::test]
async fn every_method_passes_through_byte_identical() {
    let (_emu, gw) = stack().await;
    let c = client();
    let body = Bytes::from_static(b"{\"weird\" :  [1,2 ,3], \"\\u00e9\":\"\xc3\xa9\"}\n\x00tail");
    for m in [
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::GET,
    ] {
        let a = send(
            &c,
            m.clone(),
            &gw.url("/__test/echo?x=1&y=%2F"),
            &[
                ("content-type", "application/octet-stream"),
                ("x-custom", "v1"),
            ],
            body.clone(),
        )
        .await;
        assert_eq!(a.status, 200, "{m}");
        assert_eq!(a.body, body, "{m}: body changed");
        assert_eq!(a.headers["x-echo-method"], m.as_str());
        assert_eq!(a.headers["x-custom-answer"], "kept");
        assert_eq!(a.headers["content-type"], "application/octet-stream");
        let seen: serde_json::Value =
            serde_json::from_str(a.headers["x-echo-headers"].to_str().unwrap()).unwrap();
        assert_eq!(seen["x-custom"], "v1");
        assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen["x-forwarded-proto"], "http");
        assert!(seen["x-forwarded-host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        assert!(seen.get("x-request-id").is_some());
    }
}

#[tokio::test]
async fn query_strings_arrive_unchanged() {
    let (emu, gw) = stack().await;
    get(&gw.url("/__test/echo?fields=owners,tags&q=a%20b&z=%2F")).await;
    let rec = emu.recorded();
    assert_eq!(
        rec.last().unwrap().path_and_query,
        "/__test/echo?fields=owners,tags&q=a%20b&z=%2F"
    );
}

#[tokio::test]
async fn head_passes_through_without_a_body() {
    let (_emu, gw) = stack().await;
    let a = send(
        &client(),
        Method::HEAD,
        &gw.url("/api/v1/system/version"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty());
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_cross() {
    let (emu, gw) = stack().await;
    send(
        &client(),
        Method::GET,
        &gw.url("/api/v1/system/version"),
        &[
            ("connection", "x-secret-hop"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("x-request-id", "req-42"),
        ],
        Bytes::new(),
    )
    .await;
    let r = emu.recorded().pop().unwrap();
    assert!(r.headers.get("x-secret-hop").is_none());
    assert!(r.headers.get("proxy-authorization").is_none());
    assert!(r.headers.get("te").is_none());
    assert_eq!(r.headers["x-request-id"], "req-42");
}

#[tokio::test]
async fn a_request_id_is_added_and_returned() {
    let (emu, gw) = stack().await;
    let a = get(&gw.url("/api/v1/system/version")).await;
    let id = a.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(id.len() >= 16);
    assert_eq!(
        emu.recorded().pop().unwrap().headers["x-request-id"],
        id.as_str()
    );
}

#[tokio::test]
async fn a_100_mb_body_streams_through_both_ways() {
    let (_emu, gw) = stack().await;
    const N: usize = 100 * 1024 * 1024;
    // Download.
    let resp = client()
        .request(
            http::Request::get(gw.url(&format!("/__test/stream?bytes={N}")))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            for (i, b) in d.iter().enumerate() {
                assert_eq!(*b, emulator::pattern_byte(seen + i));
            }
            seen += d.len();
        }
    }
    assert_eq!(seen, N);

    // Upload, streamed by a client body of 1 MiB chunks.
    let chunks = (0..100).map(|c| {
        let data: Vec<u8> = (c * 1_048_576..(c + 1) * 1_048_576)
            .map(emulator::pattern_byte)
            .collect();
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(data)))
    });
    let stream_body = http_body_util::StreamBody::new(emulator::futures_core_like::iter(chunks));
    let up: hyper_util::client::legacy::Client<_, http_body_util::StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let resp = up
        .request(
            http::Request::post(gw.url("/__test/upload"))
                .body(stream_body)
                .unwrap(),
        )
        .await
        .unwrap();
    let a = collect(resp).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["bytes"], N as u64);
    // The same FNV-1a over the pattern, computed here.
    let mut h: u64 = 0xcbf29ce484222325;
    for i in 0..N {
        h = (h ^ emulator::pattern_byte(i) as u64).wrapping_mul(0x100000001b3);
    }
    assert_eq!(v["fnv"], format!("{h:016x}"));
}

#[tokio::test]
async fn http2_clients_are_served_on_the_plain_port() {
    let (emu, gw) = stack().await;
    let a = send(
        &h2_client(),
        Method::POST,
        &gw.url("/__test/echo"),
        &[("x-h2", "yes")],
        "h2 body",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.version, http::Version::HTTP_2);
    assert_eq!(a.body, "h2 body");
    // The upstream still gets HTTP/1.1.
    assert_eq!(
        emu.recorded().pop().unwrap().version,
        http::Version::HTTP_11
    );
}

#[tokio::test]
async fn unreachable_upstream_is_a_json_502() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = start_gateway(config_for(&format!("http://127.0.0.1:{port}"))).await;
    let a = get(&gw.url("/api/v1/system/version")).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.headers["content-type"], "application/json");
    let v = a.json();
    assert_eq!(v["code"], 502);
    assert!(v["message"].as_str().unwrap().contains("unreachable"));
}

#[tokio::test]
async fn slow_upstream_is_a_json_504() {
    let emu = Emulator::start().await;
    let mut cfg = config_for(&emu.url());
    cfg.upstream.timeout = Duration::from_millis(200);
    let gw = start_gateway(cfg).await;
    let a = get(&gw.url("/__test/slow?ms=3000")).await;
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["code"], 504);
}

#[tokio::test]
async fn an_unsafe_path_is_refused_and_not_forwarded() {
    let (emu, gw) = stack().await;
    for p in [
        "/api/v1/services/%2e%2e/users",
        "/api/v1/x%00y",
        "/api/v1/%zz",
    ] {
        let a = get(&gw.url(p)).await;
        assert_eq!(a.status, 400, "{p}");
        assert_eq!(a.json()["code"], 400);
    }
    assert!(emu.recorded().is_empty());
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let (_emu, mut gw) = stack().await;
    let url = gw.url("/__test/slow?ms=700");
    let inflight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.shutdown();
    let a = inflight.await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["slept_ms"], 700);
    tokio::time::timeout(Duration::from_secs(5), gw.done.take().unwrap())
        .await
        .expect("gateway stopped after draining")
        .unwrap();
    // The port no longer accepts.
    assert!(tokio::net::TcpStream::connect(gw.api).await.is_err());
}

#[tokio::test]
async fn admin_port_answers_health_readiness_and_metrics() {
    let (_emu, gw) = stack().await;
    assert_eq!(get(&gw.admin_url("/healthz")).await.status, 200);
    assert_eq!(get(&gw.admin_url("/readyz")).await.status, 200);
    get(&gw.url("/api/v1/system/version")).await;
    let m = get(&gw.admin_url("/metrics")).await.text();
    assert!(
        m.contains("omsp_requests_total{route_class=\"passthrough\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(m.contains("omsp_request_duration_seconds_count 1"));
    assert!(m.contains("omsp_open_connections"));
}

#[tokio::test]
async fn readyz_fails_when_the_upstream_is_down() {
    let gw = start_gateway(config_for("http://127.0.0.1:1")).await;
    let a = get(&gw.admin_url("/readyz")).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["upstream"], "unreachable");
}
