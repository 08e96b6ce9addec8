//! The workload's identity: its SPIFFE certificate and key and the mesh CA bundle, mounted from
//! Secret `braid-identity-<workload>` at `/etc/braid/identity/`. Loading turns them into the two
//! rustls configs of the data path: the inbound server config (peers must present a certificate
//! of the mesh CA) and the outbound client config (the peer's chain is checked against the CA;
//! its SPIFFE ID is then compared with the one the config expects, see [`spiffe_id`]).
//! Mesh certificates carry only a URI SAN, so the stock server verifier (which matches DNS names)
//! cannot be used: [`MeshServerVerifier`] checks the chain and usage and leaves the name to the
//! caller.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Why an identity was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file is not PEM of the expected kind.
    #[error("{file}: {message}")]
    Pem {
        /// `tls.crt`, `tls.key` or `ca.crt`.
        file: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The certificate has no SPIFFE ID.
    #[error("tls.crt: {0}")]
    Certificate(String),
    /// rustls refused the material.
    #[error("{0}")]
    Tls(#[from] rustls::Error),
}

/// A loaded identity.
#[derive(Debug)]
pub struct Identity {
    /// The workload's SPIFFE ID, from its certificate.
    pub spiffe_id: String,
    /// When the certificate expires (Unix seconds).
    pub not_after: i64,
    /// For the inbound listener.
    pub server: Arc<ServerConfig>,
    /// For connections to peers.
    pub client: Arc<ClientConfig>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SPIFFE ID (the `spiffe://` URI SAN) of a DER certificate, and its expiry.
pub fn spiffe_id(der: &[u8]) -> Result<(String, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let not_after = cert.validity().not_after.timestamp();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .ok_or("no subject alternative name")?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                Some((uri.to_string(), not_after))
            }
            _ => None,
        })
        .ok_or_else(|| "no spiffe:// URI SAN".to_string())
}

/// Builds an identity from the three PEM files' contents.
pub fn load(cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<Identity, IdentityError> {
    let pem = |file, e: rustls::pki_types::pem::Error| IdentityError::Pem {
        file,
        message: e.to_string(),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem("tls.crt", e))?;
    let leaf = chain.first().ok_or(IdentityError::Pem {
        file: "tls.crt",
        message: "holds no certificate".into(),
    })?;
    let (spiffe_id, not_after) = spiffe_id(leaf).map_err(IdentityError::Certificate)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem("tls.key", e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(ca.map_err(|e| pem("ca.crt", e))?)?;
    }
    if roots.is_empty() {
        return Err(IdentityError::Pem {
            file: "ca.crt",
            message: "holds no certificate".into(),
        });
    }
    let roots = Arc::new(roots);
    let provider = provider();

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![MESH_ALPN.to_vec()];

    let verifier = MeshServerVerifier {
        roots,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)?;
    client.resumption = rustls::client::Resumption::in_memory_sessions(256);
    client.alpn_protocols = vec![MESH_ALPN.to_vec()];
    Ok(Identity {
        spiffe_id,
        not_after,
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The ALPN protocol a proxy offers when it connects to a peer's proxy: the inbound side tells a
/// mesh peer's handshake from the application's own TLS by it.
pub const MESH_ALPN: &[u8] = b"braid-mesh/1";

/// Verifies a peer's chain against the mesh CA bundle, for server use, without a name check (the
/// caller compares SPIFFE IDs after the handshake).
#[derive(Debug)]
pub struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA and a leaf with `spiffe`, as the operator issues them (rcgen, ECDSA P-256).
    pub(crate) fn issue(spiffe: &str) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let mut leaf = CertificateParams::new(Vec::new()).expect("params");
        leaf.subject_alt_names = vec![rcgen::SanType::URI(spiffe.try_into().expect("uri"))];
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = leaf.signed_by(&key, &issuer).expect("leaf");
        (cert.pem(), key.serialize_pem(), ca_cert.pem())
    }

    #[test]
    fn loads_an_operator_style_identity_and_reads_its_spiffe_id() {
        let id = "spiffe://cluster.local/ns/shop/sa/order";
        let (cert, key, ca) = issue(id);
        let identity = load(cert.as_bytes(), key.as_bytes(), ca.as_bytes()).expect("loads");
        assert_eq!(identity.spiffe_id, id);
        assert!(identity.not_after > 0);
    }

    #[test]
    fn bad_files_are_refused_naming_the_file() {
        let (cert, key, ca) = issue("spiffe://cluster.local/ns/shop/sa/order");
        let error = |c: &str, k: &str, a: &str| {
            load(c.as_bytes(), k.as_bytes(), a.as_bytes())
                .expect_err("refused")
                .to_string()
        };
        assert!(error("", &key, &ca).starts_with("tls.crt"));
        assert!(error(&cert, "junk", &ca).starts_with("tls.key"));
        assert!(error(&cert, &key, "").starts_with("ca.crt"));
        let (no_spiffe, no_spiffe_key, _) = issue("https://example.invalid/x");
        assert_eq!(
            error(&no_spiffe, &no_spiffe_key, &ca),
            "tls.crt: no spiffe:// URI SAN"
        );
    }
}
