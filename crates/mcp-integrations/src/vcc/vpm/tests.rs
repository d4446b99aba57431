//! Tests of VPM ranges, listings and resolution, with property tests that feed them arbitrary
//! versions, ranges and listings. Kept together (over 500 lines): the generators are shared.

use super::*;
use crate::vcc::project::LockedPackage;
use semver::{Prerelease, Version};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

fn v(text: &str) -> Version {
    Version::parse(text).unwrap()
}

fn req(text: &str) -> VpmRange {
    VpmRange::parse_request(text).unwrap()
}

#[test]
fn ranges_follow_npm() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (">=1.0.0", &["1.0.0", "2.5.0"], &["0.9.9"]),
        ("^3.5.0", &["3.5.0", "3.9.1"], &["4.0.0", "3.4.9"]),
        ("^0.2.3", &["0.2.3", "0.2.9"], &["0.3.0"]),
        ("^0.0.3", &["0.0.3"], &["0.0.4"]),
        ("~1.2.3", &["1.2.3", "1.2.9"], &["1.3.0"]),
        ("~1.2", &["1.2.0", "1.2.9"], &["1.3.0"]),
        ("1.2.x", &["1.2.0", "1.2.7"], &["1.3.0", "1.1.9"]),
        ("1.x", &["1.0.0", "1.9.0"], &["2.0.0"]),
        ("*", &["0.0.1", "9.9.9"], &[]),
        ("", &["1.0.0"], &[]),
        ("3.5.0", &["3.5.0"], &["3.5.1", "3.4.0"]),
        ("=3.5.0", &["3.5.0"], &["3.5.1"]),
        (">= 1.0.0 < 2.0.0", &["1.5.0"], &["2.0.0"]),
        ("1.0.0 - 2.0.0", &["1.0.0", "2.0.0"], &["2.0.1"]),
        ("1.0.0 - 2", &["2.9.0"], &["3.0.0"]),
        ("<1.2", &["1.1.9"], &["1.2.0"]),
        (">1.2", &["1.3.0"], &["1.2.9"]),
        ("<=1.2", &["1.2.9"], &["1.3.0"]),
        ("^1.0.0 || ^3.0.0", &["1.2.0", "3.1.0"], &["2.0.0"]),
    ];
    for (range, inside, outside) in cases {
        let r = req(range);
        for version in *inside {
            assert!(
                r.matches(&v(version), false),
                "{range} should match {version}"
            );
        }
        for version in *outside {
            assert!(
                !r.matches(&v(version), false),
                "{range} should not match {version}"
            );
        }
    }
}

#[test]
fn a_bare_dependency_version_means_that_or_later() {
    let dependency = VpmRange::parse_dependency("3.5.0").unwrap();
    assert!(dependency.matches(&v("3.5.0"), false));
    assert!(dependency.matches(&v("3.7.2"), false));
    assert!(!dependency.matches(&v("3.4.0"), false));
    let request = req("3.5.0");
    assert!(!request.matches(&v("3.7.2"), false));
}

#[test]
fn prereleases_match_only_when_allowed_or_named() {
    let r = req(">=1.0.0");
    assert!(!r.matches(&v("2.0.0-beta.1"), false));
    assert!(r.matches(&v("2.0.0-beta.1"), true));
    let named = req(">=2.0.0-beta.1");
    assert!(named.matches(&v("2.0.0-beta.2"), false));
    assert!(!named.matches(&v("2.1.0-beta.1"), false));
    assert!(named.names_prerelease());
    // `<2.0.0` excludes 2.0.0's pre-releases only through the pre-release rule; `^1` does
    // for good, since its upper bound is 2.0.0-0.
    assert!(!req("^1.0.0").matches(&v("2.0.0-beta.1"), true));
}

#[test]
fn malformed_ranges_are_refused() {
    for bad in [">=", "1.x.3", "abc", "1.2.3.4", "<*", "1.0.0 -"] {
        let e = VpmRange::parse_request(bad).unwrap_err();
        assert_eq!(e.code(), "invalid_version_requirement", "{bad}");
    }
}

fn listing(json: Value) -> RepoSnapshot {
    RepoSnapshot {
        id: "test".into(),
        listing: Arc::new(RepoListing::parse(json.to_string().as_bytes()).unwrap()),
        headers: BTreeMap::new(),
    }
}

fn package(name: &str, version: &str, deps: Value) -> (String, Value) {
    (
        version.to_string(),
        serde_json::json!({"name": name, "version": version, "url": format!("http://x/{name}-{version}.zip"), "vpmDependencies": deps, "extra": 1}),
    )
}

