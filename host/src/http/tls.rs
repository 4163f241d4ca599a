//! HTTPS listeners: which certificate a handshake gets.
//!
//! The name the client asks for (SNI) picks the tenant, with the same host
//! matching as requests; that tenant's certificate is served if it is valid
//! for the name. A tenant's certificate names only its own hosts (checked
//! when its policy loads), and it is only ever served for a name it is valid
//! for, so no tenant answers a handshake for another tenant's host. Failing
//! that, the server's default certificate (`[tls]` of the server or site
//! config); failing that, the handshake fails. Tenants are looked up at each
//! handshake, so a reload's certificates serve from the next connection on.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::site::tls::Certificate;
use crate::tenants::Registry;

/// The certificate for each handshake, from the tenants of this moment.
pub struct TenantCertificates {
    registry: Arc<Registry>,
    default: Option<Certificate>,
}

impl TenantCertificates {
    pub fn new(registry: Arc<Registry>, default: Option<Certificate>) -> Self {
        TenantCertificates { registry, default }
    }

    /// The certificate for a handshake that asked for `server_name`.
    pub fn choose(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let tenants = self.registry.current();
            let tenant_own = tenants
                .for_host(Some(name))
                .and_then(|tenant| tenant.tls.as_ref())
                .filter(|certificate| certificate.valid_for(name));
            if let Some(certificate) = tenant_own {
                return Some(certificate.key.clone());
            }
        }
        self.default
            .as_ref()
            .map(|certificate| certificate.key.clone())
    }
}

impl std::fmt::Debug for TenantCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCertificates")
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for TenantCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        self.choose(name.as_deref())
    }
}

/// The TLS config of the HTTPS listeners: TLS 1.2 and 1.3 with the ring
/// provider, certificates from [`TenantCertificates`], ALPN `h2` and
/// `http/1.1`.
pub fn server_config(
    certificates: TenantCertificates,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = crate::site::tls::provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certificates));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
