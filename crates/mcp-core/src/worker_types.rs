//! Which task types a credential may serve as an external worker. An API key may carry
//! `worker_types`, a list of patterns; a worker connected with that key may register, and is
//! assigned, only types a pattern covers. A credential without the list (access tokens, keys
//! made before it existed) may serve every type meant for workers. Types with an in-process
//! handler are never anyone's to serve: the orchestrator refuses them whatever the grant.
//!
//! A pattern is an exact task type (`render.deploy`) or a prefix ending in `*` (`render.*`,
//! `unity-*`, or `*` alone), which covers every type that starts with the prefix and is longer
//! than it. Nothing else is special, so a pattern can never cover more than it reads.

/// Most patterns one API key may carry.
pub const MAX_PATTERNS: usize = 100;
/// Longest pattern, in bytes (a task type is at most this long too).
pub const MAX_PATTERN_LEN: usize = 128;

/// The characters of a task type a worker may register (and so of a pattern before its `*`).
pub fn is_type_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')
}

/// Whether `task_type` is a name a worker may register: 1 to `MAX_PATTERN_LEN` bytes of
/// letters, digits, `.`, `_`, `-`, `:`.
pub fn valid_type(task_type: &str) -> bool {
    !task_type.is_empty()
        && task_type.len() <= MAX_PATTERN_LEN
        && task_type.bytes().all(is_type_byte)
}

/// Checks a list of patterns as a key is created with it; the error says what is wrong with
/// which one. An empty list is valid: the key may serve no type at all.
pub fn check_patterns(patterns: &[String]) -> Result<(), String> {
    if patterns.len() > MAX_PATTERNS {
        return Err(format!("at most {MAX_PATTERNS} patterns"));
    }
    for pattern in patterns {
        let prefix = pattern.strip_suffix('*').unwrap_or(pattern);
        let well_formed = pattern.len() <= MAX_PATTERN_LEN
            && ((prefix.is_empty() && !pattern.is_empty()) || valid_type(prefix));
        if !well_formed {
            return Err(format!(
                "`{pattern}` is not a pattern: a task type of 1 to {MAX_PATTERN_LEN} letters, \
                 digits, `.`, `_`, `-`, `:`, optionally ending in `*` (or `*` alone)"
            ));
        }
    }
    Ok(())
}

/// Whether one pattern covers `task_type`.
pub fn matches(pattern: &str, task_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => task_type.len() > prefix.len() && task_type.starts_with(prefix),
        None => pattern == task_type,
    }
}

/// Whether a credential with `grant` (`None`: no limit) may serve `task_type`.
pub fn covers(grant: Option<&[String]>, task_type: &str) -> bool {
    grant.is_none_or(|patterns| patterns.iter().any(|p| matches(p, task_type)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn exact_names_cover_only_themselves() {
        assert!(matches("render.deploy", "render.deploy"));
        assert!(!matches("render.deploy", "render.deploy2"));
        assert!(!matches("render.deploy", "render"));
    }

    #[test]
    fn a_trailing_star_covers_longer_names_with_the_prefix() {
        assert!(matches("render.*", "render.x"));
        assert!(matches("render.*", "render.a.b"));
        assert!(
            !matches("render.*", "render."),
            "the star stands for something"
        );
        assert!(!matches("render.*", "render"));
        assert!(!matches("render.*", "renderx"));
        assert!(!matches("render.*", "unity.bake"));
        assert!(matches("*", "anything"));
        assert!(matches("unity-*", "unity-bake"));
    }

    #[test]
    fn no_grant_covers_every_type_and_an_empty_one_none() {
        assert!(covers(None, "unity.bake"));
        assert!(!covers(Some(&[]), "unity.bake"));
        let grant = patterns(&["render.*", "unity.bake"]);
        assert!(covers(Some(&grant), "unity.bake"));
        assert!(covers(Some(&grant), "render.x"));
        assert!(!covers(Some(&grant), "echo"));
    }

    #[test]
    fn accepts_names_and_trailing_globs() {
        assert_eq!(check_patterns(&[]), Ok(()));
        assert_eq!(
            check_patterns(&patterns(&["render.*", "unity.bake", "*", "a:b-c_d*"])),
            Ok(())
        );
    }

    #[test]
    fn rejects_other_globs_and_bad_names() {
        for bad in [
            "",
            "**",
            "re*nder",
            "*.deploy",
            "render.?",
            "render deploy",
            "render.**",
            "é",
        ] {
            assert!(check_patterns(&patterns(&[bad])).is_err(), "{bad:?}");
        }
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        assert!(check_patterns(&[long]).is_err());
        let many = vec!["a".to_owned(); MAX_PATTERNS + 1];
        assert!(check_patterns(&many).is_err());
    }
}
