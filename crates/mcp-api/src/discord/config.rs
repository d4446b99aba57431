//! What the Discord interactions endpoint is configured with: the application's public key, the
//! slash commands and their limits. A leaf, so `state` can hold it without depending on the
//! handler that reads it.

/// The application's public key, as [`parse_public_key`] reads it.
pub use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What the interactions endpoint needs.
#[derive(Debug, Clone)]
pub struct DiscordInteractions {
    /// The application's public key; `None`: the endpoint answers 404 `discord_not_configured`.
    pub public_key: Option<VerifyingKey>,
    /// Slash command name → what it runs.
    pub commands: BTreeMap<String, DiscordCommand>,
    /// Signed timestamps further than this from now are refused (replays).
    pub max_clock_skew: Duration,
    /// How long a follow-up waits for its task. Discord's interaction tokens live 15 minutes.
    pub followup_timeout: Duration,
}

impl Default for DiscordInteractions {
    fn default() -> Self {
        DiscordInteractions {
            public_key: None,
            commands: BTreeMap::new(),
            max_clock_skew: Duration::from_secs(300),
            followup_timeout: Duration::from_secs(14 * 60),
        }
    }
}

/// One slash command: `[discord.commands.<name>] task = "llm.generate"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordCommand {
    /// The task type the command creates.
    pub task: String,
    /// Adds `channel_id`, `user_id` (and `guild_id` in a server) to the payload; off for task
    /// types whose payload takes only the options.
    #[serde(default = "yes")]
    pub include_ids: bool,
}

fn yes() -> bool {
    true
}

/// Reads the application's public key as Discord shows it (64 hex digits).
pub fn parse_public_key(hex: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = decode_hex(hex.trim())
        .and_then(|b| b.try_into().ok())
        .ok_or("discord_public_key: expected 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("discord_public_key: {e}"))
}

pub(super) fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_keys_and_refuses_others() {
        assert!(parse_public_key("zz").is_err());
        assert!(parse_public_key(&"ab".repeat(31)).is_err());
        assert_eq!(decode_hex("0aFF"), Some(vec![10, 255]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("é0"), None);
    }
}
