//! The bodies of Rhone's fuzz targets, one function per target, shared by the cargo-fuzz
//! binaries (`fuzz/fuzz_targets/<target>.rs`) and by the replay test (`tests/replay.rs`),
//! which runs each function over its checked-in corpus (`fuzz/corpus/<target>/`) on stable.
//!
//! Each function takes any bytes and panics only when a property it checks fails: an error
//! for bad input is an answer, a panic is a bug. Where a property is cheap it is checked, not
//! just the absence of a panic (a parsed `rhone.toml` written back parses equal; an unpacked
//! archive stays inside its root and holds what the in-memory reader sees).

mod app;
mod archive;
mod classify;
mod graphql;
mod migration;
mod vango;

pub use app::app_manifest;
pub use archive::archive;
pub use classify::classify;
pub use graphql::graphql;
pub use migration::migration;
pub use vango::vango;

/// A target's body: any bytes in, a panic only when a property fails.
pub type Target = fn(&[u8]);

/// Every target by the name of its binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("app_manifest", app_manifest),
    ("vango", vango),
    ("archive", archive),
    ("graphql", graphql),
    ("classify", classify),
    ("migration", migration),
];
