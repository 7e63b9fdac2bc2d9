//! Content-Encoding of bodies the gateway must read: gzip, deflate (zlib or raw), br.

use std::io::Read;

use bytes::Bytes;
use http::{header, HeaderMap};

/// Decodes a request or response body by its Content-Encoding.
pub(crate) fn decode(
    headers: &HeaderMap,
    bytes: Bytes,
    limit: usize,
) -> Result<Bytes, DecodeError> {
    let Some(enc) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(bytes);
    };
    let enc = enc
        .to_str()
        .map_err(|_| DecodeError::Unsupported)?
        .trim()
        .to_ascii_lowercase();
    let mut out = Vec::new();
    let res = match enc.as_str() {
        "" | "identity" => return Ok(bytes),
        // Every member: a body of several gzip members is one body to the clients that read it
        // (Python's urllib3, Java's GZIPInputStream), so the gateway reads all of it too.
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(&bytes[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        "deflate" => {
            // RFC 9110 deflate is zlib; some senders use raw deflate.
            let r = flate2::read::ZlibDecoder::new(&bytes[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out);
            if r.is_err() {
                out.clear();
                flate2::read::DeflateDecoder::new(&bytes[..])
                    .take(limit as u64 + 1)
                    .read_to_end(&mut out)
            } else {
                r
            }
        }
        "br" => brotli_decompressor::Decompressor::new(&bytes[..], 4096)
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        _ => return Err(DecodeError::Unsupported),
    };
    res.map_err(|_| DecodeError::Corrupt)?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge);
    }
    Ok(Bytes::from(out))
}

#[derive(Debug)]
pub(crate) enum DecodeError {
    Unsupported,
    Corrupt,
    TooLarge,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(part: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(part).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn every_member_of_a_gzip_body_is_read() {
        // Two members: what Python's urllib3 and Java read as one body, the second member
        // holding the reference the safety net must see.
        let mut body = gzip(br#"{"a":"plain","#);
        body.extend(gzip(br#""b":"secret:/x"}"#));
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().expect("value"));
        let out = decode(&headers, Bytes::from(body), 1 << 20).expect("decoded");
        assert_eq!(&out[..], br#"{"a":"plain","b":"secret:/x"}"#);
    }
}
