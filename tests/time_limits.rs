//! Time limits both ways (issue 12): a client that sends its body too slowly is cut off with
//! 408 and its connection closed; an upstream whose body stalls is cut off (504 when the
//! gateway reads the answer, a broken-off body when it streams it) and its connection
//! reclaimed. Small limits, so the tests take about a second.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use support::emulator::Canned;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_millis(300);

async fn limited() -> (Emulator, Gw) {
    let emu = Emulator::start().await;
    emu.set_jwks(jwt::jwks());
    let mut cfg = config_for(&emu.url());
    cfg.server.body_timeout = LIMIT;
    cfg.upstream.body_timeout = LIMIT;
    let gw = start_gateway(cfg).await;
    (emu, gw)
}

fn metric(text: &str, name: &str) -> i64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing"))
}

/// Opens a connection, sends headers announcing 1,000 bytes and only the first few, then
/// reads whatever comes back until the gateway closes the connection.
async fn trickle(api: std::net::SocketAddr, path: &str) -> (String, Duration) {
    let mut s = TcpStream::connect(api).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\""
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the gateway kept a slow client's connection open"
    );
    (String::from_utf8_lossy(&out).to_string(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_get_408_and_their_connections_are_closed() {
    let (_emu, gw) = limited().await;
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..100 {
        // Half on a ruled route (read whole), half on an unruled one (streamed upstream).
        let path = if i % 2 == 0 {
            "/api/v1/services/databaseServices"
        } else {
            "/api/v1/tables"
        };
        let gw_api = gw.api;
        clients.push(tokio::spawn(async move { trickle(gw_api, path).await }));
    }
    for c in clients {
        let (answer, took) = c.await.expect("client");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":408"), "{answer}");
        assert!(took >= LIMIT - Duration::from_millis(50), "{took:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "100 slow bodies were all cut off within the limit"
    );
    // Every connection is closed on the gateway's side too.
    let mut open = -1;
    for _ in 0..50 {
        open = metric(
            &get(&gw.admin_url("/metrics")).await.text(),
            "omsp_open_connections",
        );
        if open <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(open <= 1, "{open} connections still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_in_time_is_not_cut_off() {
    let (_emu, gw) = limited().await;
    let body = serde_json::json!({"name": "in-time", "serviceType": "Mysql"}).to_string();
    let a = send(
        &client(),
        Method::POST,
        &gw.url("/api/v1/services/databaseServices"),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruled_read_whose_upstream_body_stalls_is_a_504_and_the_upstream_connection_is_dropped() {
    let (emu, gw) = limited().await;
    let path = "/api/v1/services/databaseServices/name/stalls";
    emu.set_canned(
        path,
        Canned {
            stall: true,
            ..Canned::json("{\"name\":\"stalls\",\"connection\":{\"config\":{\"password\":\"")
        },
    );
    let started = Instant::now();
    let a = tokio::time::timeout(Duration::from_secs(5), async {
        send(&client(), Method::GET, &gw.url(path), &[], Bytes::new()).await
    })
    .await
    .expect("the ruled read does not hang");
    assert_eq!(a.status, 504, "{}", a.text());
    assert_eq!(a.json()["code"], 504);
    assert!(started.elapsed() >= LIMIT - Duration::from_millis(50));
    for _ in 0..50 {
        if emu.stalls_dropped() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        emu.stalls_dropped(),
        1,
        "the stalled upstream connection was reclaimed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unruled_answer_that_stalls_is_cut_off_whether_read_or_streamed() {
    let (emu, gw) = limited().await;
    // A user's JSON answer is read for the safety net: 504.
    emu.set_canned(
        "/api/v1/tables/read",
        Canned {
            stall: true,
            ..Canned::json("{\"data\":[")
        },
    );
    let a = tokio::time::timeout(Duration::from_secs(5), async {
        send(
            &client(),
            Method::GET,
            &gw.url("/api/v1/tables/read"),
            &[],
            Bytes::new(),
        )
        .await
    })
    .await
    .expect("no hang");
    assert_eq!(a.status, 504, "{}", a.text());
    // A streamed answer has already started: its body breaks off after the idle limit.
    emu.set_canned(
        "/api/v1/tables/stream",
        Canned {
            stall: true,
            ..Canned::json("first bytes").header("content-type", "application/octet-stream")
        },
    );
    let req = http::Request::builder()
        .uri(gw.url("/api/v1/tables/stream"))
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let resp = client().request(req).await.expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .expect("the streamed body does not hang");
    assert!(
        body.is_err(),
        "a stalled stream is broken off, not ended as if complete"
    );
    assert!(started.elapsed() >= LIMIT - Duration::from_millis(100));
    for _ in 0..50 {
        if emu.stalls_dropped() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        emu.stalls_dropped(),
        2,
        "both stalled upstream connections were reclaimed"
    );
}

#[test]
fn the_time_limits_are_configurable_and_must_be_positive() {
    let cfg = om_secrets_proxy::config::Config::from_toml_str(
        "[server]\nbody_timeout_ms = 1500\n[upstream]\nbody_timeout_ms = 2500\n",
        None,
        &|_| None,
    )
    .expect("config");
    assert_eq!(cfg.server.body_timeout, Duration::from_millis(1500));
    assert_eq!(cfg.upstream.body_timeout, Duration::from_millis(2500));
    let defaults =
        om_secrets_proxy::config::Config::from_toml_str("", None, &|_| None).expect("defaults");
    assert_eq!(defaults.server.body_timeout, Duration::from_secs(30));
    assert_eq!(defaults.upstream.body_timeout, Duration::from_secs(30));
    let Err(err) = om_secrets_proxy::config::Config::from_toml_str(
        "[server]\nbody_timeout_ms = 0\n",
        None,
        &|_| None,
    ) else {
        panic!("a zero time limit was accepted");
    };
    let err = err.to_string();
    assert!(err.contains("server.body_timeout_ms"), "{err}");
}
