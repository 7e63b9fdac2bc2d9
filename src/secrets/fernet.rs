//! Fernet in OpenMetadata's format: `fernet:<token>`, several keys (the first encrypts, all
//! decrypt), tokens that never expire. Keys are accepted in url-safe or standard base64
//! (OpenMetadata's public default key is written in the standard alphabet).

pub(crate) const PREFIX: &str = "fernet:";

#[derive(Clone)]
pub struct FernetKeys {
    keys: Vec<fernet::Fernet>,
}

impl std::fmt::Debug for FernetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FernetKeys({} keys)", self.keys.len())
    }
}

/// Parses one key, tolerating the standard base64 alphabet and missing padding.
pub(crate) fn parse_key(key: &str) -> Option<fernet::Fernet> {
    fernet::Fernet::new(&crate::config::normalise_fernet_key(key))
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FernetError {
    #[error("no Fernet key is configured")]
    NoKey,
    #[error("no configured Fernet key decrypts the token")]
    Undecryptable,
    #[error("the decrypted Fernet token is not UTF-8 text")]
    NotText,
}

impl FernetKeys {
    /// Keys in order; an unparsable key is an error naming its position (never its value).
    pub fn new(keys: &[String]) -> Result<FernetKeys, String> {
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            out.push(
                parse_key(k).ok_or_else(|| format!("Fernet key #{} is not a valid key", i + 1))?,
            );
        }
        Ok(FernetKeys { keys: out })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn generate_key() -> String {
        fernet::Fernet::generate_key()
    }

    /// `fernet:<token>` of `plain` with the first key.
    pub fn encrypt(&self, plain: &str) -> Result<String, FernetError> {
        let k = self.keys.first().ok_or(FernetError::NoKey)?;
        Ok(format!("{PREFIX}{}", k.encrypt(plain.as_bytes())))
    }

    /// The first key (the one that encrypts) opens `value`: rotating it would change nothing.
    pub(crate) fn opens_with_first(&self, value: &str) -> bool {
        let token = value.strip_prefix(PREFIX).unwrap_or(value).trim();
        self.keys.first().is_some_and(|k| k.decrypt(token).is_ok())
    }

    /// Decrypts `fernet:<token>` or a bare token with any configured key.
    pub fn decrypt(&self, value: &str) -> Result<String, FernetError> {
        if self.keys.is_empty() {
            return Err(FernetError::NoKey);
        }
        let token = value.strip_prefix(PREFIX).unwrap_or(value).trim();
        for k in &self.keys {
            if let Ok(bytes) = k.decrypt(token) {
                return String::from_utf8(bytes).map_err(|_| FernetError::NotText);
            }
        }
        Err(FernetError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM_DEFAULT: &str = "jJ/9sz0g0OHxsfxOoSfdFdmk3ysNmPRnH3TUAbz3IHA=";

    #[test]
    fn openmetadatas_standard_base64_default_key_is_accepted() {
        assert!(parse_key(OM_DEFAULT).is_some());
    }

    #[test]
    fn the_first_key_encrypts_and_every_key_decrypts() {
        let a = FernetKeys::generate_key();
        let b = FernetKeys::generate_key();
        let old = FernetKeys::new(std::slice::from_ref(&b)).unwrap();
        let token = old.encrypt("s3cret").unwrap();
        assert!(token.starts_with("fernet:"));
        let rotated = FernetKeys::new(&[a.clone(), b]).unwrap();
        assert_eq!(rotated.decrypt(&token).unwrap(), "s3cret");
        assert!(!rotated.opens_with_first(&token));
        assert!(rotated.opens_with_first(&rotated.encrypt("s3cret").unwrap()));
        let only_a = FernetKeys::new(&[a]).unwrap();
        assert_eq!(only_a.decrypt(&token), Err(FernetError::Undecryptable));
    }

    #[test]
    fn a_bare_token_decrypts_too() {
        let k = FernetKeys::new(&[FernetKeys::generate_key()]).unwrap();
        let token = k.encrypt("x").unwrap();
        assert_eq!(
            k.decrypt(token.strip_prefix("fernet:").unwrap()).unwrap(),
            "x"
        );
    }
}
