//! HTTPS: serves the API over TLS 1.2/1.3 (rustls with the ring provider, the one reqwest and
//! sqlx already use) when `tls_cert` and `tls_key` are configured. The listener then speaks TLS
//! only: a plain-HTTP request gets no HTTP answer.

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// Serves `app` over HTTPS on `listener` until `shutdown` completes, then stops accepting and
/// lets open requests finish (as `axum::serve(..).with_graceful_shutdown` does for plain HTTP).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    cert: &Path,
    key: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = server_config(cert, key)?;
    let handle = axum_server::Handle::new();
    let trigger = handle.clone();
    let stop = tokio::spawn(async move {
        shutdown.await;
        trigger.graceful_shutdown(None);
    });
    let listener = listener
        .into_std()
        .context("cannot hand the listener to the TLS server")?;
    let served = axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(config))
        .context("cannot start the TLS server")?
        .handle(handle)
        // The peer address feeds per-IP rate limits and the audit log.
        .serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .await
        .context("HTTPS server failed");
    stop.abort();
    served
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
