//! Certificates for HTTPS listeners: the `[tls]` table of a site config, a
//! server config (the default certificate) and a tenant's policy, read and
//! checked once when the config is loaded.
//!
//! ```toml
//! [tls]
//! certificate = "certs/example.com.pem"   # the chain, leaf first (PEM)
//! key = "certs/example.com.key"           # its private key (PEM: PKCS#8, PKCS#1 or SEC1)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use toml::Spanned;

use super::hosts::HostPattern;

/// The largest certificate chain or key file read.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// The `[tls]` table as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub certificate: Spanned<PathBuf>,
    pub key: Spanned<PathBuf>,
}

/// A certificate chain with its key, ready to serve, and the DNS names it
/// is valid for.
#[derive(Clone)]
pub struct Certificate {
    pub key: Arc<CertifiedKey>,
    /// Its subject alternative names (DNS), lowercase; `*.name` for a
    /// wildcard.
    pub names: Vec<String>,
    /// The certificate file, for messages.
    pub file: PathBuf,
    /// The key file.
    pub key_file: PathBuf,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("file", &self.file)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is larger than {} KiB", path.display(), MAX_PEM_BYTES >> 10)]
    TooLarge { path: PathBuf },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {message}", path.display())]
    Bad { path: PathBuf, message: String },
}

impl Certificate {
    /// Read and check a chain and its key: both parse, the key is one the
    /// ring provider can sign with, and it belongs to the leaf.
    pub fn load(certificate: &Path, key: &Path) -> Result<Certificate, CertificateError> {
        let chain_pem = read_pem(certificate)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|error| CertificateError::Bad {
                path: certificate.to_path_buf(),
                message: format!("not a PEM certificate chain: {error}"),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(CertificateError::NoCertificate {
                path: certificate.to_path_buf(),
            });
        };
        let key_pem = read_pem(key)?;
        let private =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| CertificateError::Bad {
                path: key.to_path_buf(),
                message: format!("not a PEM private key: {error}"),
            })?;
        let provider = provider();
        let certified =
            CertifiedKey::from_der(chain.clone(), private, &provider).map_err(|error| {
                CertificateError::Bad {
                    path: key.to_path_buf(),
                    message: format!("not the key of {}: {error}", certificate.display()),
                }
            })?;
        let parsed =
            webpki::EndEntityCert::try_from(leaf).map_err(|error| CertificateError::Bad {
                path: certificate.to_path_buf(),
                message: format!("its first certificate does not parse: {error:?}"),
            })?;
        let names = parsed
            .valid_dns_names()
            .map(|name| name.to_ascii_lowercase())
            .collect();
        Ok(Certificate {
            key: Arc::new(certified),
            names,
            file: certificate.to_path_buf(),
            key_file: key.to_path_buf(),
        })
    }

    /// Whether it is valid for `server_name` (a DNS name from SNI).
    pub fn valid_for(&self, server_name: &str) -> bool {
        let Ok(name) = ServerName::try_from(server_name) else {
            return false;
        };
        let Some(leaf) = self.key.cert.first() else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
    }

    /// The names it holds that none of `hosts` covers (a certificate a
    /// tenant brings may only name the tenant's own hosts).
    pub fn names_outside(&self, hosts: &[HostPattern]) -> Vec<String> {
        self.names
            .iter()
            .filter(|name| !hosts.iter().any(|host| covers(host, name)))
            .cloned()
            .collect()
    }
}

/// Whether `host` covers every name `name` stands for: an exact name
/// itself, a `*.suffix` pattern any name under the suffix (a wildcard
/// certificate name `*.a.b` only under a pattern `*.a.b` or `*.b`).
fn covers(host: &HostPattern, name: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(suffix) => match host {
            // `*.x.com` names a.x.com, b.x.com, ...: covered by a pattern
            // whose suffix is `.x.com` or a parent of it.
            HostPattern::Wildcard(pattern) => {
                let with_dot = format!(".{suffix}");
                with_dot.ends_with(&**pattern)
            }
            HostPattern::Exact(_) => false,
        },
        None => host.matches(name),
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, CertificateError> {
    use std::io::Read;
    let read = |source| CertificateError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(CertificateError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

impl TlsFile {
    /// Load the certificate and key the table names, relative to `base`,
    /// each a real path inside one of `allowed_roots` when given (a
    /// tenant's); a problem is reported at the key that names the file.
    pub(crate) fn check(
        &self,
        base: &Path,
        allowed_roots: Option<&[PathBuf]>,
        problems: &mut super::config::Problems,
    ) -> Option<Certificate> {
        let place = |written: &Spanned<PathBuf>, problems: &mut super::config::Problems| {
            let path = base.join(written.get_ref());
            if let Some(roots) = allowed_roots {
                match path.canonicalize() {
                    Ok(real) if roots.iter().any(|root| real.starts_with(root)) => {}
                    Ok(_) => {
                        problems.at(
                            written.span(),
                            format!(
                                "[tls] {} is outside the allowed roots",
                                written.get_ref().display()
                            ),
                        );
                        return None;
                    }
                    Err(error) => {
                        problems.at(
                            written.span(),
                            format!("[tls] cannot read {}: {error}", path.display()),
                        );
                        return None;
                    }
                }
            }
            Some(path)
        };
        let certificate = place(&self.certificate, problems)?;
        let key = place(&self.key, problems)?;
        match Certificate::load(&certificate, &key) {
            Ok(loaded) => Some(loaded),
            Err(error) => {
                let span = match &error {
                    CertificateError::Read { path, .. }
                    | CertificateError::TooLarge { path }
                    | CertificateError::Bad { path, .. }
                        if *path == key =>
                    {
                        self.key.span()
                    }
                    _ => self.certificate.span(),
                };
                problems.at(span, format!("[tls] {error}"));
                None
            }
        }
    }
}

/// The cryptography every TLS connection of moonwall uses: rustls with
/// *ring* (TLS 1.2 and 1.3, X25519 and the NIST curves). rustls marks this
/// provider deprecated because it has no post-quantum key exchange; the
/// provider that has (aws-lc-rs) needs cmake and adds minutes to every
/// build, so moonwall does without post-quantum key exchange for now.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> HostPattern {
        HostPattern::parse(text).unwrap()
    }

    #[test]
    fn a_certificates_names_must_be_the_tenants_hosts() {
        let hosts = [pattern("a.example"), pattern("*.shop.example")];
        assert!(covers(&hosts[0], "a.example"));
        assert!(!covers(&hosts[0], "b.example"));
        assert!(covers(&hosts[1], "x.shop.example"));
        assert!(covers(&hosts[1], "*.shop.example"));
        assert!(covers(&hosts[1], "*.eu.shop.example"));
        assert!(!covers(&hosts[1], "*.example"));
        assert!(!covers(&hosts[0], "*.a.example"));
        assert!(!covers(&hosts[1], "shop.example"));
    }
}