fn repo() -> RepoSnapshot {
    let mut packages = serde_json::Map::new();
    let mut put = |name: &str, versions: Vec<(String, Value)>| {
        packages.insert(
            name.into(),
            serde_json::json!({"versions": versions.into_iter().collect::<serde_json::Map<_, _>>()}),
        );
    };
    put(
        "com.base",
        vec![
            package("com.base", "1.0.0", serde_json::json!({})),
            package("com.base", "2.0.0", serde_json::json!({})),
            package("com.base", "3.0.0-beta.1", serde_json::json!({})),
        ],
    );
    put(
        "com.tool",
        vec![
            package(
                "com.tool",
                "1.0.0",
                serde_json::json!({"com.base": "1.0.0"}),
            ),
            package(
                "com.tool",
                "2.0.0",
                serde_json::json!({"com.base": "^2.0.0"}),
            ),
        ],
    );
    let mut all =
        serde_json::json!({"name": "Test", "id": "test", "packages": packages, "unknown": true});
    all["packages"]["com.broken"] = serde_json::json!({"versions": {"not-a-version": {}}});
    listing(all)
}

fn request(name: &str, range: &str) -> Requirement {
    Requirement {
        name: name.into(),
        range: req(range),
        requested_by: "request".into(),
    }
}

#[test]
fn resolves_the_newest_and_follows_dependencies() {
    let resolved = resolve(
        &[repo()],
        &[request("com.tool", "*")],
        false,
        &BTreeMap::new(),
    )
    .unwrap();
    let picked: Vec<_> = resolved
        .iter()
        .map(|r| (r.name.as_str(), r.version.to_string()))
        .collect();
    assert_eq!(
        picked,
        vec![("com.base", "2.0.0".into()), ("com.tool", "2.0.0".into())]
    );
}

#[test]
fn a_locked_dependency_that_no_longer_fits_is_a_conflict() {
    let locked: BTreeMap<String, LockedPackage> = serde_json::from_value(
        serde_json::json!({"com.base": {"version": "1.0.0", "dependencies": {}}}),
    )
    .unwrap();
    let e = resolve(&[repo()], &[request("com.tool", "*")], false, &locked).unwrap_err();
    assert_eq!(e.code(), "version_conflict");
    assert!(e.to_string().contains("com.base"), "{e}");
    assert!(e.to_string().contains("com.tool@2.0.0"), "{e}");
}

#[test]
fn requirements_of_other_locked_packages_are_kept() {
    let locked: BTreeMap<String, LockedPackage> = serde_json::from_value(serde_json::json!({
        "com.tool": {"version": "1.0.0", "dependencies": {"com.base": "^1.0.0"}},
        "com.base": {"version": "1.0.0"}
    }))
    .unwrap();
    let e = resolve(&[repo()], &[request("com.base", "2.0.0")], false, &locked).unwrap_err();
    assert_eq!(e.code(), "version_conflict");
    assert!(e.to_string().contains("com.tool@1.0.0"), "{e}");
}

