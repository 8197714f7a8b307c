//! Random values from the operating system: secrets, salts and public ids.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Result};

/// `N` random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(Error::Random)?;
    Ok(out)
}

/// `N` random bytes as URL-safe base64 without padding (43 characters for 32 bytes).
pub fn url_safe<const N: usize>() -> Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(bytes::<N>()?))
}

/// `N` random bytes as lower-case hex, for public ids.
pub fn hex<const N: usize>() -> Result<String> {
    Ok(bytes::<N>()?.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_promised_shape_and_differ() {
        let a = url_safe::<32>().unwrap();
        assert_eq!(a.len(), 43);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{a}");
        assert_ne!(a, url_safe::<32>().unwrap());
        let id = hex::<8>().unwrap();
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
    }
}
