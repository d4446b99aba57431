//! The VCC state file: the projects and repositories registered through the API, kept in one
//! JSON file that is written atomically.

use super::{VccError, vpm};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Writes `bytes` to `path` so readers see the old file or the new one, never half of either:
/// a temporary file in the same directory, synced, then renamed over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VccError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| VccError::io(format!("cannot create {}", dir.display()), e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(VccError::io(format!("cannot write {}", path.display()), e));
    }
    Ok(())
}

/// What the state file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PersistedState {
    /// Canonical paths of registered projects.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Repositories added by API.
    #[serde(default)]
    pub repositories: Vec<vpm::RepositoryRecord>,
}

/// The state file, shared by [`ProjectRegistry`] and [`RepoCache`]. Every change is a
/// read-modify-write under one lock, so the two never overwrite each other's part.
#[derive(Debug)]
pub(crate) struct StateStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl StateStore {
    pub fn new(path: PathBuf) -> Self {
        StateStore {
            path,
            lock: Mutex::new(()),
        }
    }

    pub fn load(&self) -> Result<PersistedState, VccError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.read()
    }

    pub fn update<R>(
        &self,
        change: impl FnOnce(&mut PersistedState) -> Result<R, VccError>,
    ) -> Result<R, VccError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.read()?;
        let result = change(&mut state)?;
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| VccError::StateInvalid {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path, &bytes)?;
        Ok(result)
    }

    fn read(&self) -> Result<PersistedState, VccError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| VccError::StateInvalid {
                path: self.path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState::default()),
            Err(e) => Err(VccError::io(
                format!("cannot read {}", self.path.display()),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_writes_are_atomic_and_survive_reloading() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("sub/state.json"));
        store
            .update(|s| {
                s.projects.push("/a".into());
                Ok(())
            })
            .unwrap();
        let again = StateStore::new(dir.path().join("sub/state.json"));
        assert_eq!(again.load().unwrap().projects, vec!["/a".to_string()]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1);
    }
}
