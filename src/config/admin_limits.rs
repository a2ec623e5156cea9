//! Limits of the admin HTTP listener (`--admin-max-conns`,
//! `--admin-timeout`); `crate::admin::serve` enforces them.

use std::time::Duration;

/// Limits of the admin listener (see `crate::admin::serve`'s module doc).
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    pub max_connections: usize,
    pub timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: 32,
            timeout: Duration::from_secs(10),
        }
    }
}
