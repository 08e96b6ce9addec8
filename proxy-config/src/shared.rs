//! Many documents around one destination list. Every workload's `proxy.json` carries every
//! destination, so at scale the documents of one pass are one large shared part (hundreds of
//! KB) between small ones of their own. [`SharedDestinations`] renders that part once, as JSON
//! and as a gzip deflate segment; [`Document`] renders a workload's own parts around it. The
//! result is, byte for byte, the JSON [`ProxyConfig::to_compact_json`] writes, and a gzip file
//! any decoder reads (one member whose deflate stream is three independently compressed
//! pieces, as `gzip` itself would read them): a proxy of any release takes it.

use serde::Serialize;

use crate::encoding::{GZIP_ABOVE, Stored};
use crate::model::{Destination, Inbound, Limits, ProxyConfig, Tracing, Workload, is_default};

/// The destination list of a pass, rendered once.
pub struct SharedDestinations {
    json: String,
    deflated: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl SharedDestinations {
    /// `destinations`' JSON and its deflate segment.
    pub fn new(destinations: &[Destination]) -> Self {
        let json = serde_json::to_string(destinations).unwrap_or_else(|_| "[]".to_owned());
        let mut crc = crc32fast::Hasher::new();
        crc.update(json.as_bytes());
        Self {
            deflated: deflate(json.as_bytes(), false),
            json,
            crc,
        }
    }
}

impl SharedDestinations {
    /// The destinations' JSON.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The destinations alone as a file ([`crate::split::DESTINATIONS_FILE`]), stored by
    /// [`crate::encoding::encode`]'s rule, the compressed piece reused.
    pub fn file(&self) -> Stored {
        if self.json.len() <= GZIP_ABOVE {
            return Stored::Text(self.json.clone());
        }
        Stored::Gzip(gzip_member(
            &[&self.deflated, &deflate(b"", true)],
            self.crc.clone(),
            self.json.len(),
        ))
    }
}

/// One gzip member of deflate `pieces` (the last one final), of input with `crc` and `length`.
fn gzip_member(pieces: &[&[u8]], crc: crc32fast::Hasher, length: usize) -> Vec<u8> {
    // RFC 1952: magic, deflate, no flags, no time, no extra flags, OS unknown.
    let mut gzip = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    for piece in pieces {
        gzip.extend_from_slice(piece);
    }
    gzip.extend_from_slice(&crc.finalize().to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952).
    gzip.extend_from_slice(&(length as u32).to_le_bytes());
    gzip
}

/// A workload's document around the shared destinations: what comes before them and after.
pub struct Document {
    head: String,
    tail: String,
}

/// The fields before `destinations`, in the document's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Head<'a> {
    version: u32,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    requires: &'a [String],
    workload: &'a Workload,
    inbound: &'a Inbound,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    shared_destinations: bool,
}

/// The fields after it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tail<'a> {
    opaque_ports: &'a [u16],
    #[serde(skip_serializing_if = "Option::is_none")]
    tracing: Option<&'a Tracing>,
    #[serde(skip_serializing_if = "default_limits")]
    limits: &'a Limits,
}

fn default_limits(limits: &&Limits) -> bool {
    is_default(*limits)
}

impl Document {
    /// `config`'s own parts; its `destinations` are ignored (the shared ones take their place).
    pub fn new(config: &ProxyConfig) -> Self {
        // Every field named: a field added to ProxyConfig fails to compile here until it is
        // rendered in its place.
        let ProxyConfig {
            version,
            requires,
            workload,
            inbound,
            shared_destinations,
            destinations: _,
            opaque_ports,
            tracing,
            limits,
        } = config;
        let head = Head {
            version: *version,
            requires,
            workload,
            inbound,
            shared_destinations: *shared_destinations,
        };
        let tail = Tail {
            opaque_ports,
            tracing: tracing.as_ref(),
            limits,
        };
        // Both are JSON objects with at least one field (`version`, `opaquePorts`): the head
        // loses its `}` and gains the key, the tail loses its `{` and gains the comma.
        let mut head = serde_json::to_string(&head).unwrap_or_default();
        head.pop();
        head.push_str(",\"destinations\":");
        let tail = serde_json::to_string(&tail).unwrap_or_default();
        Self {
            head,
            tail: format!(",{}", tail.get(1..).unwrap_or_default()),
        }
    }

    /// The document's bytes, in three parts (to hash without joining them).
    pub fn parts<'a>(&'a self, shared: &'a SharedDestinations) -> [&'a [u8]; 3] {
        [
            self.head.as_bytes(),
            shared.json.as_bytes(),
            self.tail.as_bytes(),
        ]
    }

    /// The whole JSON.
    pub fn json(&self, shared: &SharedDestinations) -> String {
        self.parts(shared)
            .iter()
            .map(|part| String::from_utf8_lossy(part))
            .collect()
    }

    /// The document as stored ([`crate::encoding::encode`]'s rule): plain up to
    /// [`GZIP_ABOVE`] bytes, gzip above, with the shared part compressed once for all.
    pub fn encode(&self, shared: &SharedDestinations) -> Stored {
        let length: usize = self.parts(shared).iter().map(|p| p.len()).sum();
        if length <= GZIP_ABOVE {
            return Stored::Text(self.json(shared));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(self.head.as_bytes());
        crc.combine(&shared.crc);
        crc.update(self.tail.as_bytes());
        Stored::Gzip(gzip_member(
            &[
                &deflate(self.head.as_bytes(), false),
                &shared.deflated,
                &deflate(self.tail.as_bytes(), true),
            ],
            crc,
            length,
        ))
    }
}

