//! The mesh certificate authority: a root (made here, or supplied by the user in Secret
//! `braid-system/braid-ca`), the ECDSA P-256 leaf certificates it issues to workloads with their
//! SPIFFE ID as URI SAN, and when a leaf must be renewed. Times are Unix seconds, passed in, so
//! every decision is a pure function.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused to build or sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A supplied PEM could not be read.
    #[error("{what} is not a usable PEM certificate: {message}")]
    BadPem {
        /// Which input.
        what: &'static str,
        /// The parser's complaint.
        message: String,
    },
    /// A time outside what X.509 can hold.
    #[error("time {0} is out of range")]
    Time(i64),
}

/// The root CA. The private key is held in memory only; `Debug` does not print it.
pub struct CertificateAuthority {
    /// PEM of the root certificate.
    pub cert_pem: String,
    key_pem: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the root's DER, hex: identifies which root issued a leaf.
    pub fingerprint: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A freshly issued certificate and its key.
pub struct Issued {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

fn to_time(seconds: i64) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| CertError::Time(seconds))
}

fn fingerprint_of(pem: &str) -> Result<String, CertError> {
    let der = der_of(pem, "the CA certificate")?;
    Ok(Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn der_of(pem: &str, what: &'static str) -> Result<Vec<u8>, CertError> {
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| CertError::BadPem {
            what,
            message: e.to_string(),
        })?;
    Ok(parsed.contents)
}

impl CertificateAuthority {
    /// A new self-signed root for `trust_domain`, valid from `now` for `lifetime_seconds`.
    pub fn generate(
        trust_domain: &str,
        now: i64,
        lifetime_seconds: i64,
    ) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "braid");
        name.push(DnType::CommonName, format!("braid root CA {trust_domain}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = to_time(now - 60)?;
        params.not_after = to_time(now + lifetime_seconds)?;
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A root from PEM (a supplied `braid-ca` Secret, or one the operator made earlier).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let der = der_of(cert_pem, "the CA certificate")?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| CertError::BadPem {
                what: "the CA certificate",
                message: e.to_string(),
            })?;
        KeyPair::from_pem(key_pem).map_err(|e| CertError::BadPem {
            what: "the CA key",
            message: e.to_string(),
        })?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            not_after: cert.validity().not_after.timestamp(),
            fingerprint: fingerprint_of(cert_pem)?,
        })
    }

    /// The key PEM, for storing the root in its Secret. Never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A workload leaf: SPIFFE ID as the only SAN, client and server auth, `lifetime_seconds` long.
    pub fn issue_workload(
        &self,
        spiffe_id: &str,
        now: i64,
        lifetime_seconds: i64,
    ) -> Result<Issued, CertError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params, now, lifetime_seconds)
    }

    /// A server certificate for DNS names (the webhook's serving certificate).
    pub fn issue_server(
        &self,
        dns_names: &[String],
        now: i64,
        lifetime_seconds: i64,
    ) -> Result<Issued, CertError> {
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, now, lifetime_seconds)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        now: i64,
        lifetime_seconds: i64,
    ) -> Result<Issued, CertError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        // Backdated a minute for clock skew; never outliving the root.
        let not_before = now - 60;
        let not_after = (now + lifetime_seconds).min(self.not_after);
        params.not_before = to_time(not_before)?;
        params.not_after = to_time(not_after)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_before,
            not_after,
        })
    }
}

/// What the operator records (as annotations) about a leaf it issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafRecord {
    /// The SPIFFE ID (or DNS names) it carries.
    pub subject: String,
    /// [`CertificateAuthority::fingerprint`] of its issuer.
    pub ca_fingerprint: String,
    /// Validity, Unix seconds.
    pub not_before: i64,
    /// Validity, Unix seconds.
    pub not_after: i64,
}

/// Why a leaf must be (re)issued, or `None` when the existing one is good. A leaf is renewed at
/// half its lifetime, so a proxy always holds a certificate with half its life left.
pub fn renewal_reason(
    existing: Option<&LeafRecord>,
    subject: &str,
    ca: &CertificateAuthority,
    now: i64,
) -> Option<&'static str> {
    let Some(leaf) = existing else {
        return Some("no certificate yet");
    };
    if leaf.subject != subject {
        Some("the identity changed")
    } else if leaf.ca_fingerprint != ca.fingerprint {
        Some("the CA changed")
    } else if now >= leaf.not_before + (leaf.not_after - leaf.not_before) / 2 {
        Some("half of its lifetime has passed")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    #[test]
    fn issues_a_leaf_with_the_spiffe_id_that_chains_to_the_root() {
        let ca = CertificateAuthority::generate("cluster.local", NOW, 365 * DAY).expect("root");
        let id = "spiffe://cluster.local/ns/shop/sa/payment";
        let leaf = ca.issue_workload(id, NOW, DAY).expect("leaf");
        let der = der_of(&leaf.cert_pem, "leaf").expect("leaf PEM");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("leaf parses");
        let sans = cert
            .subject_alternative_name()
            .expect("SAN ext")
            .expect("has SANs");
        let uris: Vec<_> = sans
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        assert_eq!(uris, [id]);
        assert_eq!(
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp(),
            DAY + 60
        );
        let root_der = der_of(&ca.cert_pem, "root").expect("root PEM");
        let (_, root) = x509_parser::parse_x509_certificate(&root_der).expect("root parses");
        cert.verify_signature(Some(root.public_key()))
            .expect("the leaf is signed by the root");
        assert!(
            !format!("{ca:?}").contains("PRIVATE KEY"),
            "Debug must not print the key"
        );
    }

    #[test]
    fn a_supplied_root_is_used_as_it_is() {
        let made = CertificateAuthority::generate("example.org", NOW, 10 * DAY).expect("root");
        let loaded =
            CertificateAuthority::from_pem(&made.cert_pem, made.key_pem()).expect("reload");
        assert_eq!(
            (loaded.fingerprint.as_str(), loaded.not_after),
            (made.fingerprint.as_str(), made.not_after)
        );
        let leaf = loaded
            .issue_workload("spiffe://example.org/ns/a/sa/b", NOW, 30 * DAY)
            .expect("leaf");
        assert_eq!(
            leaf.not_after, made.not_after,
            "a leaf never outlives its root"
        );
        assert!(CertificateAuthority::from_pem("not a pem", made.key_pem()).is_err());
    }

    #[test]
    fn renews_when_missing_changed_or_past_half_life() {
        let ca = CertificateAuthority::generate("cluster.local", NOW, 365 * DAY).expect("root");
        let id = "spiffe://cluster.local/ns/shop/sa/order";
        let record = LeafRecord {
            subject: id.into(),
            ca_fingerprint: ca.fingerprint.clone(),
            not_before: NOW,
            not_after: NOW + DAY,
        };
        assert_eq!(
            renewal_reason(None, id, &ca, NOW),
            Some("no certificate yet")
        );
        assert_eq!(
            renewal_reason(Some(&record), id, &ca, NOW + DAY / 2 - 1),
            None
        );
        assert_eq!(
            renewal_reason(Some(&record), id, &ca, NOW + DAY / 2),
            Some("half of its lifetime has passed")
        );
        assert_eq!(
            renewal_reason(
                Some(&record),
                "spiffe://cluster.local/ns/shop/sa/x",
                &ca,
                NOW
            ),
            Some("the identity changed")
        );
        let other = CertificateAuthority::generate("cluster.local", NOW, DAY).expect("other root");
        assert_eq!(
            renewal_reason(Some(&record), id, &other, NOW),
            Some("the CA changed")
        );
    }
}
