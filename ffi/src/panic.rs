//! Panic containment: every entry point runs its body inside [`guard`], so a Rust panic
//! becomes `DP_PANIC` instead of unwinding into C (undefined behaviour).

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::dp_result;

/// Runs `f`, turning a panic into `DP_PANIC`.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), dp_result>) -> dp_result {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => dp_result::DP_OK,
        Ok(Err(e)) => e,
        Err(_) => dp_result::DP_PANIC,
    }
}

/// Runs `f`, turning a panic into `fallback` (for functions that return a plain value).
pub(crate) fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Returns `DP_NULL_PARAMETER` from the enclosing closure when any pointer is NULL.
macro_rules! check_null {
    ($($p:expr),+ $(,)?) => {
        if $($p.is_null())||+ {
            return Err($crate::error::dp_result::DP_NULL_PARAMETER);
        }
    };
}
pub(crate) use check_null;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_dp_panic() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = guard(|| panic!("boom"));
        std::panic::set_hook(prev);
        assert_eq!(r, dp_result::DP_PANIC);
        assert_eq!(
            guard(|| Err(dp_result::DP_TOO_LONG)),
            dp_result::DP_TOO_LONG
        );
        assert_eq!(guard_value(7, || 3), 3);
    }
}
