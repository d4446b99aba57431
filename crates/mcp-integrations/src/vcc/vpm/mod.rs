//! VPM repositories and package resolution: the listings VCC reads (`{"packages":{name:
//! {"versions":{...}}}}`), fetched with their `ETag` and kept in memory, and the resolver that
//! picks, for each requested package, the newest version every requirement on it allows.
//!
//! Version ranges follow npm (`>=1.0.0`, `^3.5.0`, `~1.2`, `1.2.x`, `1.0.0 - 2.0.0`, `a || b`)
//! with one VPM twist: in `vpmDependencies` and the manifest, a bare full version (`3.5.0`)
//! means "that version or later", the way VCC reads it; in a request from a user it means exactly
//! that version. Pre-releases match only when opted in, or when a comparator names a pre-release
//! of the same `major.minor.patch` (npm's rule).

mod cache;
mod listing;
mod range;
mod resolve;
#[cfg(test)]
mod tests;

pub use cache::*;
pub use listing::*;
pub use range::*;
pub use resolve::*;