/// `input` as raw deflate, compressed on its own: ending the stream when `last`, else with a
/// sync flush (byte-aligned, not final), so that another piece may follow it.
fn deflate(input: &[u8], last: bool) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress, Status};
    let mut compress = Compress::new(Compression::fast(), false);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(input.len() / 4 + 64);
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let read = usize::try_from(compress.total_in()).unwrap_or(input.len());
        // Compressing into a Vec with room cannot fail; the loop ends either way.
        let status = compress
            .compress_vec(&input[read.min(input.len())..], &mut out, flush)
            .unwrap_or(Status::StreamEnd);
        let all_read = usize::try_from(compress.total_in()).is_ok_and(|n| n == input.len());
        match status {
            Status::StreamEnd => return out,
            _ if !last && all_read && out.len() < out.capacity() => return out,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::decode;

    /// A document with every optional field set, and destinations enough to be compressed.
    fn config(destinations: usize) -> ProxyConfig {
        let destination = |i: usize| {
            serde_json::json!({"name": format!("svc-{i}.shop"), "clusterIps": [format!("10.96.0.{}", i % 250)],
                "ports": [{"port": 8080, "endpoints": [
                    {"ip": format!("10.244.{}.{}", i / 250, i % 250), "port": 8080,
                     "identity": format!("spiffe://cluster.local/ns/shop/sa/svc-{i}")}]}]})
        };
        let document = serde_json::json!({
            "version": 2,
            "requires": ["authorization"],
            "workload": {"namespace": "shop", "name": "order", "identity": "spiffe://cluster.local/ns/shop/sa/order"},
            "inbound": {"mtlsMode": "STRICT", "defaultAuthorization": "deny"},
            "destinations": (0..destinations).map(destination).collect::<Vec<_>>(),
            "opaquePorts": [5432],
            "tracing": {"collector": "jaeger.observability:4317", "samplingPercent": 10},
            "limits": {"maxConnections": 50},
        });
        serde_json::from_value(document).expect("a valid document")
    }

    #[test]
    fn the_document_is_the_one_to_compact_json_writes_and_decodes_from_its_gzip() {
        for (destinations, compressed) in [(0, false), (3, false), (2_000, true)] {
            let config = config(destinations);
            let shared = SharedDestinations::new(&config.destinations);
            let document = Document::new(&config);
            let whole = config.to_compact_json();
            assert_eq!(document.json(&shared), whole, "{destinations} destinations");
            assert_eq!(document.parts(&shared).concat(), whole.as_bytes());
            match document.encode(&shared) {
                Stored::Text(text) => {
                    assert!(!compressed, "{destinations} destinations stored plain");
                    assert_eq!(text, whole);
                }
                Stored::Gzip(gzip) => {
                    assert!(compressed, "{destinations} destinations compressed");
                    assert!(gzip.len() * 5 < whole.len(), "{} bytes", gzip.len());
                    assert_eq!(
                        decode(&gzip).expect("one gzip member").as_ref(),
                        whole.as_bytes()
                    );
                }
            }
        }
    }

    #[test]
    fn the_destinations_file_is_their_json_and_decodes_from_its_gzip() {
        for (destinations, compressed) in [(3, false), (2_000, true)] {
            let config = config(destinations);
            let json = serde_json::to_string(&config.destinations).expect("JSON");
            match SharedDestinations::new(&config.destinations).file() {
                Stored::Text(text) => {
                    assert!(!compressed, "{destinations} destinations stored plain");
                    assert_eq!(text, json);
                }
                Stored::Gzip(gzip) => {
                    assert!(compressed, "{destinations} destinations compressed");
                    assert_eq!(decode(&gzip).expect("gzip").as_ref(), json.as_bytes());
                }
            }
        }
    }

    #[test]
    fn optional_fields_left_out_are_left_out_alike() {
        let mut config = config(1);
        config.requires.clear();
        config.tracing = None;
        config.limits = Limits::default();
        let shared = SharedDestinations::new(&config.destinations);
        assert_eq!(
            Document::new(&config).json(&shared),
            config.to_compact_json()
        );
    }

    #[test]
    fn deflate_pieces_end_byte_aligned_unless_last() {
        let piece = deflate(b"abc", false);
        assert!(
            piece.ends_with(&[0, 0, 0xff, 0xff]),
            "a sync flush: {piece:?}"
        );
        let empty = deflate(b"", true);
        let mut inflated = Vec::new();
        let mut decoder = flate2::read::DeflateDecoder::new(&empty[..]);
        std::io::Read::read_to_end(&mut decoder, &mut inflated).expect("a valid stream");
        assert!(inflated.is_empty());
    }
}