#[test]
fn unknown_packages_and_versions_are_reported() {
    let e = resolve(
        &[repo()],
        &[request("com.nope", "*")],
        false,
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert_eq!(e.code(), "package_not_found");
    let e = resolve(
        &[repo()],
        &[request("com.base", "^9.0.0")],
        false,
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert_eq!(e.code(), "no_matching_version");
    assert!(e.to_string().contains("2.0.0"), "{e}");
}

#[test]
fn prereleases_are_picked_only_when_opted_in() {
    let stable = resolve(
        &[repo()],
        &[request("com.base", "*")],
        false,
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(stable[0].version, v("2.0.0"));
    let pre = resolve(
        &[repo()],
        &[request("com.base", "*")],
        true,
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(pre[0].version, v("3.0.0-beta.1"));
}

#[test]
fn huge_version_numbers_are_refused_not_overflowed() {
    // Each of these adds one to `u64::MAX` when building its upper bound.
    let max = u64::MAX;
    for bad in [
        format!("^{max}.0.0"),
        format!("~1.{max}"),
        format!("{max}.x"),
        format!("<=1.{max}"),
        format!(">{max}"),
        format!("^0.0.{max}"),
    ] {
        let e = VpmRange::parse_request(&bad).unwrap_err();
        assert_eq!(e.code(), "invalid_version_requirement", "{bad}");
    }
    let near = u64::MAX - 1;
    assert!(req(&format!("^{near}.0.0")).matches(&v(&format!("{near}.5.0")), false));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Small numbers, so generated versions often share a major or minor; now and then
    /// a huge one.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![8 => 0u64..6, 1 => Just(u64::MAX - 1), 1 => any::<u64>()]
    }

    fn some_prerelease() -> impl Strategy<Value = Prerelease> {
        ("[a-z]{1,5}", proptest::option::of(0u64..20)).prop_map(|(tag, n)| {
            let text = match n {
                Some(n) => format!("{tag}.{n}"),
                None => tag,
            };
            Prerelease::new(&text).unwrap()
        })
    }

    fn prerelease() -> impl Strategy<Value = Prerelease> {
        prop_oneof![3 => Just(Prerelease::EMPTY), 1 => some_prerelease()]
    }

    /// A pre-release, next to a stable version about half the time.
    fn prerelease_version(near: Version) -> impl Strategy<Value = Version> {
        (any::<bool>(), stable(), some_prerelease()).prop_map(move |(close, far, pre)| {
            let base = if close { near.clone() } else { far };
            Version { pre, ..base }
        })
    }

    fn version() -> impl Strategy<Value = Version> {
        (number(), number(), number(), prerelease()).prop_map(|(major, minor, patch, pre)| {
            Version {
                major,
                minor,
                patch,
                pre,
                build: semver::BuildMetadata::EMPTY,
            }
        })
    }

    fn stable() -> impl Strategy<Value = Version> {
        (number(), number(), number()).prop_map(|(a, b, c)| Version::new(a, b, c))
    }

    /// Text shaped like ranges, so the parser gets past its first check more often than
    /// with arbitrary strings.
    fn range_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[0-9]{1,3}",
            "[0-9]{18,22}",
            Just(".".to_string()),
            Just(" ".to_string()),
            Just("-".to_string()),
            Just(" - ".to_string()),
            Just("||".to_string()),
            Just("+".to_string()),
            "(>=|<=|>|<|=|~>|~|\\^|v|x|X|\\*)",
            "[a-z]{1,4}",
            "\\PC",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in prop_oneof![any::<String>(), range_like()], probe in version(), pre: bool) {
            for range in [VpmRange::parse_request(&text), VpmRange::parse_dependency(&text)] {
                match range {
                    Ok(range) => {
                        let _ = range.matches(&probe, pre);
                        let _ = range.names_prerelease();
                        prop_assert_eq!(range.to_string(), text.trim());
                    }
                    Err(e) => prop_assert_eq!(e.code(), "invalid_version_requirement"),
                }
            }
        }

        #[test]
        fn an_exact_request_matches_only_its_version(v in version(), other in version(), pre: bool) {
            for text in [v.to_string(), format!("={v}"), format!("= {v}"), format!("v{v}")] {
                let range = VpmRange::parse_request(&text).unwrap();
                // Named, so even a pre-release matches without opting in.
                prop_assert!(range.matches(&v, false), "{} should match {}", text, v);
                prop_assert_eq!(range.matches(&other, pre), other == v, "{} vs {}", text, other);
            }
            let exact_dependency = VpmRange::parse_dependency(&format!("={v}")).unwrap();
            prop_assert_eq!(exact_dependency.matches(&other, true), other == v);
        }

        #[test]
        fn at_least_matches_the_version_and_everything_above(v in version(), other in version()) {
            let range = VpmRange::parse_request(&format!(">={v}")).unwrap();
            prop_assert!(range.matches(&v, false));
            prop_assert_eq!(range.matches(&other, true), other >= v);
            if other.pre.is_empty() {
                prop_assert_eq!(range.matches(&other, false), other >= v);
            }
        }

        #[test]
        fn a_bare_dependency_means_that_version_or_later(v in stable(), other in version()) {
            let range = VpmRange::parse_dependency(&v.to_string()).unwrap();
            prop_assert_eq!(range.matches(&other, true), other >= v);
        }

        #[test]
        fn caret_above_zero_allows_the_same_major(
            v in (prop_oneof![1u64..6, Just(u64::MAX - 1)], number(), number())
                .prop_map(|(a, b, c)| Version::new(a, b, c)),
            other in stable(),
        ) {
            let range = VpmRange::parse_request(&format!("^{v}")).unwrap();
            let semver = semver::VersionReq::parse(&format!("^{v}")).unwrap();
            let expected = other >= v && other.major == v.major;
            prop_assert_eq!(range.matches(&other, false), expected);
            prop_assert_eq!(semver.matches(&other), expected);
        }

        #[test]
        fn tilde_allows_the_same_minor(v in stable(), other in stable()) {
            let range = VpmRange::parse_request(&format!("~{v}")).unwrap();
            let expected = other >= v && (other.major, other.minor) == (v.major, v.minor);
            prop_assert_eq!(range.matches(&other, false), expected);
        }

        #[test]
        fn prereleases_need_opting_in_or_naming(
            (v, other) in stable().prop_flat_map(|v| (Just(v.clone()), prerelease_version(v))),
        ) {
            for text in [format!(">={v}"), format!("^{v}"), format!("<={v}"), "*".to_string()] {
                let range = VpmRange::parse_request(&text).unwrap();
                prop_assert!(!range.matches(&other, false), "{} matched {}", text, other);
                prop_assert!(!range.names_prerelease());
            }
            // Naming a pre-release opens that major.minor.patch only.
            let named = Version { pre: Prerelease::new("alpha").unwrap(), ..v.clone() };
            let range = VpmRange::parse_request(&format!(">={named}")).unwrap();
            prop_assert!(range.names_prerelease());
            let same_patch = (other.major, other.minor, other.patch) == (v.major, v.minor, v.patch);
            prop_assert_eq!(range.matches(&other, false), same_patch && other >= named);
            prop_assert_eq!(range.matches(&other, true), other >= named);
        }

        #[test]
        fn alternatives_match_when_either_side_does(a in stable(), b in stable(), other in stable()) {
            let either = VpmRange::parse_request(&format!("^{a} || ={b}")).unwrap();
            let left = VpmRange::parse_request(&format!("^{a}")).unwrap();
            let right = VpmRange::parse_request(&format!("={b}")).unwrap();
            prop_assert_eq!(
                either.matches(&other, false),
                left.matches(&other, false) || right.matches(&other, false)
            );
        }

        #[test]
        fn listings_from_any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = RepoListing::parse(&bytes);
            let mut with_bom = b"\xEF\xBB\xBF".to_vec();
            with_bom.extend_from_slice(&bytes);
            let _ = RepoListing::parse(&with_bom);
        }

        #[test]
        fn listings_from_any_json_keep_only_valid_versions(
            top in json(),
            packages in proptest::collection::btree_map("\\PC{0,12}", (proptest::collection::btree_map(prop_oneof!["\\PC{0,8}", version().prop_map(|v| v.to_string())], json(), 0..4), json()), 0..4),
        ) {
            let _ = RepoListing::parse(top.to_string().as_bytes());
            let mut raw = serde_json::Map::new();
            for (name, (versions, other)) in &packages {
                let versions: serde_json::Map<String, Value> = versions
                    .iter()
                    .map(|(k, value)| {
                        // Half the time a well-formed package, so some versions are kept.
                        let value = if value.is_boolean() {
                            serde_json::json!({"name": name, "version": k, "url": "http://x/a.zip"})
                        } else {
                            value.clone()
                        };
                        (k.clone(), value)
                    })
                    .collect();
                raw.insert(name.clone(), serde_json::json!({"versions": versions, "other": other}));
            }
            let listing = RepoListing::parse(serde_json::json!({"packages": raw}).to_string().as_bytes())
                .expect("a listing with a packages object parses");
            for (name, versions) in &listing.packages {
                prop_assert!(!versions.is_empty());
                let source = &packages[name].0;
                for version in versions.keys() {
                    prop_assert!(source.keys().any(|k| Version::parse(k.trim()).ok().as_ref() == Some(version)));
                }
            }
        }

        #[test]
        fn resolving_any_listing_never_panics(
            deps in proptest::collection::btree_map("[a-c]", prop_oneof![range_like(), "\\PC{0,6}"], 0..4),
            request in range_like(),
            pre: bool,
        ) {
            let mut raw = serde_json::Map::new();
            for name in ["a", "b", "c"] {
                raw.insert(name.into(), serde_json::json!({"versions": {
                    "1.0.0": {"name": name, "version": "1.0.0", "vpmDependencies": deps},
                    "2.0.0-pre": {"name": name, "version": "2.0.0-pre", "vpmDependencies": {}},
                }}));
            }
            let snapshot = listing(serde_json::json!({"packages": raw}));
            if let Ok(range) = VpmRange::parse_request(&request) {
                let requests = [Requirement { name: "a".into(), range, requested_by: "request".into() }];
                if let Ok(resolved) = resolve(&[snapshot], &requests, pre, &BTreeMap::new()) {
                    let names: Vec<_> = resolved.iter().map(|r| r.name.as_str()).collect();
                    let mut sorted = names.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    prop_assert_eq!(names, sorted);
                }
            }
        }
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,10}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("packages".to_string()),
                        Just("versions".to_string()),
                        Just("name".to_string()),
                        Just("url".to_string()),
                        Just("headers".to_string()),
                        Just("vpmDependencies".to_string()),
                        "\\PC{0,6}",
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
