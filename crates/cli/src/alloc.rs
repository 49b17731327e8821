//! The binary's allocator: mimalloc, told to keep freed memory for a minute.
//!
//! A training step allocates and frees many large, short-lived tensor buffers. glibc's
//! allocator returned and re-faulted them (benches/results/cpu-throughput.md, section 4).
//! mimalloc by default gives memory it has not reused for 1 s back to the OS ("purging"), so a
//! step longer than that (gpt2-124m on the CPU: seconds) faults its activations in again every
//! step, and the kernel zeroes each page: measured 7.7–8.7 s → 4.8–5.2 s per step at 124M
//! B2 T256, −6 % at cpu-small (section 10). A 60 s delay keeps everything a training loop
//! reuses; memory idle for a minute still goes back.
//!
//! `expand` is the opposite case: it allocates each big buffer once (the loaded source, the
//! target, one forward pass each) and frees the source before the target's forward pass and the
//! write. Kept for a minute, that freed memory stayed resident next to the target and its
//! forward pass and put the command's peak ~500 MB over source + target at gpt2-124m → ×2;
//! returned at once, the peak is the expansion's own (benches/results/expand-gpt2-124m-cpu.md).

use std::ffi::{c_int, c_long};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay` (its `mi_option_t` enum; libmimalloc-sys 0.1.49 names
/// no constant for it). The test below checks the number against the option's default.
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// How long freed memory stays with the process before mimalloc returns it to the OS.
const PURGE_DELAY_MS: c_long = 60_000;

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
}

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`] unless the user set `MIMALLOC_PURGE_DELAY`.
pub fn keep_freed_memory() {
    set_purge_delay(PURGE_DELAY_MS);
}

/// Sets mimalloc's purge delay to 0 (freed memory goes back to the OS at once) unless the user
/// set `MIMALLOC_PURGE_DELAY`: for commands that free big buffers they do not allocate again.
pub fn return_freed_memory() {
    set_purge_delay(0);
}

fn set_purge_delay(ms: c_long) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: plain C calls into the allocator linked in above; the option is an int.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        fn mi_option_get(option: c_int) -> c_long;
    }

    /// The current purge delay in milliseconds.
    fn purge_delay_ms() -> c_long {
        // SAFETY: a plain C call into the allocator; the option is an int.
        unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    /// Option 15 is the purge delay: before it is set it reads mimalloc 3's documented default
    /// (1000 ms; another option at 15 would read differently), and it reads back what is set
    /// (one test: the option is global to the test process).
    #[test]
    fn purge_delay_is_option_15_and_is_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the user's value; nothing to check against
        }
        assert_eq!(purge_delay_ms(), 1000, "mimalloc's default purge delay");
        keep_freed_memory();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        return_freed_memory();
        assert_eq!(purge_delay_ms(), 0);
    }
}
