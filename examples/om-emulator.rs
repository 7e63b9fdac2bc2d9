//! Runs the OpenMetadata API emulator used by the tests, for manual runs and benchmarks.
//! `cargo run --example om-emulator -- [ADDR]` (default 127.0.0.1:8585).
//!
//! `OM_EMULATOR_FLEET=N` also seeds the toolkit tests' mixed installation of N entities with
//! their secrets upstream (7 in 10 in clear, 3 in 10 as Fernet tokens of
//! `OM_EMULATOR_FLEET_KEY`), for `bench/migrate.sh`.

#[path = "../tests/support/emulator.rs"]
mod emulator;
#[path = "../tests/support/fleet.rs"]
mod fleet;

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
    if let Some(n) = std::env::var("OM_EMULATOR_FLEET")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let key = std::env::var("OM_EMULATOR_FLEET_KEY")
            .unwrap_or_else(|_| om_secrets_proxy::secrets::fernet::FernetKeys::generate_key());
        let keys = om_secrets_proxy::secrets::fernet::FernetKeys::new(&[key])
            .expect("OM_EMULATOR_FLEET_KEY is a Fernet key");
        fleet::fleet(n, fleet::Mix::ValuesOnly, 0, &keys, false).seed(&emu);
        eprintln!("seeded {n} entities with secrets upstream");
    }
    if std::env::var_os("OM_EMULATOR_RECORD").is_none() {
        emu.set_recording(false);
    }
    tokio::signal::ctrl_c().await.ok();
}
