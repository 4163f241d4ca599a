//! TLS out (`sock:sslhandshake`, `resty.http` with `https://`): the
//! rustls client configurations, built here once and shared, so that a
//! later user (a proxied `https://` upstream) makes the same checks.
//!
//! - [`TlsRoots`]: the server's trust anchors, loaded once per server: the
//!   CA bundle of the server config's `tls_ca_file` if it has one (read when
//!   the config is loaded, its problems reported there), else the system's
//!   roots (`rustls-native-certs`: `SSL_CERT_FILE`/`SSL_CERT_DIR`, else
//!   `/etc/ssl/certs`), loaded on first use.
//! - [`TlsClients`]: one tenant's pair of client configurations, verifying
//!   (the chain to a root, the name, the validity dates) and not verifying
//!   (only for a policy granting `outbound_tls_no_verify`). Each tenant has
//!   its own TLS session cache, so that no tenant resumes another's session.
//!
//! Only the `ring` provider is used (TLS 1.2 and 1.3, rustls's safe
//! defaults); no client certificates, no OCSP stapling requests, no 0-RTT.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The longest server name (SNI) a script may give.
pub const MAX_SERVER_NAME: usize = 253;
/// TLS sessions each tenant's configurations keep for resumption.
const SESSIONS_PER_TENANT: usize = 64;
/// The largest CA bundle file read (`tls_ca_file`).
const MAX_CA_FILE: u64 = 16 << 20;

/// The ring provider, the one every TLS connection of moonwall uses.
fn provider() -> Arc<CryptoProvider> {
    crate::site::tls::provider()
}

/// Where the server's trust anchors come from, and the verifier built from
/// them (once).
#[derive(Debug, Default)]
pub struct TlsRoots {
    /// The server config's `tls_ca_file`, read and checked; `None`: the
    /// system's roots.
    ca_file: Option<Arc<RootCertStore>>,
    verifier: OnceLock<Result<Arc<dyn ServerCertVerifier>, String>>,
}

impl TlsRoots {
    /// The system's roots, loaded on first use.
    pub fn system() -> TlsRoots {
        TlsRoots::default()
    }

    /// The certificates of the PEM bundle `file` (and no others): an error
    /// names the file and what is wrong with it.
    pub fn from_ca_file(file: &Path) -> Result<TlsRoots, String> {
        use rustls::pki_types::pem::PemObject;
        let shown = file.display();
        let size = std::fs::metadata(file)
            .map_err(|error| format!("tls_ca_file {shown}: {error}"))?
            .len();
        if size > MAX_CA_FILE {
            return Err(format!(
                "tls_ca_file {shown}: too big ({size} bytes; at most {MAX_CA_FILE})"
            ));
        }
        let text = std::fs::read(file).map_err(|error| format!("tls_ca_file {shown}: {error}"))?;
        let mut roots = RootCertStore::empty();
        for (n, cert) in CertificateDer::pem_slice_iter(&text).enumerate() {
            let cert = cert
                .map_err(|error| format!("tls_ca_file {shown}: certificate {}: {error}", n + 1))?;
            roots.add(cert).map_err(|error| {
                format!(
                    "tls_ca_file {shown}: certificate {} is not a usable CA certificate: {error}",
                    n + 1
                )
            })?;
        }
        if roots.is_empty() {
            return Err(format!(
                "tls_ca_file {shown}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
            ));
        }
        Ok(TlsRoots {
            ca_file: Some(Arc::new(roots)),
            verifier: OnceLock::new(),
        })
    }

    /// The verifier of certificates against these roots.
    pub fn verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, String> {
        self.verifier
            .get_or_init(|| {
                let roots = match &self.ca_file {
                    Some(roots) => roots.clone(),
                    None => Arc::new(system_roots()),
                };
                if roots.is_empty() {
                    // Nothing is trusted: every certificate is refused.
                    return Ok(Arc::new(NoVerifier { trust: false }) as _);
                }
                WebPkiServerVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map(|verifier| verifier as _)
                    .map_err(|error| format!("TLS: no usable trust anchors: {error}"))
            })
            .clone()
    }
}

