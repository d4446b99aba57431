//! Zip extraction for package installs: every entry checked to stay inside the package folder,
//! and the number of entries and extracted bytes limited.

use crate::vcc::VccError;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The path of a zip entry inside the package folder, or `None` when it would escape it:
/// absolute paths, drive letters, `..` (with `/` or `\` as separator), NUL bytes, and parts
/// made only of dots and spaces (Windows drops trailing dots and spaces, so `.. ` climbs there).
pub fn safe_entry_path(raw: &str) -> Option<PathBuf> {
    if raw.contains('\0') || raw.starts_with('/') || raw.starts_with('\\') {
        return None;
    }
    let mut path = PathBuf::new();
    for part in raw.split(['/', '\\']) {
        match part {
            "" | "." => continue,
            ".." => return None,
            p if p.contains(':') => return None,
            p if p.chars().all(|c| matches!(c, '.' | ' ')) => return None,
            p => path.push(p),
        }
    }
    // Belt and braces: whatever the platform makes of it, only normal components.
    if path.components().all(|c| matches!(c, Component::Normal(_))) {
        Some(path)
    } else {
        None
    }
}

/// The most entries one package zip may have. The byte limit does not see empty files and
/// folders, and a zip of nothing but those (a hundred bytes each) could fill the disk's inodes.
/// The biggest VRChat SDK package has under ten thousand.
pub const MAX_ZIP_ENTRIES: usize = 100_000;

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;

