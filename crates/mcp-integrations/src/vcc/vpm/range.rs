//! Version ranges of VPM requirements: npm's syntax, with VPM's reading of a bare version in
//! dependencies ("that version or later"), and npm's rule for pre-releases.

use crate::vcc::VccError;
use semver::{Prerelease, Version};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

/// One `||` alternative: bounds that must all hold, and the versions the user wrote (for the
/// pre-release rule).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BoundSet {
    bounds: Vec<(Op, Version)>,
    named: Vec<Version>,
}

/// A VPM version range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpmRange {
    text: String,
    sets: Vec<BoundSet>,
}

/// A version as written in a range: `1`, `1.2`, `1.2.x`, `1.2.3-beta.1`.
#[derive(Debug, Clone)]
struct Partial {
    major: Option<u64>,
    minor: Option<u64>,
    patch: Option<u64>,
    pre: Prerelease,
}

impl Partial {
    fn parse(text: &str) -> Result<Partial, String> {
        let text = text.trim().trim_start_matches(['v', 'V']);
        let (core, _build) = text.split_once('+').unwrap_or((text, ""));
        let (core, pre) = match core.split_once('-') {
            Some((core, pre)) => (
                core,
                Prerelease::new(pre).map_err(|e| format!("bad pre-release {pre:?}: {e}"))?,
            ),
            None => (core, Prerelease::EMPTY),
        };
        let mut parts = core.split('.');
        let mut next = |label: &str| -> Result<Option<u64>, String> {
            match parts.next() {
                None | Some("x" | "X" | "*") => Ok(None),
                // `u64::MAX` is refused too: the bounds of `^`, `~` and partial versions add one
                // to a number, which must not overflow.
                Some(n) => match n.parse::<u64>() {
                    Ok(n) if n < u64::MAX => Ok(Some(n)),
                    _ => Err(format!("bad {label} {n:?}")),
                },
            }
        };
        let major = next("major")?;
        let minor = next("minor")?;
        let patch = next("patch")?;
        if parts.next().is_some() {
            return Err(format!("{text:?} has more than three parts"));
        }
        // `1.x.3` makes no sense: nothing may follow a wildcard.
        if (major.is_none() && (minor.is_some() || patch.is_some()))
            || (minor.is_none() && patch.is_some())
        {
            return Err(format!("{text:?} has a number after a wildcard"));
        }
        if !pre.is_empty() && patch.is_none() {
            return Err(format!("{text:?} has a pre-release on a partial version"));
        }
        Ok(Partial {
            major,
            minor,
            patch,
            pre,
        })
    }

    fn full(&self) -> Option<Version> {
        Some(Version {
            major: self.major?,
            minor: self.minor?,
            patch: self.patch?,
            pre: self.pre.clone(),
            build: semver::BuildMetadata::EMPTY,
        })
    }

    fn zeros(&self) -> Version {
        Version {
            major: self.major.unwrap_or(0),
            minor: self.minor.unwrap_or(0),
            patch: self.patch.unwrap_or(0),
            pre: self.pre.clone(),
            build: semver::BuildMetadata::EMPTY,
        }
    }

    /// The first version past a partial one (`1.2` → `1.3.0-0`), so `< next` excludes it and
    /// every pre-release of it.
    fn next(&self) -> Option<Version> {
        let v = match (self.major, self.minor) {
            (Some(major), None) => Version::new(major + 1, 0, 0),
            (Some(major), Some(minor)) => Version::new(major, minor + 1, 0),
            _ => return None,
        };
        Some(lowest_of(v))
    }
}

/// The lowest version with `v`'s numbers: `v-0`.
fn lowest_of(mut v: Version) -> Version {
    v.pre = Prerelease::new("0").unwrap_or(Prerelease::EMPTY);
    v
}

impl VpmRange {
    /// A range typed by a user: a bare version means exactly that version.
    pub fn parse_request(text: &str) -> Result<VpmRange, VccError> {
        VpmRange::parse(text, false)
    }

    /// A range from `vpmDependencies` or the manifest: a bare full version means "or later".
    pub fn parse_dependency(text: &str) -> Result<VpmRange, VccError> {
        VpmRange::parse(text, true)
    }

    /// Any version.
    pub fn any() -> VpmRange {
        VpmRange {
            text: "*".into(),
            sets: vec![BoundSet {
                bounds: Vec::new(),
                named: Vec::new(),
            }],
        }
    }

    fn parse(text: &str, bare_is_minimum: bool) -> Result<VpmRange, VccError> {
        let invalid = |message: String| VccError::InvalidRequirement {
            requirement: text.to_string(),
            message,
        };
        let mut sets = Vec::new();
        for alternative in text.split("||") {
            sets.push(parse_set(alternative, bare_is_minimum).map_err(invalid)?);
        }
        Ok(VpmRange {
            text: text.trim().to_string(),
            sets,
        })
    }

