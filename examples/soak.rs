//! The soak driver of `bench/soak.sh`: one gateway process (the binary given) with OpenBao in
//! front of the emulator (in this process, recording everything it receives), N mixed
//! requests over C connections, one request at a time on each:
//!
//! | share | request | checked |
//! |---|---|---|
//! | 20% | bot read of one of the worker's own services | exactly the password it last wrote |
//! | 10% | bot read of a service seeded at the start | exactly the seeded password |
//! | 10% | user read of a seeded service | masked |
//! | 5% / 5% | bot / user list of 10 services | seeded ones exact / masked |
//! | 10% | create of a new service with a password (bot) | 201 |
//! | 15% | update of one of the worker's own services with a new password (bot) | 200 |
//! | 25% | pass-through GET (`/__test/json2k`) | 200, 12 items |
//!
//! Every create adds a service (10,000 over a run): the gateway's read cache and entity locks
//! grow with them up to their bound (`cache_max_entries`, 10,000 by default), which the RSS
//! figure includes.
//!
//! Then every byte the emulator received and every entity it stores is searched for the
//! passwords' common prefix (no plaintext upstream), and the gateway's RSS at the end is
//! compared with its RSS after the first 10,000 requests. Prints every figure; exits 1 if a
//! request failed, a bot read was wrong, a plaintext reached the upstream or RSS grew > 10%.
//!
//! `soak GATEWAY_BIN BAO_ADDR BAO_TOKEN [REQUESTS] [CONNECTIONS]`

#[path = "../tests/support/emulator.rs"]
mod emulator;
#[path = "../tests/support/jwt.rs"]
mod jwt;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

const MASK: &str = "*********";
/// Every password starts with this; none may ever reach the upstream.
const PLANT: &str = "soak-pw-";
const SEEDED: usize = 200;
const RSS_AT: usize = 10_000;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Ctx {
    api: String,
    bot: String,
    user: String,
    run: u32,
    done: AtomicUsize,
    failed: AtomicUsize,
    bot_reads: AtomicUsize,
    bot_wrong: AtomicUsize,
    failures: Mutex<Vec<String>>,
    /// Latency in microseconds by request kind.
    latency: Mutex<HashMap<&'static str, Vec<u32>>>,
    next: AtomicU64,
    total: u64,
}

impl Ctx {
    fn fail(&self, what: &str, detail: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().expect("failures");
        if f.len() < 10 {
            f.push(format!(
                "{what}: {}",
                detail.chars().take(300).collect::<String>()
            ));
        }
    }

    fn seeded(&self, k: usize) -> (String, String) {
        (
            format!("soak-seed-{k:04}"),
            format!("{PLANT}seed-{k}-{:08x}", self.run),
        )
    }
}

fn service(name: &str, password: &str) -> String {
    json!({"name": name, "serviceType": "Mysql", "description": "soak",
           "connection": {"config": {"type": "Mysql", "username": "om", "hostPort": "db:3306",
                                     "authType": {"password": password}}}})
    .to_string()
}

fn password(v: &Value) -> Option<&str> {
    v["connection"]["config"]["authType"]["password"].as_str()
}

