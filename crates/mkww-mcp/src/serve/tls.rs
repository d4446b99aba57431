//! HTTPS: serves the API over TLS 1.2/1.3 (rustls with the ring provider, the one reqwest and
//! sqlx already use) when `tls_cert` and `tls_key` are configured. The listener then speaks TLS
//! only: a plain-HTTP request gets no HTTP answer.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The TLS side of the listener (`http.rs` accepts, bounds the handshake by the header
/// timeout, then serves the decrypted stream like a plain one).
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    Ok(tokio_rustls::TlsAcceptor::from(server_config(cert, key)?))
}

/// A rustls server configuration from a PEM certificate chain and a PEM private key (PKCS#8,
/// PKCS#1 RSA or SEC1 EC).
fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the TLS certificate {} holds no PEM certificate",
        cert.display()
    );
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the TLS private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2 and 1.3 are not available")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(|| {
            format!(
                "the TLS private key {} does not fit the certificate {}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_file_it_cannot_use() {
        let dir = std::env::temp_dir().join(format!("mcp-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let error = format!("{:#}", server_config(&cert, &key).unwrap_err());
        assert!(error.contains("cert.pem"), "{error}");
        std::fs::write(&cert, "not a certificate").unwrap();
        let error = format!("{:#}", server_config(&cert, &key).unwrap_err());
        assert!(error.contains("cert.pem"), "{error}");
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        let error = format!("{:#}", server_config(&cert, &key).unwrap_err());
        assert!(error.contains("key.pem"), "{error}");
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&key, other.key_pair.serialize_pem()).unwrap();
        let error = format!("{:#}", server_config(&cert, &key).unwrap_err());
        assert!(error.contains("does not fit"), "{error}");
        std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
        assert!(server_config(&cert, &key).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
