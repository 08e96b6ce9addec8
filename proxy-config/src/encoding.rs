//! How `proxy.json` and `destinations.json` are stored in their ConfigMaps. Small documents are
//! plain JSON under `data`, so `kubectl get configmap -o yaml` shows them. A document above
//! [`GZIP_ABOVE`] bytes is stored gzip-compressed under `binaryData` (same key, same file name in
//! the pod): a mesh of 500 Services makes 183 KB of destinations that compress about tenfold,
//! and the operator rewrites them (each namespace's file, or every whole document) when a
//! client-side policy changes, so the bytes the API server and etcd must take drive how fast
//! such a change reaches every proxy. The proxy accepts both
//! ([`decode`] tells them apart by the gzip magic number); read a compressed one with
//! `kubectl get cm braid-proxy-<workload> -o jsonpath='{.binaryData.proxy\.json}' | base64 -d | gunzip`,
//! and a namespace's shared destinations with
//! `kubectl get cm braid-destinations -o jsonpath='{.binaryData.destinations\.json}' | base64 -d | gunzip`.

use std::io::{Read as _, Write as _};

/// Documents larger than this are stored compressed.
pub const GZIP_ABOVE: usize = 64 * 1024;

/// The largest document a compressed file may expand to (a guard against a hostile file).
pub const MAX_DOCUMENT: u64 = 64 * 1024 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A document as the operator stores it.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// Plain JSON, for ConfigMap `data`.
    Text(String),
    /// gzip of the JSON, for ConfigMap `binaryData`.
    Gzip(Vec<u8>),
}

/// How `json` is stored: as it is up to [`GZIP_ABOVE`] bytes, compressed above.
pub fn encode(json: String) -> Stored {
    if json.len() <= GZIP_ABOVE {
        return Stored::Text(json);
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    match encoder
        .write_all(json.as_bytes())
        .and_then(|()| encoder.finish())
    {
        Ok(compressed) => Stored::Gzip(compressed),
        Err(_) => Stored::Text(json),
    }
}

/// The JSON of a stored file: decompressed when it starts with the gzip magic number, as it is
/// otherwise.
pub fn decode(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut json)
        .map_err(|e| format!("the file is gzip but does not decompress: {e}"))?;
    if json.len() as u64 > MAX_DOCUMENT {
        return Err(format!(
            "the file decompresses to more than {MAX_DOCUMENT} bytes"
        ));
    }
    Ok(std::borrow::Cow::Owned(json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_documents_stay_text_and_large_ones_round_trip_compressed() {
        let small = "{\"version\":1}".to_string();
        assert_eq!(encode(small.clone()), Stored::Text(small.clone()));
        assert_eq!(
            decode(small.as_bytes()).expect("plain").as_ref(),
            small.as_bytes()
        );

        let large = format!(
            "[{}]",
            vec!["{\"ip\":\"10.244.0.17\",\"port\":8080}"; 4000].join(",")
        );
        let Stored::Gzip(compressed) = encode(large.clone()) else {
            panic!("a {} byte document was not compressed", large.len());
        };
        assert!(
            compressed.len() * 10 < large.len(),
            "{} bytes",
            compressed.len()
        );
        assert_eq!(
            decode(&compressed).expect("gzip").as_ref(),
            large.as_bytes()
        );
    }

    #[test]
    fn a_broken_gzip_file_is_refused_with_a_reason() {
        let error = decode(&[0x1f, 0x8b, 0, 1, 2]).expect_err("refused");
        assert!(
            error.starts_with("the file is gzip but does not decompress"),
            "{error}"
        );
    }
}
