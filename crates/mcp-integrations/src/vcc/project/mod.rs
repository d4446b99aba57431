//! Unity projects as VCC sees them: the folder, its Unity version, and the packages in
//! `Packages/vpm-manifest.json`. A project is only ever read from a canonical path under one of
//! the configured roots, so `..` and symlinks cannot reach outside them.
//!
//! The [`ProjectRegistry`] lists projects registered by API (persisted in the state file) and
//! those in VCC's own `settings.json` (`userProjects`). A registered project whose folder has
//! vanished or become unreadable is still listed, with `error` set and no packages, so it can be
//! seen and unregistered.
//!
//! `manifest` reads and writes `vpm-manifest.json` (and is the one safe way to read a file of a
//! project), `summary` reads what a project is, `settings` reads VCC's `settings.json`, and
//! `registry` keeps the list of projects and the roots they must lie under.

mod manifest;
mod registry;
mod settings;
mod summary;

pub use manifest::{
    LockedPackage, MANIFEST_PATH, MAX_PROJECT_FILE_BYTES, ManifestDependency, VpmManifest,
    is_package_name,
};
pub use registry::{ProjectRegistry, checked_path};
pub use settings::{UserRepo, VccSettings};
pub use summary::{PROJECT_VERSION_PATH, project_id, read_project};