    /// Whether `version` is in the range. Pre-releases need `allow_prerelease`, or a
    /// comparator naming a pre-release of the same `major.minor.patch`.
    pub fn matches(&self, version: &Version, allow_prerelease: bool) -> bool {
        self.sets.iter().any(|set| {
            let inside = set.bounds.iter().all(|(op, bound)| match op {
                Op::Ge => version >= bound,
                Op::Gt => version > bound,
                Op::Le => version <= bound,
                Op::Lt => version < bound,
                Op::Eq => version == bound,
            });
            inside
                && (version.pre.is_empty()
                    || allow_prerelease
                    || set.named.iter().any(|n| {
                        !n.pre.is_empty()
                            && (n.major, n.minor, n.patch)
                                == (version.major, version.minor, version.patch)
                    }))
        })
    }

    /// Whether the range itself names a pre-release.
    pub fn names_prerelease(&self) -> bool {
        self.sets
            .iter()
            .any(|s| s.named.iter().any(|v| !v.pre.is_empty()))
    }
}

impl fmt::Display for VpmRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_set(text: &str, bare_is_minimum: bool) -> Result<BoundSet, String> {
    // Join operators written apart from their version (`>= 1.0.0`).
    let mut tokens: Vec<String> = Vec::new();
    let mut pending = String::new();
    for token in text.split_whitespace() {
        if matches!(token, ">" | ">=" | "<" | "<=" | "=" | "~" | "^") {
            pending.push_str(token);
            continue;
        }
        tokens.push(format!("{pending}{token}"));
        pending.clear();
    }
    if !pending.is_empty() {
        return Err(format!("{pending:?} is missing its version"));
    }
    let mut set = BoundSet {
        bounds: Vec::new(),
        named: Vec::new(),
    };
    let mut i = 0;
    while i < tokens.len() {
        if tokens.get(i + 1).map(String::as_str) == Some("-") {
            let upper = tokens
                .get(i + 2)
                .ok_or_else(|| "a hyphen range is missing its upper end".to_string())?;
            let low = Partial::parse(&tokens[i])?;
            let high = Partial::parse(upper)?;
            set.bounds.push((Op::Ge, low.zeros()));
            match (high.full(), high.next()) {
                (Some(v), _) => set.bounds.push((Op::Le, v)),
                (None, Some(next)) => set.bounds.push((Op::Lt, next)),
                (None, None) => {}
            }
            set.named.push(low.zeros());
            set.named.push(high.zeros());
            i += 3;
            continue;
        }
        comparator(&tokens[i], bare_is_minimum, &mut set)?;
        i += 1;
    }
    Ok(set)
}

fn comparator(token: &str, bare_is_minimum: bool, set: &mut BoundSet) -> Result<(), String> {
    let (op, rest) = [">=", "<=", ">", "<", "=", "~>", "~", "^"]
        .iter()
        .find_map(|op| token.strip_prefix(op).map(|rest| (*op, rest)))
        .unwrap_or(("", token));
    let p = Partial::parse(rest)?;
    set.named.push(p.zeros());
    let b = &mut set.bounds;
    let any = p.major.is_none();
    match op {
        ">=" => {
            if !any {
                b.push((Op::Ge, p.zeros()));
            }
        }
        ">" => match (p.full(), p.next()) {
            (Some(v), _) => b.push((Op::Gt, v)),
            (None, Some(next)) => b.push((Op::Ge, next)),
            (None, None) => return Err("\">*\" matches nothing".into()),
        },
        "<" => {
            if any {
                return Err("\"<*\" matches nothing".into());
            }
            match p.full() {
                Some(v) => b.push((Op::Lt, v)),
                None => b.push((Op::Lt, lowest_of(p.zeros()))),
            }
        }
        "<=" => match (p.full(), p.next()) {
            (Some(v), _) => b.push((Op::Le, v)),
            (None, Some(next)) => b.push((Op::Lt, next)),
            (None, None) => {}
        },
        "~" | "~>" => {
            if !any {
                b.push((Op::Ge, p.zeros()));
                let major = p.major.unwrap_or(0);
                let upper = match p.minor {
                    Some(minor) => Version::new(major, minor + 1, 0),
                    None => Version::new(major + 1, 0, 0),
                };
                b.push((Op::Lt, lowest_of(upper)));
            }
        }
        "^" => {
            if !any {
                b.push((Op::Ge, p.zeros()));
                let major = p.major.unwrap_or(0);
                let upper = match (major, p.minor, p.patch) {
                    (0, Some(0), Some(patch)) => Version::new(0, 0, patch + 1),
                    (0, Some(minor), _) => Version::new(0, minor + 1, 0),
                    (major, _, _) => Version::new(major + 1, 0, 0),
                };
                b.push((Op::Lt, lowest_of(upper)));
            }
        }
        _ => match p.full() {
            Some(v) if bare_is_minimum && op.is_empty() => b.push((Op::Ge, v)),
            Some(v) => b.push((Op::Eq, v)),
            None if any => {}
            None => {
                b.push((Op::Ge, p.zeros()));
                if let Some(next) = p.next() {
                    b.push((Op::Lt, next));
                }
            }
        },
    }
    Ok(())
}
