//! `Packages/vpm-manifest.json`, read and written without losing unknown fields; the one safe
//! way to read a file of a project; and which package names may name a folder of `Packages/`.

use crate::vcc::VccError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The manifest, relative to the project folder.
pub const MANIFEST_PATH: &str = "Packages/vpm-manifest.json";

/// The largest manifest or `ProjectVersion.txt` read. Real ones are a few kilobytes; the
/// limit stops a project folder from making the service read a huge file into memory.
pub const MAX_PROJECT_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// `Packages/vpm-manifest.json`. Unknown fields are kept, so writing it back loses nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VpmManifest {
    #[serde(default)]
    pub dependencies: BTreeMap<String, ManifestDependency>,
    #[serde(default)]
    pub locked: BTreeMap<String, LockedPackage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An entry of the manifest's `dependencies`: a package the user asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestDependency {
    pub version: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An entry of the manifest's `locked`: an installed package and what it depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockedPackage {
    pub version: String,
    #[serde(default)]
    pub dependencies: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl VpmManifest {
    /// Reads the manifest of the project at `root`; a missing file is an empty manifest.
    pub fn read(root: &Path) -> Result<VpmManifest, VccError> {
        let path = root.join(MANIFEST_PATH);
        let bytes = match read_project_file(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(VpmManifest::default());
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(VccError::ManifestInvalid {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
            }
            Err(e) => return Err(VccError::io(format!("cannot read {}", path.display()), e)),
        };
        serde_json::from_slice(strip_bom(&bytes)).map_err(|e| VccError::ManifestInvalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Writes the manifest of the project at `root`, atomically.
    pub fn write(&self, root: &Path) -> Result<(), VccError> {
        let path = root.join(MANIFEST_PATH);
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| VccError::ManifestInvalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        bytes.push(b'\n');
        crate::vcc::write_atomic(&path, &bytes)
    }

    /// Whether `name` is asked for or installed.
    pub fn mentions(&self, name: &str) -> bool {
        self.dependencies.contains_key(name) || self.locked.contains_key(name)
    }
}
/// Reads a file of a project, which whoever made the project controls: only a regular file
/// (a FIFO would block forever, `/dev/zero` never ends) of at most [`MAX_PROJECT_FILE_BYTES`].
/// Both refusals are `InvalidData`.
pub(super) fn read_project_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Opening a FIFO for reading waits for a writer, unless non-blocking.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PROJECT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PROJECT_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_PROJECT_FILE_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

pub(super) fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Whether `name` looks like a VPM package name (`com.vrchat.worlds`): no path separators, no
/// `..`, nothing that could escape `Packages/`. Nor a name Windows would read as another one
/// (a trailing dot is dropped there, so `com.x.` is `com.x`) or as a device (`nul.x`).
pub fn is_package_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 214
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !is_windows_device(name.split('.').next().unwrap_or(name))
}

/// `CON`, `NUL`, `COM1`…: names Windows opens as devices, whatever follows their first dot.
fn is_windows_device(stem: &str) -> bool {
    let stem = stem.to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::{MANIFEST_PATH, MAX_PROJECT_FILE_BYTES, VpmManifest, is_package_name};
    use std::path::Path;

    #[test]
    fn package_names_cannot_escape_packages() {
        assert!(is_package_name("com.vrchat.worlds"));
        assert!(is_package_name("jp.lilxyzw.liltoon"));
        assert!(is_package_name("com.nul.x"));
        assert!(is_package_name("console.tools"));
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "a\\b",
            ".hidden",
            "com..x",
            "C:x",
            "com.x.",
            "nul",
            "NUL.x",
            "con.vrchat",
            "com1.tool",
            "Lpt9",
        ] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn manifest_keeps_unknown_fields() {
        let text =
            r#"{"dependencies":{"com.x":{"version":"1.0.0","extra":1}},"locked":{},"other":true}"#;
        let manifest: VpmManifest = serde_json::from_str(text).unwrap();
        let back = serde_json::to_value(&manifest).unwrap();
        assert_eq!(back["other"], true);
        assert_eq!(back["dependencies"]["com.x"]["extra"], 1);
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn an_oversized_manifest_is_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_PATH);
        write(&path, "");
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(MAX_PROJECT_FILE_BYTES + 1).unwrap();
        let e = VpmManifest::read(dir.path()).unwrap_err();
        assert_eq!(e.code(), "manifest_invalid");
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    mod properties {
        use crate::vcc::project::{MANIFEST_PATH, VpmManifest, is_package_name, read_project};
        use proptest::prelude::*;
        use serde_json::Value;
        use std::path::Path;

        fn name_like() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just(".".to_string()),
                Just("..".to_string()),
                Just("/".to_string()),
                Just("\\".to_string()),
                Just(":".to_string()),
                Just("\0".to_string()),
                Just("-".to_string()),
                Just("com".to_string()),
                Just("nul".to_string()),
                "[a-z0-9_]{1,5}",
                "\\PC",
            ];
            prop_oneof![
                any::<String>(),
                proptest::collection::vec(piece, 0..10).prop_map(|p| p.concat()),
            ]
        }

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                "\\PC{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("dependencies".to_string()),
                            Just("locked".to_string()),
                            Just("version".to_string()),
                            "\\PC{0,6}",
                        ],
                        inner,
                        0..4
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn accepted_package_names_are_one_plain_folder(name in name_like()) {
                if is_package_name(&name) {
                    prop_assert!(!name.contains(['/', '\\', ':', '\0']));
                    prop_assert!(!name.split('.').any(str::is_empty), "{:?}", name);
                    let mut components = Path::new(&name).components();
                    prop_assert!(matches!(components.next(), Some(std::path::Component::Normal(_))));
                    prop_assert!(components.next().is_none());
                    let packages = Path::new("/project/Packages");
                    let joined = packages.join(&name);
                    prop_assert_eq!(joined.parent(), Some(packages));
                }
            }

            #[test]
            fn manifests_from_any_bytes_read_or_fail_cleanly(
                bytes in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..128),
                    json().prop_map(|v| v.to_string().into_bytes()),
                    json().prop_map(|v| serde_json::json!({"dependencies": v.clone(), "locked": v}).to_string().into_bytes()),
                ],
                bom: bool,
            ) {
                let dir = tempfile::tempdir().unwrap();
                let mut content = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
                content.extend_from_slice(&bytes);
                std::fs::create_dir_all(dir.path().join("Packages")).unwrap();
                std::fs::write(dir.path().join(MANIFEST_PATH), &content).unwrap();
                match VpmManifest::read(dir.path()) {
                    Ok(manifest) => {
                        // Whatever was read is written back and read again unchanged.
                        manifest.write(dir.path()).unwrap();
                        prop_assert_eq!(VpmManifest::read(dir.path()).unwrap(), manifest);
                    }
                    Err(e) => prop_assert_eq!(e.code(), "manifest_invalid"),
                }
                if let Ok(project) = read_project(dir.path()) {
                    prop_assert_eq!(project.error, None);
                }
            }
        }
    }
}
