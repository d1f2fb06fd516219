//! `Limits`: the resources one sandbox may use (a build or an allocation), as `rhone.toml`
//! declares them (`[build]` / `[run]` `memory_mb`, `cpu_millis`, `max_pids`) and as the
//! runner and the builder enforce them with the sandbox's cgroup.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// Memory a sandbox may use, MiB (page cache and `/tmp` included).
pub const MEMORY_MB: RangeInclusive<u32> = 16..=65_536;
/// CPU time per wall second, thousandths of a core (1000 = one core).
pub const CPU_MILLIS: RangeInclusive<u32> = 10..=64_000;
/// Processes and threads a sandbox may have at once.
pub const MAX_PIDS: RangeInclusive<u32> = 8..=32_768;

/// What a sandbox may use; every field is enforced by its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit, MiB: past it the kernel's OOM killer ends the sandbox's processes and
    /// the build or allocation fails with "out of memory (limit N MiB)".
    pub memory_mb: u32,
    /// CPU quota, thousandths of a core per wall second.
    pub cpu_millis: u32,
    /// Process and thread limit: a fork bomb stops here.
    pub max_pids: u32,
}

impl Limits {
    /// `[run]` defaults: a small web app.
    pub const RUN_DEFAULT: Limits = Limits {
        memory_mb: 512,
        cpu_millis: 1000,
        max_pids: 256,
    };
    /// `[build]` defaults: compilers want more.
    pub const BUILD_DEFAULT: Limits = Limits {
        memory_mb: 2048,
        cpu_millis: 2000,
        max_pids: 1024,
    };

    /// The first field out of its range, named as in `rhone.toml`, with the range.
    pub fn check(&self) -> Result<(), (&'static str, RangeInclusive<u32>)> {
        for (name, value, range) in [
            ("memory_mb", self.memory_mb, MEMORY_MB),
            ("cpu_millis", self.cpu_millis, CPU_MILLIS),
            ("max_pids", self.max_pids, MAX_PIDS),
        ] {
            if !range.contains(&value) {
                return Err((name, range));
            }
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mb) << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_in_range_and_bounds_are_named() {
        assert_eq!(Limits::RUN_DEFAULT.check(), Ok(()));
        assert_eq!(Limits::BUILD_DEFAULT.check(), Ok(()));
        let low = Limits {
            max_pids: 1,
            ..Limits::RUN_DEFAULT
        };
        assert_eq!(low.check(), Err(("max_pids", MAX_PIDS)));
        assert_eq!(Limits::RUN_DEFAULT.memory_bytes(), 512 << 20);
    }
}
