//! The `mcp_*` keys: their checks, and the `/mcp` endpoint's settings they make.

use super::Config;

impl Config {
    pub(super) fn check_mcp(&self) -> anyhow::Result<()> {
        for host in &self.mcp_allowed_hosts {
            anyhow::ensure!(
                !host.trim().is_empty()
                    && !host.contains('/')
                    && !host.contains(char::is_whitespace),
                "mcp_allowed_hosts: `{host}` is not a host (`name`, `name:port`, `[v6]`, or `*`)"
            );
        }
        for origin in &self.mcp_allowed_origins {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .map(|rest| rest.trim_end_matches('/'));
            anyhow::ensure!(
                origin == "*" || host.is_some_and(|h| !h.is_empty() && !h.contains('/')),
                "mcp_allowed_origins: `{origin}` is not an origin (`https://host[:port]`, or `*`)"
            );
        }
        if let Some(url) = &self.mcp_public_url {
            let parsed = reqwest::Url::parse(url).ok();
            anyhow::ensure!(
                parsed.is_some_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.path().trim_end_matches('/').is_empty()
                        && u.query().is_none()
                }),
                "mcp_public_url: `{url}` is not a base URL (`https://hub.example.com[:port]`)"
            );
        }
        anyhow::ensure!(
            (1_000..=600_000).contains(&self.mcp_wait_max_ms),
            "mcp_wait_max_ms must be between 1000 and 600000"
        );
        Ok(())
    }

    /// The `/mcp` endpoint's settings.
    pub fn mcp(&self) -> mcp_api::McpConfig {
        mcp_api::McpConfig {
            allowed_hosts: self.mcp_allowed_hosts.clone(),
            allowed_origins: self.mcp_allowed_origins.clone(),
            public_url: self.mcp_public_url.clone(),
            max_wait: Config::ms(self.mcp_wait_max_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_mcp_keys_that_cannot_work() {
        let bad = [
            Config {
                mcp_allowed_hosts: vec!["https://hub.example.com".into()],
                ..Config::default()
            },
            Config {
                mcp_allowed_origins: vec!["hub.example.com".into()],
                ..Config::default()
            },
            Config {
                mcp_public_url: Some("https://hub.example.com/mcp".into()),
                ..Config::default()
            },
            Config {
                mcp_wait_max_ms: 0,
                ..Config::default()
            },
        ];
        for config in bad {
            assert!(config.check_mcp().is_err(), "{config:?}");
        }
        let good = Config {
            mcp_allowed_hosts: vec!["hub.example.com".into(), "[::1]:8080".into(), "*".into()],
            mcp_allowed_origins: vec!["https://app.example.com:8443".into()],
            mcp_public_url: Some("https://hub.example.com/".into()),
            ..Config::default()
        };
        good.check_mcp().unwrap();
    }
}
