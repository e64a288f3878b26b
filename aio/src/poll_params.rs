//! [`PollParams`]: adaptive busy polling's three numbers, named.

use std::time::Duration;

/// Adaptive busy polling (QEMU: the `max_ns`, `grow` and `shrink` of
/// `aio_context_set_poll_params`): before sleeping, a blocking `poll` spins for up to
/// the current polling time, which starts at 4 µs, is multiplied by `grow` while waits
/// stay under `max`, and divided by `shrink` when a wait exceeds `max`. Off (`max` of
/// zero) by default.
///
/// ```
/// use std::time::Duration;
/// use aioctx_aio::{AioContext, PollParams};
/// let ctx = AioContext::builder()
///     .poll_params(PollParams::up_to(Duration::from_micros(32)).grow(4).shrink(2))
///     .build()?;
/// assert_eq!(ctx.poll_params().max(), Duration::from_micros(32));
/// ctx.set_poll_params(PollParams::OFF);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollParams {
    max_ns: u64,
    grow: u64,
    shrink: u64,
}

impl PollParams {
    /// No busy polling: a blocking `poll` goes to sleep at once.
    pub const OFF: Self = Self {
        max_ns: 0,
        grow: 0,
        shrink: 0,
    };

    /// Busy polling for up to `max` (saturating at `u64::MAX` ns), doubling while waits
    /// stay under it and resetting to zero when one exceeds it (QEMU's defaults for
    /// `grow` and `shrink` of 0).
    pub fn up_to(max: Duration) -> Self {
        Self {
            max_ns: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
            ..Self::OFF
        }
    }

    /// The same, from QEMU's raw numbers (`aio_context_set_poll_params(ctx, max_ns,
    /// grow, shrink)`).
    pub fn from_qemu(max_ns: u64, grow: u64, shrink: u64) -> Self {
        Self {
            max_ns,
            grow,
            shrink,
        }
    }

    /// Multiplies the polling time by `factor` while waits stay under the maximum; 0 (the
    /// default) means 2.
    pub fn grow(self, factor: u64) -> Self {
        Self {
            grow: factor,
            ..self
        }
    }

    /// Divides the polling time by `divisor` when a wait exceeds the maximum; 0 (the
    /// default) resets it to zero.
    pub fn shrink(self, divisor: u64) -> Self {
        Self {
            shrink: divisor,
            ..self
        }
    }

    /// The longest busy poll; zero when off.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    /// Whether busy polling is on.
    pub fn is_on(&self) -> bool {
        self.max_ns != 0
    }

    /// QEMU's raw numbers: `(max_ns, grow, shrink)`.
    pub fn to_qemu(self) -> (u64, u64, u64) {
        (self.max_ns, self.grow, self.shrink)
    }
}
