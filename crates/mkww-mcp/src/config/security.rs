//! The secrets a node derives from its keys: the master key's secret box, the access token
//! keys (configured or generated into `data_dir`), and the trusted proxies.

use super::Config;
use anyhow::Context;
use ipnet::IpNet;
use mcp_api::token::Tokens;
use mcp_core::secrets::{MasterKey, SecretBox};
use std::path::{Path, PathBuf};

impl Config {
    /// The secret box: the configured master key, or the one in `data_dir/master.key`,
    /// generated (readable by the owner only) when missing.
    pub fn secret_box(&self) -> anyhow::Result<SecretBox> {
        let current = match self.master_key.as_deref() {
            Some(key) => MasterKey::from_base64(key).context("master_key")?,
            None => {
                let text = self.generated_secret("master.key", MasterKey::generate_base64)?;
                MasterKey::from_base64(&text).context("data_dir/master.key")?
            }
        };
        let retired = self
            .master_keys_retired
            .iter()
            .map(|k| MasterKey::from_base64(k).context("master_keys_retired"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(SecretBox::new(current, retired))
    }

    /// Issues and verifies access tokens: HS256 with the configured (or generated) secret, or
    /// RS256/ES256/EdDSA with the configured key files.
    pub fn tokens(&self) -> anyhow::Result<Tokens> {
        if self.jwt_algorithm != "HS256" {
            let read = |path: &Option<PathBuf>, key: &str| -> anyhow::Result<Vec<u8>> {
                let path = path
                    .as_ref()
                    .with_context(|| format!("jwt_algorithm {} needs {key}", self.jwt_algorithm))?;
                std::fs::read(path).with_context(|| format!("cannot read {key} {}", path.display()))
            };
            let private = read(&self.jwt_private_key_file, "jwt_private_key_file")?;
            let public = read(&self.jwt_public_key_file, "jwt_public_key_file")?;
            return Tokens::from_pem(
                &self.jwt_algorithm,
                &private,
                &public,
                &self.jwt_issuer,
                &self.jwt_audience,
            )
            .context("jwt keys");
        }
        let secret = match self.jwt_secret.clone() {
            Some(secret) => secret,
            None => self.generated_secret("jwt.secret", MasterKey::generate_base64)?,
        };
        Tokens::hs256(
            secret.trim().as_bytes(),
            &self.jwt_issuer,
            &self.jwt_audience,
        )
        .context("jwt_secret")
    }

    /// A secret kept in `data_dir/NAME`, created (owner-only) by `generate` when missing.
    fn generated_secret(&self, name: &str, generate: fn() -> String) -> anyhow::Result<String> {
        let path = self.data_dir.join(name);
        if !path.exists() {
            std::fs::create_dir_all(&self.data_dir)
                .with_context(|| format!("cannot create {}", self.data_dir.display()))?;
            write_private(&path, &generate())?;
        }
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// `trusted_proxies` as networks (a bare address is a one-address network).
    pub fn trusted_proxies(&self) -> anyhow::Result<Vec<IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|text| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                    .with_context(|| format!("trusted_proxies: `{text}` is not an IP or CIDR"))
            })
            .collect()
    }
}

/// Writes a new file only its owner can read.
pub(crate) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn generates_a_private_master_key_once_and_keeps_it() {
        let dir = std::env::temp_dir().join(format!("mcp-key-{}", uuid::Uuid::new_v4()));
        let config = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        let first = config.secret_box().unwrap();
        let sealed = first.seal(b"s", "test").unwrap();
        let again = config.secret_box().unwrap();
        assert_eq!(first.current_key_id(), again.current_key_id());
        assert_eq!(again.open(&sealed, "test").unwrap(), b"s");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A configured key wins, and the generated one can be kept as retired.
        let key_file = std::fs::read_to_string(dir.join("master.key")).unwrap();
        let rotated = Config {
            master_key: Some(MasterKey::generate_base64()),
            master_keys_retired: vec![key_file],
            ..config.clone()
        }
        .secret_box()
        .unwrap();
        assert_ne!(rotated.current_key_id(), first.current_key_id());
        assert_eq!(rotated.open(&sealed, "test").unwrap(), b"s");
        let bad = Config {
            master_key: Some("short".into()),
            ..config
        };
        assert!(bad.secret_box().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tokens_use_a_generated_secret_unless_one_is_configured() {
        let dir = std::env::temp_dir().join(format!("mcp-jwt-{}", uuid::Uuid::new_v4()));
        let config = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        let token = config
            .tokens()
            .unwrap()
            .issue(
                "ops",
                mcp_core::principal::Role::Admin,
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(
            config.tokens().unwrap().verify(&token).is_ok(),
            "same file, same secret"
        );
        let configured = Config {
            jwt_secret: Some("x".repeat(40)),
            ..config.clone()
        };
        assert!(configured.tokens().unwrap().verify(&token).is_err());
        let weak = Config {
            jwt_secret: Some("short".into()),
            ..config
        };
        assert!(weak.tokens().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn signs_with_configured_key_files_and_pins_their_algorithm() {
        let dir = std::env::temp_dir().join(format!("mcp-jwk-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(dir.join("private.pem"), pair.serialize_pem()).unwrap();
        std::fs::write(dir.join("public.pem"), pair.public_key_pem()).unwrap();
        let es256 = Config {
            data_dir: dir.clone(),
            jwt_algorithm: "ES256".into(),
            jwt_private_key_file: Some(dir.join("private.pem")),
            jwt_public_key_file: Some(dir.join("public.pem")),
            ..Config::default()
        };
        es256.check().unwrap();
        let tokens = es256.tokens().unwrap();
        let token = tokens
            .issue(
                "ops",
                mcp_core::principal::Role::Operator,
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(tokens.verify(&token).unwrap().sub, "ops");
        // The HS256 node of the same data dir does not accept it, nor the reverse.
        let hs256 = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        assert!(hs256.tokens().unwrap().verify(&token).is_err());
        let hs_token = hs256
            .tokens()
            .unwrap()
            .issue(
                "x",
                mcp_core::principal::Role::Admin,
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(tokens.verify(&hs_token).is_err());
        let missing = Config {
            jwt_public_key_file: None,
            ..es256.clone()
        };
        assert!(missing.tokens().is_err());
        let unknown = Config {
            jwt_algorithm: "HS512".into(),
            ..es256
        };
        assert!(unknown.check().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
