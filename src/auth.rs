//! Caller identity from `Authorization: Bearer <JWT>` only: RS256 signatures checked against
//! the upstream's JWKS (fetched lazily, cached, refetched on an unknown `kid` at most every
//! 30 s) and/or configured PEM keys; `iss` and `exp` checked. `alg: none`, HMAC and anything
//! malformed make the caller anonymous. Identity headers a caller sends are never read.
//!
//! A verified identity is remembered per token (bounded, see [`IdentityCache`]): a client
//! sending the same token on every request pays one signature check, then a lookup.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{header, HeaderMap, Request};
use ring::signature::{RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256};
use serde_json::Value;

use crate::http::body::{collect_limited, empty};
use crate::http::upstream::Upstream;
use crate::policy::CallerClass;

const JWKS_REFETCH: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

pub(crate) struct Auth {
    issuer: String,
    pem_keys: Vec<RsaKey>,
    jwks_path: Option<String>,
    upstream: Upstream,
    jwks: Mutex<(HashMap<String, RsaKey>, Option<Instant>)>,
    verified: IdentityCache,
}

/// How long a verified identity is trusted without checking the signature again (a key
/// removed from the JWKS stops being honoured within this), never past the token's `exp`.
const IDENTITY_TTL: Duration = Duration::from_secs(300);
/// Tokens remembered at most (about 1 KB each).
const IDENTITY_CACHE_MAX: usize = 10_000;
const IDENTITY_SHARDS: usize = 16;

/// Identities of tokens whose signature and claims were checked, keyed by the whole token
/// (compared in full on a hit, so only that exact token gets the identity). Only valid
/// tokens enter; an entry ends at the token's `exp` or after [`IDENTITY_TTL`], whichever
/// comes first. Bounded: a full shard first drops what has expired, then its oldest half.
struct IdentityCache {
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[Mutex<HashMap<u64, Verified>>]>,
    max_per_shard: usize,
}

