//! Runs the OpenMetadata API emulator used by the tests, for manual runs and benchmarks.
//! `cargo run --example om-emulator -- [ADDR]` (default 127.0.0.1:8585).

#[path = "../tests/support/emulator.rs"]
mod emulator;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8585".to_string());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("bind the emulator address");
    let emu = emulator::Emulator::start_on(listener).await;
    eprintln!("OpenMetadata emulator on {}", emu.url());
    // Seed one service of every kind so reads have something to show.
    for kind in emulator::SERVICE_COLLECTIONS {
        emu.seed(
            &format!("services/{kind}"),
            serde_json::json!({"name": format!("sample-{}", kind.trim_end_matches("Services")), "serviceType": "Mysql",
                "connection": {"config": {"type": "Mysql", "username": "om", "hostPort": "db:3306"}}}),
        );
    }
    if std::env::var_os("OM_EMULATOR_NO_BENCH_SEED").is_none() {
        emu.seed_bench_services(50);
    }
    if std::env::var_os("OM_EMULATOR_RECORD").is_none() {
        emu.set_recording(false);
    }
    tokio::signal::ctrl_c().await.ok();
}