/// The system's trust anchors (those that parse; the others are logged).
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!("TLS: loading the system's root certificates: {error}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!("TLS: {ignored} of the system's root certificates are unusable");
    }
    if added == 0 {
        tracing::warn!(
            "TLS: no system root certificates (install ca-certificates, or set tls_ca_file in the server config): every verified handshake will fail"
        );
    }
    roots
}

/// A tenant's client configurations: built on first use, from the server's
/// roots.
#[derive(Debug, Default)]
pub struct TlsClients {
    roots: Arc<TlsRoots>,
    configs: OnceLock<Result<ConfigPair, String>>,
}

/// The verifying configuration, and the one that does not verify.
type ConfigPair = (Arc<ClientConfig>, Arc<ClientConfig>);

impl TlsClients {
    pub fn new(roots: Arc<TlsRoots>) -> TlsClients {
        TlsClients {
            roots,
            configs: OnceLock::new(),
        }
    }

    /// The configuration that verifies the server's certificate (`verify`),
    /// or the one that does not.
    pub fn config(&self, verify: bool) -> Result<Arc<ClientConfig>, String> {
        let (verifying, not_verifying) = self
            .configs
            .get_or_init(|| {
                let verifier = self.roots.verifier()?;
                Ok((
                    Arc::new(client_config(verifier)?),
                    Arc::new(client_config(Arc::new(NoVerifier { trust: true }))?),
                ))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        Ok(if verify { verifying } else { not_verifying }.clone())
    }
}

fn client_config(verifier: Arc<dyn ServerCertVerifier>) -> Result<ClientConfig, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::in_memory_sessions(SESSIONS_PER_TENANT);
    Ok(config)
}

/// No chain check: with `trust`, any certificate is accepted (`verify =
/// false`); without, none is (no trust anchors). The handshake's signatures
/// are still checked (the peer holds the key of the certificate it
/// presents).
#[derive(Debug)]
struct NoVerifier {
    trust: bool,
}

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.trust {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server name a script gave (SNI, and the name the certificate must be
/// valid for): a DNS name or an IP address, checked before use.
pub fn server_name(bytes: &[u8]) -> Result<ServerName<'static>, String> {
    let shown = || {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]);
        let more = if bytes.len() > 64 { "..." } else { "" };
        format!("\"{}{more}\"", text.escape_debug())
    };
    if bytes.is_empty() || bytes.len() > MAX_SERVER_NAME {
        return Err(format!(
            "bad server name {}: 1 to {MAX_SERVER_NAME} bytes",
            shown()
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| format!("bad server name {}", shown()))?;
    let text = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(&text);
    ServerName::try_from(bare.to_string()).map_err(|_| {
        format!(
            "bad server name {}: not a DNS name or an IP address",
            shown()
        )
    })
}

/// A failed handshake's error, as a script sees it: "certificate verify
/// failed: <why>" (as OpenResty says it) when the certificate was refused,
/// else "handshake failed: <why>".
pub fn handshake_error(error: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "handshake failed: closed by the peer".into(),
            _ => format!("handshake failed: {}", super::conn::io_message(error)),
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(why) => {
            let why = match why {
                C::UnknownIssuer => "unknown issuer (the certificate is not signed by a trusted CA: the system's roots, or the server config's tls_ca_file)".to_string(),
                C::NotValidForName => "the certificate is not valid for the server name".to_string(),
                C::BadSignature => "bad signature".to_string(),
                C::Expired => "the certificate has expired".to_string(),
                C::NotValidYet => "the certificate is not valid yet".to_string(),
                C::Revoked => "the certificate is revoked".to_string(),
                C::BadEncoding => "the certificate is malformed".to_string(),
                other => other.to_string(),
            };
            format!("certificate verify failed: {why}")
        }
        other => format!("handshake failed: {other}"),
    }
}
