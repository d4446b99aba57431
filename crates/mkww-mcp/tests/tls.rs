//! HTTPS: with `tls_cert` and `tls_key` set, the real binary answers over TLS only and still
//! stops cleanly on SIGTERM.

mod support;

use std::path::Path;
use support::{Server, temp_dir};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files into `dir`;
/// returns the certificate PEM for the client to trust.
fn write_self_signed(dir: &Path) -> String {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("self-signed certificate");
    let cert = generated.cert.pem();
    std::fs::write(dir.join("cert.pem"), &cert).expect("write cert.pem");
    std::fs::write(dir.join("key.pem"), generated.key_pair.serialize_pem()).expect("write key.pem");
    cert
}

fn start_https(dir: &Path) -> Server {
    Server::start_in(
        dir.to_path_buf(),
        &[
            // Empty: the embedded SQLite default, whatever the environment says.
            ("MCP_DATABASE_URL", String::new()),
            ("MCP_TLS_CERT", dir.join("cert.pem").display().to_string()),
            ("MCP_TLS_KEY", dir.join("key.pem").display().to_string()),
        ],
    )
}

#[tokio::test]
async fn serves_https_only_and_stops_on_sigterm() {
    let dir = temp_dir();
    let cert = write_self_signed(&dir);
    let mut server = start_https(&dir);
    let addr: std::net::SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("listening address");
    // The address is reported before the log line is stored; give it a moment.
    let listening = (0..250)
        .find_map(|_| {
            let line = server
                .log_lines()
                .into_iter()
                .find(|line| line["message"] == "listening");
            if line.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            line
        })
        .expect("listening line");
    assert_eq!(listening["tls"], true, "{listening}");

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).expect("cert"))
        .resolve("localhost", addr)
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/healthz", addr.port());
    let response = trusting.get(&url).send().await.expect("HTTPS GET");
    assert_eq!(response.status().as_u16(), 200);
    let by_ip = format!("https://{addr}/healthz");
    let response = trusting.get(&by_ip).send().await.expect("HTTPS GET by IP");
    assert_eq!(response.status().as_u16(), 200);

    let untrusting = reqwest::Client::new();
    assert!(
        untrusting.get(&url).send().await.is_err(),
        "a client that does not trust the certificate must not connect"
    );
    let plain = untrusting
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");

    assert!(server.terminate().success(), "unclean exit after SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn refuses_a_certificate_without_its_key() {
    let dir = temp_dir();
    write_self_signed(&dir);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mkww-mcp"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(&dir)
        .env("MCP_DATA_DIR", &dir)
        .env("MCP_DATABASE_URL", "")
        .env("MCP_TLS_CERT", dir.join("cert.pem"))
        .env_remove("MCP_TLS_KEY")
        .output()
        .expect("run mkww-mcp");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls_key"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