async fn send(
    c: &HttpClient,
    m: Method,
    url: &str,
    auth: Option<&str>,
    body: Option<String>,
) -> Result<(u16, Bytes), String> {
    let mut b = Request::builder().method(m).uri(url);
    if let Some(t) = auth {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let go = async {
        let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(Duration::from_secs(60), go)
        .await
        .map_err(|_| "no answer within 60 s".to_string())?
}

/// One worker: its own connection, its own services (created and updated only by it).
async fn worker(ctx: Arc<Ctx>, w: usize) {
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(HttpConnector::new());
    let mut own: Vec<(String, String)> = Vec::new();
    let mut created = 0usize;
    loop {
        let i = ctx.next.fetch_add(1, Ordering::Relaxed);
        if i >= ctx.total {
            return;
        }
        let slot = (i * 7919 % 100) as usize;
        let seeded = ctx.seeded((i as usize * 31) % SEEDED);
        let coll = format!("{}/api/v1/services/databaseServices", ctx.api);
        let started = Instant::now();
        // Without an own service yet, a read or update of one is a create.
        let slot = if own.is_empty() && (slot < 20 || (50..65).contains(&slot)) {
            40
        } else {
            slot
        };
        let (kind, ok) = match slot {
            0..=19 => {
                let (name, pw) = &own[i as usize % own.len()];
                let r = send(
                    &client,
                    Method::GET,
                    &format!("{coll}/name/{name}"),
                    Some(&ctx.bot),
                    None,
                )
                .await;
                ("bot read (own)", check_read(&ctx, r, Some(pw)))
            }
            20..=29 => {
                let r = send(
                    &client,
                    Method::GET,
                    &format!("{coll}/name/{}", seeded.0),
                    Some(&ctx.bot),
                    None,
                )
                .await;
                ("bot read (seeded)", check_read(&ctx, r, Some(&seeded.1)))
            }
            30..=39 => {
                let r = send(
                    &client,
                    Method::GET,
                    &format!("{coll}/name/{}", seeded.0),
                    Some(&ctx.user),
                    None,
                )
                .await;
                ("user read", check_read(&ctx, r, None))
            }
            40..=49 => {
                let (name, pw) = (
                    format!("soak-w{w:03}-{created:05}-{:08x}", ctx.run),
                    format!("{PLANT}{w}-{i}-{:08x}", ctx.run),
                );
                let r = send(
                    &client,
                    Method::POST,
                    &coll,
                    Some(&ctx.bot),
                    Some(service(&name, &pw)),
                )
                .await;
                let ok = expect_status(&ctx, "create", r, 201);
                if ok {
                    created += 1;
                    own.push((name, pw));
                }
                ("create", ok)
            }
            50..=64 => {
                let k = i as usize % own.len();
                let pw = format!("{PLANT}{w}-{i}-{:08x}", ctx.run);
                let r = send(
                    &client,
                    Method::PUT,
                    &coll,
                    Some(&ctx.bot),
                    Some(service(&own[k].0, &pw)),
                )
                .await;
                let ok = expect_status(&ctx, "update", r, 200);
                if ok {
                    own[k].1 = pw;
                }
                ("update", ok)
            }
            65..=69 => {
                let r = send(
                    &client,
                    Method::GET,
                    &format!("{coll}?limit=10"),
                    Some(&ctx.bot),
                    None,
                )
                .await;
                ("bot list", check_list(&ctx, r, true))
            }
            70..=74 => {
                let r = send(
                    &client,
                    Method::GET,
                    &format!("{coll}?limit=10"),
                    Some(&ctx.user),
                    None,
                )
                .await;
                ("user list", check_list(&ctx, r, false))
            }
            _ => {
                let r = send(
                    &client,
                    Method::GET,
                    &format!("{}/__test/json2k", ctx.api),
                    None,
                    None,
                )
                .await;
                let ok = match r {
                    Ok((200, b))
                        if serde_json::from_slice::<Value>(&b)
                            .is_ok_and(|v| v["paging"]["total"] == 12) =>
                    {
                        true
                    }
                    other => {
                        ctx.fail("pass-through", format!("{other:?}"));
                        false
                    }
                };
                ("pass-through", ok)
            }
        };
        let _ = ok;
        let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        ctx.latency
            .lock()
            .expect("latency")
            .entry(kind)
            .or_default()
            .push(us);
        ctx.done.fetch_add(1, Ordering::Relaxed);
    }
}

fn expect_status(ctx: &Ctx, what: &str, r: Result<(u16, Bytes), String>, want: u16) -> bool {
    match r {
        Ok((s, _)) if s == want => true,
        Ok((s, b)) => {
            ctx.fail(what, format!("{s} {}", String::from_utf8_lossy(&b)));
            false
        }
        Err(e) => {
            ctx.fail(what, e);
            false
        }
    }
}

/// A single read: `Some(pw)` for a bot (must resolve to exactly it), `None` for a user (mask).
fn check_read(ctx: &Ctx, r: Result<(u16, Bytes), String>, want: Option<&str>) -> bool {
    let v = match r {
        Ok((200, b)) => match serde_json::from_slice::<Value>(&b) {
            Ok(v) => v,
            Err(e) => {
                ctx.fail("read", e.to_string());
                return false;
            }
        },
        other => {
            ctx.fail("read", format!("{other:?}"));
            return false;
        }
    };
    let got = password(&v);
    if let Some(w) = want {
        ctx.bot_reads.fetch_add(1, Ordering::Relaxed);
        if got != Some(w) {
            ctx.bot_wrong.fetch_add(1, Ordering::Relaxed);
            ctx.fail("bot read", format!("{got:?}, not the value written"));
            return false;
        }
    } else if got != Some(MASK) {
        ctx.fail("user read", "not masked".into());
        return false;
    }
    true
}

fn check_list(ctx: &Ctx, r: Result<(u16, Bytes), String>, bot: bool) -> bool {
    let v = match r {
        Ok((200, b)) => serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null),
        other => {
            ctx.fail("list", format!("{other:?}"));
            return false;
        }
    };
    let Some(items) = v["data"].as_array() else {
        ctx.fail("list", "no data[]".into());
        return false;
    };
    for e in items {
        let name = e["name"].as_str().unwrap_or_default();
        let got = password(e);
        let right = match (bot, name.strip_prefix("soak-seed-")) {
            (false, _) => got.is_none() || got == Some(MASK),
            (true, Some(k)) => {
                ctx.bot_reads.fetch_add(1, Ordering::Relaxed);
                let want = ctx.seeded(k.parse().unwrap_or(usize::MAX)).1;
                let ok = got == Some(want.as_str());
                if !ok {
                    ctx.bot_wrong.fetch_add(1, Ordering::Relaxed);
                }
                ok
            }
            (true, None) => got.is_none_or(|p| p.starts_with(PLANT)),
        };
        if !right {
            ctx.fail(
                if bot { "bot list" } else { "user list" },
                format!("{name}: {got:?}"),
            );
            return false;
        }
    }
    true
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn percentile(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: soak GATEWAY_BIN BAO_ADDR BAO_TOKEN [REQUESTS] [CONNECTIONS]");
        std::process::exit(2);
    }
    let total: u64 = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let conns: usize = args.get(4).and_then(|n| n.parse().ok()).unwrap_or(256);
    let run = fastrand::u32(..);
    let emu = emulator::Emulator::start().await;
    let dir = std::env::temp_dir().join(format!("omsp-soak-{run:08x}"));
    std::fs::create_dir_all(&dir).expect("work dir");
    let config = dir.join("soak.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\npublic_key_files = [\"{}\"]\n[fernet]\nkey = \"{}\"\n\
             [upstream]\nservice_token = \"{}\"\n\
             [secrets_manager]\nprovider = \"managed-openbao\"\nprefix = \"soak{run:08x}\"\n\
             [secrets_manager.parameters]\naddress = \"{}\"\ntoken = \"{}\"\n",
            jwt::fixture("key1.pkcs1.pub.pem").display(),
            om_secrets_proxy::secrets::fernet::FernetKeys::generate_key(),
            jwt::bot(),
            args[1],
            args[2]
        ),
    )
    .expect("config");
    let (port, admin) = (free_port(), free_port());
    let log = dir.join("gateway.log");
    let mut gw = std::process::Command::new(&args[0])
        .args(["serve", "--config"])
        .arg(&config)
        .env("OMSP_LISTEN", format!("127.0.0.1:{port}"))
        .env("OMSP_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("OMSP_UPSTREAM", emu.url())
        .env(
            "OMSP_RULES_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
        )
        .env("OMSP_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start the gateway");
    let pid = gw.id();
    let ctx = Arc::new(Ctx {
        api: format!("http://127.0.0.1:{port}"),
        bot: jwt::bot(),
        user: jwt::user(),
        run,
        done: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        bot_reads: AtomicUsize::new(0),
        bot_wrong: AtomicUsize::new(0),
        failures: Mutex::new(Vec::new()),
        latency: Mutex::new(HashMap::new()),
        next: AtomicU64::new(0),
        total,
    });
    // Ready, then the seeded services (through the gateway, so their passwords go to OpenBao).
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let coll = format!("{}/api/v1/services/databaseServices", ctx.api);
    let mut ready = false;
    for _ in 0..200 {
        if send(
            &client,
            Method::GET,
            &format!("http://127.0.0.1:{admin}/readyz"),
            None,
            None,
        )
        .await
        .is_ok_and(|(s, _)| s == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ready,
        "the gateway did not become ready (log: {})",
        log.display()
    );
    for k in 0..SEEDED {
        let (name, pw) = ctx.seeded(k);
        let r = send(
            &client,
            Method::POST,
            &coll,
            Some(&ctx.bot),
            Some(service(&name, &pw)),
        )
        .await;
        assert!(matches!(r, Ok((201, _))), "seeding: {r:?}");
    }
    let load_start = loadavg();
    println!(
        "soak: {total} requests, {conns} connections, gateway {} (pid {pid}), OpenBao {}, {} cores, load average {load_start}",
        args[0],
        args[1],
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let rss_start = rss_kib(pid);
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|w| tokio::spawn(worker(ctx.clone(), w)))
        .collect();
    // RSS after the first 10,000, then the peak until the end.
    let mut rss_10k = 0;
    let mut peak = 0;
    let mut shown = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        let r = rss_kib(pid);
        peak = peak.max(r);
        let done = ctx.done.load(Ordering::Relaxed);
        if rss_10k == 0 && done >= RSS_AT {
            rss_10k = r;
        }
        if done / RSS_AT > shown {
            shown = done / RSS_AT;
            eprintln!(
                "  {done} done after {:.1} s, gateway RSS {} MiB, {} failed",
                started.elapsed().as_secs_f64(),
                r / 1024,
                ctx.failed.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in workers {
        w.await.expect("worker");
    }
    let took = started.elapsed();
    let rss_end = rss_kib(pid);
    let load_end = loadavg();

    // Nothing in clear upstream: every byte received, every entity stored.
    let mut received = 0usize;
    let mut plaintext = 0usize;
    for r in emu.recorded() {
        received += 1;
        let hit = |b: &[u8]| b.windows(PLANT.len()).any(|w| w == PLANT.as_bytes());
        if hit(&r.body)
            || hit(r.path_and_query.as_bytes())
            || r.headers.values().any(|v| hit(v.as_bytes()))
        {
            plaintext += 1;
        }
    }
    let stored = emu.entities("services/databaseServices");
    let stored_plain = stored
        .iter()
        .filter(|e| password(e).is_some_and(|p| !p.starts_with("secret:")))
        .count();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let log_plain = log_text.matches(PLANT).count();
    let _ = gw.kill();
    let _ = gw.wait();

    let done = ctx.done.load(Ordering::Relaxed);
    let failed = ctx.failed.load(Ordering::Relaxed);
    let (bot_reads, bot_wrong) = (
        ctx.bot_reads.load(Ordering::Relaxed),
        ctx.bot_wrong.load(Ordering::Relaxed),
    );
    println!(
        "requests: {done} in {:.1} s = {:.0} req/s; failed: {failed}",
        took.as_secs_f64(),
        done as f64 / took.as_secs_f64()
    );
    println!(
        "{:<20}{:>9}{:>10}{:>10}{:>10}",
        "kind", "count", "p50 ms", "p99 ms", "max ms"
    );
    let mut lat = ctx.latency.lock().expect("latency");
    let mut kinds: Vec<_> = lat.keys().copied().collect();
    kinds.sort();
    for k in kinds {
        let v = lat.get_mut(k).expect("kind");
        let n = v.len();
        let (p50, p99, max) = (percentile(v, 0.5), percentile(v, 0.99), percentile(v, 1.0));
        println!("{k:<20}{n:>9}{p50:>10.2}{p99:>10.2}{max:>10.2}");
    }
    println!("bot reads checked: {bot_reads}, wrong: {bot_wrong}");
    println!(
        "upstream: {received} requests received, {plaintext} with a plaintext; {} services stored, {stored_plain} holding anything but a reference; gateway log lines with a plaintext: {log_plain}",
        stored.len()
    );
    let growth = if rss_10k > 0 {
        rss_end as f64 / rss_10k as f64 - 1.0
    } else {
        f64::NAN
    };
    println!(
        "gateway RSS: {} MiB at the start, {} MiB after {RSS_AT}, {} MiB at the end ({:+.1}%), peak {} MiB",
        rss_start / 1024,
        rss_10k / 1024,
        rss_end / 1024,
        growth * 100.0,
        peak / 1024
    );
    println!("load average: {load_start} at the start, {load_end} at the end");
    for f in ctx.failures.lock().expect("failures").iter() {
        println!("  failure: {f}");
    }
    let ok = failed == 0
        && bot_wrong == 0
        && plaintext == 0
        && stored_plain == 0
        && log_plain == 0
        && growth <= 0.10
        && done as u64 == total;
    println!("soak: {}", if ok { "PASS" } else { "FAIL" });
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(if ok { 0 } else { 1 });
}
