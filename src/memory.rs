//! Giving freed memory back to the system. glibc's allocator keeps what a program frees for
//! its next allocations, in one pool per thread: after a pass has planned a whole fleet and let
//! the inventory go, the process stays at its largest size, and what another thread (the
//! database driver's) allocates next comes on top. `malloc_trim` hands the free pages back,
//! and the process keeps few pools ([`share_pools`]).

/// The most allocator pools the process keeps.
const POOLS: i32 = 2;

/// Has the process's threads share [`POOLS`] allocator pools, where the allocator is glibc's and
/// `MALLOC_ARENA_MAX` does not say otherwise; call it before any thread starts. glibc gives each
/// thread that allocates while the others do a pool of its own, up to eight per core, and each
/// keeps the pages its thread freed: the database driver's threads (one per SQLite connection)
/// each held a few MiB at an all-matching pass's peak. The process mostly waits on ECS, so
/// threads seldom allocate at the same moment.
pub fn share_pools() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before other threads exist
        // (glibc mallopt(3)).
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, POOLS);
        }
    }
}

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
