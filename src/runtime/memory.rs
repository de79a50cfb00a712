//! Start-up tuning of glibc's allocator, the one the container image (distroless/cc) and
//! Debian builds use; and the resident memory `/metrics` reports ([`resident_bytes`]).
//!
//! A watch cache of 10,000 resources is a few tens of MiB of small, long-lived allocations,
//! while every API and SSM answer makes short-lived ones on whichever thread parsed it. glibc
//! gives each thread that contends for the heap its own arena (up to 8 per core) and keeps
//! what is freed in each, so resident memory grew to about twice the live heap on the fleet
//! benchmark (heaptrack: 35 MiB live at the peak, 79 MiB resident). One arena, and large
//! buffers (list pages, List answers) in their own mappings returned when freed, took the peak
//! to 72 MiB (the same run with these settings given as environment variables).
//!
//! One arena means one allocator lock for all threads. The operator's threads spend little of
//! their time allocating (its CPU on the benchmark did not grow), and nodes with many cores no
//! longer multiply its memory.
//!
//! Settings the environment gives (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TRIM_THRESHOLD_`, `glibc.malloc.*` in `GLIBC_TUNABLES`) win: nothing is changed
//! then.

/// Arenas for the whole process.
const ARENA_MAX: i32 = 1;
/// Allocations from this size up get their own mapping, unmapped when freed.
const MMAP_THRESHOLD: i32 = 64 * 1024;
/// Free memory at the top of the heap beyond this is given back to the system.
const TRIM_THRESHOLD: i32 = 64 * 1024;

/// The environment variables with which an operator tunes glibc's allocator themselves.
const OVERRIDES: [&str; 4] = [
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "GLIBC_TUNABLES",
];

/// Applies the settings above unless the environment tunes the allocator. Call first thing,
/// before any thread starts.
pub fn tune_allocator() {
    let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    if !environment_tunes(var) {
        apply();
    }
}

/// Whether the environment (`var` reads a variable) tunes the allocator.
fn environment_tunes(var: impl Fn(&str) -> Option<String>) -> bool {
    OVERRIDES.iter().any(|name| match var(name) {
        Some(value) if *name == "GLIBC_TUNABLES" => value.contains("glibc.malloc."),
        Some(_) => true,
        None => false,
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() {
    for (param, value) in [
        (libc::M_ARENA_MAX, ARENA_MAX),
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ] {
        // SAFETY: mallopt only sets allocator parameters; these are valid for glibc, and it
        // is called before any other thread exists. A refusal (returns 0) leaves glibc's
        // defaults, which work, only with more memory.
        unsafe {
            libc::mallopt(param, value);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() {}

/// The process's resident memory (`VmRSS` of `/proc/self/status`), in bytes; `None` where
/// there is no such file (not Linux).
pub fn resident_bytes() -> Option<u64> {
    vm_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes (the kernel gives kB).
fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_vm_rss() {
        let status = "Name:\tssm-operator\nVmHWM:\t   65432 kB\nVmRSS:\t   20480 kB\nThreads:\t4\n";
        assert_eq!(vm_rss(status), Some(20480 * 1024));
        assert_eq!(vm_rss("Name:\tx\n"), None);
        if cfg!(target_os = "linux") {
            assert!(
                resident_bytes().is_some_and(|b| b > 0),
                "this test process has memory"
            );
        }
    }

    /// An environment with only `name` set, to `value`.
    fn only(name: &'static str, value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |n| (n == name).then(|| value.to_string())
    }

    #[test]
    fn settings_the_environment_gives_win() {
        assert!(!environment_tunes(|_| None), "nothing set: tuned here");
        for name in [
            "MALLOC_ARENA_MAX",
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
        ] {
            assert!(environment_tunes(only(name, "4")), "{name} set: left alone");
        }
        assert!(environment_tunes(only(
            "GLIBC_TUNABLES",
            "glibc.cpu.hwcaps=-AVX2:glibc.malloc.arena_max=4"
        )));
        assert!(
            !environment_tunes(only("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX2")),
            "tunables of other parts of glibc do not count"
        );
        assert!(
            !environment_tunes(only("MALLOC_CHECK_", "3")),
            "unrelated variables do not count"
        );
    }
}