struct Verified {
    token: Box<[u8]>,
    class: CallerClass,
    sub: Arc<str>,
    /// Unix seconds; `None` for a token without `exp`.
    exp: Option<u64>,
    /// `tokenType: PERSONAL_ACCESS` (a person's token an SDK may run with).
    personal: bool,
    at: Instant,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl IdentityCache {
    fn new(max: usize) -> IdentityCache {
        IdentityCache {
            hasher: Default::default(),
            shards: (0..IDENTITY_SHARDS).map(|_| Mutex::default()).collect(),
            max_per_shard: max.div_ceil(IDENTITY_SHARDS).max(1),
        }
    }

    /// The key: a hash of the token's length and last 64 bytes (inside the signature, which
    /// only the key holder can make). A hit still compares the whole token, so two tokens
    /// sharing a key only push each other out; hashing all ~1 KB would cost more than the
    /// rest of the lookup.
    fn key(&self, token: &[u8]) -> u64 {
        let b = token;
        self.hasher
            .hash_one((b.len(), &b[b.len().saturating_sub(64)..]))
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Verified>> {
        let shard = &self.shards[(key >> 59) as usize % IDENTITY_SHARDS];
        match shard.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The remembered identity: class, subject, and whether it is a personal access token.
    fn get(&self, token: &[u8]) -> Option<(CallerClass, Arc<str>, bool)> {
        let key = self.key(token);
        let mut shard = self.shard(key);
        let hit = shard.get(&key)?;
        if *hit.token != *token {
            return None;
        }
        if hit.at.elapsed() >= IDENTITY_TTL || hit.exp.is_some_and(|e| e <= unix_now()) {
            shard.remove(&key);
            return None;
        }
        Some((hit.class, hit.sub.clone(), hit.personal))
    }

    fn put(
        &self,
        token: &str,
        class: CallerClass,
        sub: Arc<str>,
        exp: Option<u64>,
        personal: bool,
    ) {
        let key = self.key(token.as_bytes());
        let mut shard = self.shard(key);
        if shard.len() >= self.max_per_shard && !shard.contains_key(&key) {
            let now = unix_now();
            shard.retain(|_, v| v.at.elapsed() < IDENTITY_TTL && v.exp.is_none_or(|e| e > now));
            if shard.len() >= self.max_per_shard {
                let mut ages: Vec<Instant> = shard.values().map(|v| v.at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                shard.retain(|_, v| v.at > cut);
            }
        }
        shard.insert(
            key,
            Verified {
                token: token.as_bytes().into(),
                class,
                sub,
                exp,
                personal,
                at: Instant::now(),
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|g| g.len()).unwrap_or(0))
            .sum()
    }
}

/// A JWT NumericDate (RFC 7519: seconds, possibly with a fraction), rounded the cautious way
/// by `round` (`exp` down, `nbf` up); `None` for anything else (the token is then refused).
fn numeric_date(v: &Value, round: fn(f64) -> f64) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = round(v.as_f64()?);
    (f.is_finite() && (0.0..=u64::MAX as f64).contains(&f)).then_some(f as u64)
}

fn b64(s: &str) -> Option<Vec<u8>> {
    let t = s.trim_end_matches('=');
    URL_SAFE_NO_PAD.decode(t).ok()
}

impl Auth {
    pub(crate) fn new(
        cfg: &crate::config::AuthConfig,
        upstream: Upstream,
        use_jwks: bool,
    ) -> Result<Auth, String> {
        let mut pem_keys = Vec::new();
        for f in &cfg.public_key_files {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            pem_keys.push(
                parse_pem_public_key(&text)
                    .ok_or_else(|| format!("{}: not an RSA public key in PEM", f.display()))?,
            );
        }
        let jwks_path = use_jwks.then(|| {
            cfg.jwks_url
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/api/v1/system/config/jwks".into())
        });
        Ok(Auth {
            issuer: cfg.issuer.clone(),
            pem_keys,
            jwks_path,
            upstream,
            jwks: Mutex::new((HashMap::new(), None)),
            verified: IdentityCache::new(IDENTITY_CACHE_MAX),
        })
    }

    /// The caller's class and subject (`anonymous` when unverified).
    /// The caller's class, subject, and whether its token is a personal access token.
    pub(crate) async fn identify(&self, headers: &HeaderMap) -> (CallerClass, String, bool) {
        let anon = (CallerClass::Anonymous, "anonymous".to_string(), false);
        // Two Authorization headers could be read differently upstream: neither counts.
        if headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some()
        {
            return anon;
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return anon;
        };
        // A remembered token is looked up by its bytes: it was checked to be text when it
        // was verified, so the byte-by-byte text check of a ~1 KB header is skipped.
        if let Some(raw) = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
        {
            if let Some((class, sub, personal)) = self.verified.get(raw.trim_ascii()) {
                return (class, sub.to_string(), personal);
            }
        }
        let Some(token) = value.to_str().ok().and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        }) else {
            return anon;
        };
        let token = token.trim();
        match self.verify(token).await {
            Some(claims) => {
                let sub = claims
                    .get("sub")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_string();
                let class = if claims.get("isBot").and_then(Value::as_bool) == Some(true) {
                    CallerClass::Bot
                } else {
                    CallerClass::User
                };
                let exp = claims.get("exp").and_then(|e| numeric_date(e, f64::floor));
                let personal =
                    claims.get("tokenType").and_then(Value::as_str) == Some("PERSONAL_ACCESS");
                self.verified
                    .put(token, class, Arc::from(sub.as_str()), exp, personal);
                (class, sub, personal)
            }
            None => anon,
        }
    }

    async fn verify(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&b64(h)?).ok()?;
        if header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return None;
        }
        let claims: Value = serde_json::from_slice(&b64(p)?).ok()?;
        let sig = b64(s)?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_string);
        let keys = self.keys_for(kid.as_deref()).await;
        let ok = keys.iter().any(|k| {
            RsaPublicKeyComponents { n: &k.n, e: &k.e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, signed, &sig)
                .is_ok()
        });
        if !ok {
            return None;
        }
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return None;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        match claims.get("exp") {
            None | Some(Value::Null) => {}
            Some(e) => {
                if numeric_date(e, f64::floor)? <= now {
                    return None;
                }
            }
        }
        // A token not valid yet is no token (a minute of leeway for clock skew).
        match claims.get("nbf") {
            None | Some(Value::Null) => {}
            Some(n) => {
                if numeric_date(n, f64::ceil)? > now + 60 {
                    return None;
                }
            }
        }
        Some(claims)
    }

    async fn keys_for(&self, kid: Option<&str>) -> Vec<RsaKey> {
        let mut keys = self.pem_keys.clone();
        let Some(path) = &self.jwks_path else {
            return keys;
        };
        let (cached, need_fetch) = {
            let g = match self.jwks.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let hit: Vec<RsaKey> = match kid {
                Some(k) => g.0.get(k).cloned().into_iter().collect(),
                None => g.0.values().cloned().collect(),
            };
            let stale = g.1.is_none_or(|t| t.elapsed() > JWKS_REFETCH);
            (hit.clone(), hit.is_empty() && stale)
        };
        keys.extend(cached);
        if need_fetch {
            if let Some(fetched) = self.fetch_jwks(path).await {
                let mut g = match self.jwks.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                g.0 = fetched;
                g.1 = Some(Instant::now());
                match kid {
                    Some(k) => keys.extend(g.0.get(k).cloned()),
                    None => keys.extend(g.0.values().cloned()),
                }
            } else if let Ok(mut g) = self.jwks.lock() {
                g.1 = Some(Instant::now());
            }
        }
        keys
    }

    async fn fetch_jwks(&self, path: &str) -> Option<HashMap<String, RsaKey>> {
        let mut req = Request::new(empty());
        *req.uri_mut() = self.upstream.uri_for(path).ok()?;
        let resp = self.upstream.send(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let bytes = collect_limited(resp.into_body(), 1 << 20).await.ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        let mut out = HashMap::new();
        for (i, k) in v.get("keys")?.as_array()?.iter().enumerate() {
            if k.get("kty").and_then(Value::as_str) != Some("RSA") {
                continue;
            }
            let n = strip_zero(b64(k.get("n")?.as_str()?)?);
            let e = b64(k.get("e")?.as_str()?)?;
            let kid = k
                .get("kid")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("#{i}"));
            out.insert(kid, RsaKey { n, e });
        }
        Some(out)
    }
}

