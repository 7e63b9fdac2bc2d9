//! Routes without rules, against a scripted raw-TCP upstream: the safety net reads answers
//! chunk by chunk (markers split across chunks, answers past the inspection limit), and the
//! plain-HTTP upstream pool reuses and replaces connections.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

/// How the scripted upstream answers every request.
#[derive(Clone)]
struct Script {
    content_type: &'static str,
    chunks: Vec<Vec<u8>>,
    /// Close the connection after each answer (without saying so).
    close_after: bool,
}

/// A raw HTTP/1.1 upstream: reads a request head, answers with the script's chunks
/// (chunked transfer encoding, each chunk flushed after a pause). Counts connections.
async fn upstream(script: Script) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut tmp = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    buf.clear();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ntransfer-encoding: chunked\r\n\r\n",
                        script.content_type
                    );
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for c in &script.chunks {
                        let mut out = format!("{:x}\r\n", c.len()).into_bytes();
                        out.extend_from_slice(c);
                        out.extend_from_slice(b"\r\n");
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                        let _ = s.flush().await;
                        tokio::time::sleep(Duration::from_millis(15)).await;
                    }
                    if s.write_all(b"0\r\n\r\n").await.is_err() || script.close_after {
                        return;
                    }
                }
            });
        }
    });
    (url, conns)
}

fn json_script(chunks: &[&[u8]]) -> Script {
    Script {
        content_type: "application/json",
        chunks: chunks.iter().map(|c| c.to_vec()).collect(),
        close_after: false,
    }
}

/// Everything the gateway sends back on one raw connection (until it closes or goes quiet).
async fn raw_get(gw: &Gw, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(gw.api).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&tmp[..n]),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const TABLE: &str = "/api/v1/tables/name/db.schema.t";

#[tokio::test]
async fn a_marker_split_across_upstream_chunks_is_still_masked() {
    let body = br#"{"name":"t","note":"ok","copied":"secret:/openmetadata/database/x/password"}"#;
    let at = body.windows(8).position(|w| w == b"\"secret:").unwrap();
    for split in [at + 1, at + 4, at + 7] {
        let (url, _) = upstream(json_script(&[&body[..split], &body[split..]])).await;
        let gw = start_gateway(config_for(&url)).await;
        let a = get(&gw.url(TABLE)).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json()["copied"], "*********", "split at {split}");
        assert!(!contains(&a.body, b"secret:"));
    }
}

#[tokio::test]
async fn a_clean_answer_in_many_chunks_arrives_byte_for_byte() {
    let parts: Vec<Vec<u8>> = (0..6)
        .map(|i| format!("{{\"part\":{i},\"pad\":\"{}\"}}", "x".repeat(300)).into_bytes())
        .collect();
    let mut whole = b"[".to_vec();
    let mut chunks: Vec<&[u8]> = vec![b"["];
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            chunks.push(b",");
            whole.push(b',');
        }
        chunks.push(p);
        whole.extend_from_slice(p);
    }
    chunks.push(b"]");
    whole.push(b']');
    let (url, _) = upstream(json_script(&chunks)).await;
    let gw = start_gateway(config_for(&url)).await;
    let a = get(&gw.url(TABLE)).await;
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], &whole[..]);
}

#[tokio::test]
async fn an_answer_past_the_inspection_limit_without_markers_streams_through() {
    let chunk = format!("\"{}\",", "y".repeat(998)).into_bytes();
    let mut chunks: Vec<&[u8]> = vec![b"["];
    for _ in 0..5 {
        chunks.push(&chunk);
    }
    chunks.push(b"0]");
    let whole: Vec<u8> = chunks.concat();
    let (url, _) = upstream(json_script(&chunks)).await;
    let mut cfg = config_for(&url);
    cfg.server.max_body_bytes = 1024;
    let gw = start_gateway(cfg).await;
    let a = get(&gw.url(TABLE)).await;
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], &whole[..]);
}

#[tokio::test]
async fn a_marker_past_the_inspection_limit_cuts_the_answer_before_any_byte_of_it() {
    let clean = format!("\"{}\",", "z".repeat(998)).into_bytes();
    // The marker starts in one chunk and ends in the next, past the 1 KB limit.
    let chunks: Vec<&[u8]> = vec![b"[", &clean, &clean, b"\"secr", b"et:/openmetadata/x\"]"];
    let (url, _) = upstream(json_script(&chunks)).await;
    let mut cfg = config_for(&url);
    cfg.server.max_body_bytes = 1024;
    let gw = start_gateway(cfg).await;
    let raw = raw_get(&gw, TABLE).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(!contains(&raw, b"\"secr"), "a part of the marker went out");
    assert!(!contains(&raw, b"openmetadata/x"));
    // The answer is cut off: no terminating chunk.
    assert!(!raw.ends_with(b"0\r\n\r\n"));
}

#[tokio::test]
async fn a_gzip_answer_past_the_inspection_limit_is_a_502() {
    let script = Script {
        content_type: "application/json",
        chunks: vec![vec![b'x'; 2048]],
        close_after: false,
    };
    // Declared gzip (the gateway cannot scan it as it flows): refused, not streamed.
    let (url, _) = upstream(Script {
        content_type: "application/json\r\ncontent-encoding: gzip",
        ..script
    })
    .await;
    let mut cfg = config_for(&url);
    cfg.server.max_body_bytes = 1024;
    let gw = start_gateway(cfg).await;
    let a = get(&gw.url(TABLE)).await;
    assert_eq!(a.status, 502);
}

#[tokio::test]
async fn keep_alive_connections_to_the_upstream_are_reused() {
    let (url, conns) = upstream(json_script(&[br#"{"ok":true}"#])).await;
    let gw = start_gateway(config_for(&url)).await;
    // The start-up version probe may open a connection of its own first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = conns.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(get(&gw.url(TABLE)).await.status, 200);
    }
    assert!(
        conns.load(Ordering::SeqCst) - before <= 1,
        "20 requests, one connection"
    );
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced() {
    let (url, conns) = upstream(Script {
        close_after: true,
        ..json_script(&[br#"{"ok":true}"#])
    })
    .await;
    let gw = start_gateway(config_for(&url)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = conns.load(Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(get(&gw.url(TABLE)).await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(conns.load(Ordering::SeqCst) - before, 3);
}
