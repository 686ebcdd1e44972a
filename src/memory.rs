//! Giving freed memory back to the system. glibc's allocator keeps what a program frees for
//! its next allocations, in one pool per thread: after a pass has planned a whole fleet and let
//! the inventory go, the process stays at its largest size, and what another thread (the
//! database driver's) allocates next comes on top. `malloc_trim` hands the free pages back.

/// Returns the allocator's free pages to the system, where the allocator is glibc's (a few
/// milliseconds, however much is free); elsewhere, nothing.
pub fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it is thread-safe and
    // has no preconditions (glibc malloc(3)).
    unsafe {
        libc::malloc_trim(0);
    }
}
