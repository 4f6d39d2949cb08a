//! TLS for connections to PostgreSQL, with `sslmode` meaning what libpq's documentation says it means.
//!
//! | sslmode     | encrypts            | checks the chain | checks the host name |
//! |-------------|---------------------|------------------|----------------------|
//! | disable     | no                  | –                | –                    |
//! | allow       | only if plain fails | no               | no                   |
//! | prefer      | if the server can   | no               | no                   |
//! | require     | yes                 | no               | no                   |
//! | verify-ca   | yes                 | yes              | no                   |
//! | verify-full | yes                 | yes              | yes                  |
//!
//! rustls verifies chain and name by default, which is libpq's `verify-full`; for the weaker modes this
//! module installs verifiers that skip exactly the checks libpq skips, while still verifying the handshake
//! signatures (so the session is encrypted to whoever holds the presented key). SNI is always sent for a
//! host name: Neon routes connections by it.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// How a connection uses TLS; the values and their meanings are libpq's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, ts_rs::TS)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never encrypt.
    Disable,
    /// Try without TLS first, then with TLS if the server insists.
    Allow,
    /// Use TLS if the server offers it, without checking its certificate.
    #[default]
    Prefer,
    /// Always encrypt, without checking the certificate.
    Require,
    /// Always encrypt, and check that a trusted authority signed the certificate.
    VerifyCa,
    /// Always encrypt, check the authority and that the certificate names the host.
    VerifyFull,
}

impl SslMode {
    /// Every mode, in libpq's order from weakest to strongest.
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The mode's libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the mode refuses an unencrypted connection.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl std::str::FromStr for SslMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        SslMode::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| {
            Error::invalid_input(
                "sslmode",
                format!("'{s}' is not one of disable, allow, prefer, require, verify-ca, verify-full"),
            )
        })
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds the rustls configuration for `mode`. `root_cert` is a PEM file of trusted authorities
/// (libpq's `sslrootcert`); without it the system's roots and the webpki roots are trusted.
pub fn client_config(mode: SslMode, root_cert: Option<&Path>) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS protocol versions: {e}")))?;
    let config = match mode {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly { provider }))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(root_store(root_cert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| Error::new(ErrorKind::Tls, format!("sslrootcert: {e}")))?;
            if mode == SslMode::VerifyCa {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly { inner: webpki }))
                    .with_no_client_auth()
            } else {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            }
        }
    };
    Ok(config)
}

fn root_store(root_cert: Option<&Path>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    if let Some(path) = root_cert {
        let pem = std::fs::read(path).map_err(|e| {
            Error::invalid_input(
                "sslrootcert",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let mut found = 0;
        for cert in rustls_pemfile_certs(&pem) {
            let cert = cert.map_err(|e| {
                Error::invalid_input(
                    "sslrootcert",
                    format!("{} is not a PEM certificate file: {e}", path.display()),
                )
            })?;
            store.add(cert).map_err(|e| {
                Error::invalid_input(
                    "sslrootcert",
                    format!("{} holds a certificate rustls rejects: {e}", path.display()),
                )
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(Error::invalid_input(
                "sslrootcert",
                format!("{} contains no PEM certificate", path.display()),
            ));
        }
        return Ok(store);
    }
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system store may hold certificates rustls cannot parse; skipping one is what browsers do.
        let _ = store.add(cert);
    }
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(store)
}

fn rustls_pemfile_certs(
    pem: &[u8],
) -> impl Iterator<Item = Result<CertificateDer<'static>, String>> + '_ {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem).map(|r| r.map_err(|e| e.to_string()))
}

/// libpq's `require`: encrypt, verify the handshake, trust any certificate.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to a trusted root; the name in the certificate is not checked.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_libpq_mode_and_names_the_field_otherwise() {
        for mode in SslMode::ALL {
            assert_eq!(mode.as_str().parse::<SslMode>().unwrap(), mode);
        }
        let err = "verify_full".parse::<SslMode>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().starts_with("sslmode:"), "{}", err.message());
    }

    #[test]
    fn builds_a_config_for_every_mode() {
        for mode in SslMode::ALL {
            client_config(mode, None).unwrap();
        }
    }

    #[test]
    fn a_root_cert_file_without_certificates_is_rejected_by_name() {
        let dir = std::env::temp_dir().join(format!("tidepool-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("empty.pem");
        std::fs::write(&file, "not a certificate").unwrap();
        let err = client_config(SslMode::VerifyFull, Some(&file)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.message().starts_with("sslrootcert:"),
            "{}",
            err.message()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
