//! Test tokens: RS256 signed with the fixture keys, plus the forgeries a gateway must refuse.
#![allow(dead_code)]

use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An RS256 token signed with `key` ("key1" or "key2").
pub fn rs256(key: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": "RS256", "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_file(fixture(&format!("{key}.pem")))
        .expect("fixture key");
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("rsa key");
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .expect("sign");
    format!("{input}.{}", b64(&sig))
}

pub fn claims(sub: &str, is_bot: bool) -> Value {
    json!({"sub": sub, "iss": "open-metadata.org", "isBot": is_bot, "email": format!("{sub}@example.org"),
           "tokenType": if is_bot { "BOT" } else { "OM_USER" }, "iat": now(), "exp": now() + 3600})
}

pub fn bot() -> String {
    rs256("key1", Some("k1"), &claims("ingestion-bot", true))
}

pub fn user() -> String {
    rs256("key1", Some("k1"), &claims("alice", false))
}

pub fn expired_bot() -> String {
    let mut c = claims("ingestion-bot", true);
    c["exp"] = json!(now() - 60);
    rs256("key1", Some("k1"), &c)
}

pub fn not_yet_valid_bot() -> String {
    let mut c = claims("ingestion-bot", true);
    c["nbf"] = json!(now() + 3600);
    rs256("key1", Some("k1"), &c)
}

/// OpenMetadata's bot tokens may never expire: no `exp` claim at all.
pub fn never_expiring_bot() -> String {
    let mut c = claims("ingestion-bot", true);
    if let Some(m) = c.as_object_mut() {
        m.remove("exp");
    }
    rs256("key1", Some("k1"), &c)
}

/// `isBot` as the string "true" is not the boolean the claim must be.
pub fn string_is_bot() -> String {
    let mut c = claims("ingestion-bot", true);
    c["isBot"] = json!("true");
    rs256("key1", Some("k1"), &c)
}

pub fn wrong_key_bot() -> String {
    rs256("key2", Some("k1"), &claims("ingestion-bot", true))
}

pub fn wrong_issuer_bot() -> String {
    let mut c = claims("ingestion-bot", true);
    c["iss"] = json!("evil.example");
    rs256("key1", Some("k1"), &c)
}

pub fn alg_none_bot() -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims("ingestion-bot", true).to_string().as_bytes())
    )
}

/// HS256 "signed" with the RSA public key as the HMAC secret (the classic confusion attack).
pub fn hs256_with_public_key_bot() -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims("ingestion-bot", true).to_string().as_bytes())
    );
    let pem = std::fs::read(fixture("key1.pub.pem")).expect("pub");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &pem);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// A user token whose payload was edited to claim `isBot: true` (signature no longer matches).
pub fn tampered_user_as_bot() -> String {
    let t = user();
    let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
    parts[1] = b64(claims("alice", true).to_string().as_bytes());
    parts.join(".")
}

pub fn jwks() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).expect("jwks"))
        .expect("jwks json")
}
