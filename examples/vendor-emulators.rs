//! Serves the vendor emulators of `tests/support/vendor_emulators.rs` for
//! `tests/vendor_sdk_check.py`, which drives them with each vendor's Python client.
//! `cargo run --example vendor-emulators -- DIR` writes the emulators' CA certificates into
//! DIR, prints one JSON line with their URLs, and serves until stdin closes or it is killed.

#[path = "../tests/support/vendor_emulators.rs"]
mod vendor_emulators;

use vendor_emulators::{AzureKeyVault, KubeApi, SecretManager};

/// The bearer token every emulator accepts (the SDKs' static credentials).
const TOKEN: &str = "emulator-static-token";

#[tokio::main]
async fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir).expect("CA directory");
    let azure = AzureKeyVault::start_on("127.0.0.1:0", true).await;
    azure.accept_token(TOKEN);
    let gcp = SecretManager::start_on("127.0.0.1:0").await;
    gcp.allow_anonymous(true);
    let kube = KubeApi::start_on("127.0.0.1:0", true).await;
    kube.accept_token(TOKEN);
    let write = |name: &str, pem: &Option<String>| {
        let path = dir.join(name);
        std::fs::write(&path, pem.as_deref().expect("TLS emulator has a CA")).expect("write CA");
        path.display().to_string()
    };
    let line = serde_json::json!({
        "azure": azure.url, "azure_ca": write("azure-ca.pem", &azure.ca_pem),
        "gcp": gcp.url,
        "kube": kube.url, "kube_ca": write("kube-ca.pem", &kube.ca_pem),
        "token": TOKEN,
    });
    println!("{line}");
    // Serve until the parent closes stdin (or kills us).
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
    })
    .await;
}