/// Extracts the zip at `zip` into `dest`, refusing entries that would escape it and symlinks.
pub(super) fn extract(name: &str, zip: &Path, dest: &Path, max_bytes: u64) -> Result<(), VccError> {
    let invalid = |e: zip::result::ZipError| VccError::ZipInvalid {
        name: name.to_string(),
        message: e.to_string(),
    };
    let io = |path: &Path, e| VccError::io(format!("cannot write {}", path.display()), e);
    let file = std::fs::File::open(zip).map_err(|e| io(zip, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(invalid)?;
    if archive.len() > MAX_ZIP_ENTRIES {
        return Err(VccError::ZipInvalid {
            name: name.to_string(),
            message: format!(
                "{} entries, more than the {MAX_ZIP_ENTRIES} allowed",
                archive.len()
            ),
        });
    }
    std::fs::create_dir_all(dest).map_err(|e| io(dest, e))?;
    let mut remaining = max_bytes;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(invalid)?;
        let raw = entry.name().map_err(invalid)?.into_owned();
        let unsafe_entry = || VccError::ZipUnsafe {
            name: name.to_string(),
            entry: raw.clone(),
        };
        if entry.is_symlink() || entry.unix_mode().is_some_and(|m| m & S_IFMT == S_IFLNK) {
            return Err(unsafe_entry());
        }
        let relative = safe_entry_path(&raw).ok_or_else(unsafe_entry)?;
        let path = dest.join(&relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let mut out = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
        let written = std::io::copy(
            &mut (&mut entry).take(remaining.saturating_add(1)),
            &mut out,
        )
        .map_err(|e| io(&path, e))?;
        if written > remaining {
            return Err(VccError::TooLarge {
                url: format!("{name} (extracted)"),
                limit: max_bytes,
            });
        }
        remaining -= written;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_stay_inside() {
        assert_eq!(
            safe_entry_path("Runtime/a.cs"),
            Some(PathBuf::from("Runtime/a.cs"))
        );
        assert_eq!(
            safe_entry_path("./package.json"),
            Some(PathBuf::from("package.json"))
        );
        assert_eq!(
            safe_entry_path("Editor\\b.cs"),
            Some(PathBuf::from("Editor/b.cs"))
        );
        for bad in [
            "../evil",
            "a/../../evil",
            "a/..",
            "/etc/passwd",
            "\\evil",
            "..\\evil",
            "C:\\evil",
            "a\0b",
        ] {
            assert_eq!(safe_entry_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn entry_parts_windows_reads_as_dot_dot_are_refused() {
        // Windows drops trailing dots and spaces from a path part: each of these climbs there.
        for bad in ["a/.. /evil", "... \\evil", "a/. ./b", "..../x", " ../x"] {
            assert_eq!(safe_entry_path(bad), None, "{bad:?}");
        }
        assert_eq!(
            safe_entry_path("Runtime/.editorconfig"),
            Some(PathBuf::from("Runtime/.editorconfig"))
        );
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        for (name, bytes) in entries {
            writer.start_file(*name, options).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn extraction_counts_bytes_against_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("p.zip");
        std::fs::write(&zip, zip_of(&[("a", &[0; 600]), ("b/c", &[0; 600])])).unwrap();
        let e = extract("com.p", &zip, &dir.path().join("small"), 1000).unwrap_err();
        assert_eq!(e.code(), "download_too_large");
        extract("com.p", &zip, &dir.path().join("exact"), 1200).unwrap();
        // The largest limit must not overflow when one byte is added to it.
        let unlimited = dir.path().join("unlimited");
        extract("com.p", &zip, &unlimited, u64::MAX).unwrap();
        assert_eq!(std::fs::read(unlimited.join("b/c")).unwrap().len(), 600);
    }

    #[test]
    fn zips_with_too_many_entries_are_refused_before_extracting() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for i in 0..=MAX_ZIP_ENTRIES {
            writer.start_file(format!("{i}"), options).unwrap();
        }
        writer.write_all(b"").unwrap();
        let zip = dir.path().join("many.zip");
        std::fs::write(&zip, writer.finish().unwrap().into_inner()).unwrap();
        let dest = dir.path().join("com.many");
        let e = extract("com.many", &zip, &dest, u64::MAX).unwrap_err();
        assert_eq!(e.code(), "zip_invalid");
        assert!(!dest.exists());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Names built from the pieces that make zip slips, mixed with ordinary text.
        fn entry_name() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("..".to_string()),
                Just(".".to_string()),
                Just("/".to_string()),
                Just("\\".to_string()),
                Just("C:".to_string()),
                Just("c:\\".to_string()),
                Just("\\\\?\\".to_string()),
                Just("\0".to_string()),
                Just("~".to_string()),
                Just(" ".to_string()),
                Just("...".to_string()),
                Just("..\u{2215}".to_string()),
                "[a-zA-Z0-9_ -]{1,6}",
                "\\PC{1,4}",
            ];
            prop_oneof![
                any::<String>(),
                proptest::collection::vec(piece, 0..10).prop_map(|p| p.concat()),
            ]
        }

        proptest! {
            #[test]
            fn accepted_entry_paths_stay_inside_the_staging_folder(raw in entry_name()) {
                let Some(relative) = safe_entry_path(&raw) else {
                    return Ok(());
                };
                prop_assert!(relative.is_relative());
                prop_assert!(!raw.contains('\0'));
                let staging = Path::new("/staging/com.p");
                let joined = staging.join(&relative);
                // Lexically: no component can climb, so the join stays under the folder.
                let mut depth = 0usize;
                for component in joined.strip_prefix(staging).unwrap().components() {
                    match component {
                        Component::Normal(part) => {
                            let part = part.to_string_lossy();
                            prop_assert!(!part.contains(['/', '\\', ':', '\0']), "{:?}", part);
                            prop_assert!(!part.chars().all(|c| matches!(c, '.' | ' ')), "{:?}", part);
                            depth += 1;
                        }
                        other => prop_assert!(false, "{:?} in {:?}", other, raw),
                    }
                }
                prop_assert_eq!(depth, relative.components().count());
                prop_assert!(joined.starts_with(staging));
            }

            #[test]
            fn entry_paths_with_a_climbing_segment_are_refused(
                before in "[a-z/\\\\]{0,8}",
                after in "[a-z/\\\\]{0,8}",
                separator in prop_oneof![Just('/'), Just('\\')],
            ) {
                let raw = format!("{before}{separator}..{separator}{after}");
                prop_assert_eq!(safe_entry_path(&raw), None);
                let leading = format!("..{separator}{after}");
                prop_assert_eq!(safe_entry_path(&leading), None);
            }
        }
    }
}