fn strip_zero(mut v: Vec<u8>) -> Vec<u8> {
    while v.len() > 1 && v[0] == 0 {
        v.remove(0);
    }
    v
}

/// Reads one DER TLV; returns (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let body = input.get(hdr..hdr + len)?;
    Some((tag, body, &input[hdr + len..]))
}

/// An RSA public key from PEM: `PUBLIC KEY` (SPKI) or `RSA PUBLIC KEY` (PKCS#1).
fn parse_pem_public_key(text: &str) -> Option<RsaKey> {
    let b64body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    let der_bytes = STANDARD.decode(b64body.trim()).ok()?;
    let (tag, seq, _) = der(&der_bytes)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, first, rest) = der(seq)?;
    let pkcs1 = if t1 == 0x30 {
        // SPKI: AlgorithmIdentifier, then BIT STRING holding RSAPublicKey.
        let (t2, bits, _) = der(rest)?;
        if t2 != 0x03 || bits.first() != Some(&0) {
            return None;
        }
        let (t3, inner, _) = der(&bits[1..])?;
        if t3 != 0x30 {
            return None;
        }
        inner.to_vec()
    } else {
        let _ = first;
        seq.to_vec()
    };
    let (tn, n, rest) = der(&pkcs1)?;
    let (te, e, _) = der(rest)?;
    if tn != 0x02 || te != 0x02 {
        return None;
    }
    Some(RsaKey {
        n: strip_zero(n.to_vec()),
        e: strip_zero(e.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    impl IdentityCache {
        fn put_plain(&self, token: &str, class: CallerClass, sub: Arc<str>, exp: Option<u64>) {
            self.put(token, class, sub, exp, false)
        }
    }

    fn aged(cache: &IdentityCache, token: &str, by: Duration) {
        let key = cache.key(token.as_bytes());
        let mut shard = cache.shard(key);
        let v = shard.get_mut(&key).expect("cached");
        v.at = Instant::now().checked_sub(by).expect("uptime");
    }

    #[test]
    fn a_cached_token_answers_with_its_identity_and_only_that_token_does() {
        let c = IdentityCache::new(100);
        c.put_plain("tok-a", CallerClass::Bot, Arc::from("bot-a"), None);
        let (class, sub, _) = c.get("tok-a".as_bytes()).expect("hit");
        assert_eq!((class, &*sub), (CallerClass::Bot, "bot-a"));
        assert!(c.get("tok-b".as_bytes()).is_none());
        assert!(c.get("tok-a ".as_bytes()).is_none());
        // Same length and last 64 bytes, another token: no hit, only an eviction.
        let tail = "s".repeat(64);
        c.put_plain(
            &format!("a.{tail}"),
            CallerClass::Bot,
            Arc::from("bot"),
            None,
        );
        assert!(c.get(format!("b.{tail}").as_bytes()).is_none());
        c.put_plain(
            &format!("b.{tail}"),
            CallerClass::User,
            Arc::from("u"),
            None,
        );
        assert!(c.get(format!("a.{tail}").as_bytes()).is_none());
        assert_eq!(
            c.get(format!("b.{tail}").as_bytes()).unwrap().0,
            CallerClass::User
        );
    }

    #[test]
    fn an_expired_token_is_forgotten() {
        let c = IdentityCache::new(100);
        c.put_plain(
            "tok",
            CallerClass::User,
            Arc::from("u"),
            Some(unix_now() - 1),
        );
        assert!(c.get("tok".as_bytes()).is_none());
        assert_eq!(c.len(), 0);
        c.put_plain(
            "tok",
            CallerClass::User,
            Arc::from("u"),
            Some(unix_now() + 60),
        );
        assert!(c.get("tok".as_bytes()).is_some());
    }

    #[test]
    fn an_identity_is_rechecked_after_the_ttl_even_without_exp() {
        let c = IdentityCache::new(100);
        c.put_plain("tok", CallerClass::Bot, Arc::from("b"), None);
        if Instant::now().checked_sub(IDENTITY_TTL).is_none() {
            return; // the machine has been up for less than the TTL
        }
        aged(&c, "tok", IDENTITY_TTL);
        assert!(c.get("tok".as_bytes()).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let c = IdentityCache::new(64);
        for i in 0..5_000 {
            c.put_plain(
                &format!("token-{i}"),
                CallerClass::User,
                Arc::from("u"),
                None,
            );
        }
        assert!(c.len() <= 64 + IDENTITY_SHARDS, "{}", c.len());
        // The newest entries are the ones kept.
        assert!(c.get("token-4999".as_bytes()).is_some());
    }
}
