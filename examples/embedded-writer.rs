//! Test helper for the embedded store's crash-safety test: writes `k<N>` = `value-<N>` in a
//! loop and prints each N once the write is acknowledged (committed). Killed with SIGKILL.
//! `embedded-writer PATH KEY`

use std::io::Write;

use om_secrets_proxy::secrets::embedded::EmbeddedStore;
use om_secrets_proxy::secrets::fernet::FernetKeys;
use om_secrets_proxy::secrets::SecretStore;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("path");
    let key = args.next().expect("key");
    let keys = FernetKeys::new(&[key]).expect("key");
    let store = EmbeddedStore::open(std::path::Path::new(&path), &keys).expect("open");
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        store
            .put(&format!("/crash/k{n:08}"), &format!("value-{n}"))
            .await
            .expect("put");
        writeln!(out, "{n}").expect("stdout");
        out.flush().expect("flush");
    }
}
