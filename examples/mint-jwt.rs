//! Prints a test token signed with the test fixture key (for benchmarks and manual runs
//! against a gateway configured with `auth.public_key_files = ["tests/fixtures/jwt/key1.pub.pem"]`).
//! `cargo run --example mint-jwt -- bot|user`

#[path = "../tests/support/jwt.rs"]
mod jwt;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("user") => println!("{}", jwt::user()),
        _ => println!("{}", jwt::bot()),
    }
}
