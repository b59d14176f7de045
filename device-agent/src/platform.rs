//! The board's clock and CPU affinity: the two places the agent talks to the
//! Linux kernel directly.

use std::fmt;

/// CLOCK_MONOTONIC in nanoseconds, via `clock_gettime(2)`.
///
/// Every timestamp the agent reports comes from here, so `clock` replies,
/// run windows and per-iteration latencies share one time base that the
/// harness can map onto its own clock. CLOCK_MONOTONIC (not `_RAW`) is the
/// clock `std::time::Instant` uses on Linux and is NTP-slewed but never jumps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time this process's threads have used, ns (CLOCK_PROCESS_CPUTIME_ID); `None` where
/// the clock is not available.
pub fn process_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// A set of CPU numbers, as written on the command line: `0,1`, `0-3`, `0-1,4`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

/// Why a CPU list did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad CPU list `{list}`: {reason} (expected e.g. `0,1` or `0-3`)")]
pub struct CpuListError {
    pub list: String,
    pub reason: String,
}

/// Highest CPU number accepted: the size of glibc's and musl's fixed `cpu_set_t` (1024 bits).
pub const MAX_CPU: usize = 1023;

impl CpuList {
    /// Parses `0,1`, `0-3`, `0-1,4` (the format of `/sys/devices/system/cpu/online`).
    pub fn parse(list: &str) -> Result<Self, CpuListError> {
        let err = |reason: String| CpuListError { list: list.to_owned(), reason };
        let mut cpus = Vec::new();
        for part in list.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(err("empty entry".into()));
            }
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let num = |s: &str| s.parse::<usize>().map_err(|_| err(format!("`{s}` is not a CPU number")));
            let (lo, hi) = (num(lo)?, num(hi)?);
            if lo > hi {
                return Err(err(format!("range {lo}-{hi} runs backwards")));
            }
            if hi > MAX_CPU {
                return Err(err(format!("CPU {hi} is above the limit {MAX_CPU}")));
            }
            cpus.extend(lo..=hi);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(Self(cpus))
    }

    pub fn from_cpus(mut cpus: Vec<usize>) -> Self {
        cpus.sort_unstable();
        cpus.dedup();
        Self(cpus)
    }

    pub fn cpus(&self) -> &[usize] {
        &self.0
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for CpuList {
    type Err = CpuListError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Pins the calling thread to `cpus` with `sched_setaffinity(2)`.
///
/// Call it before any other thread starts: threads inherit the mask of the
/// thread that creates them, so the worker threads of a multi-threaded
/// kernel stay on the same CPUs.
pub fn set_affinity(cpus: &CpuList) -> std::io::Result<()> {
    if cpus.cpus().is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty CPU list"));
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.cpus() {
        // SAFETY: `cpu` <= MAX_CPU < CPU_SETSIZE, checked when the list was parsed.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CPUs the calling thread may run on (`sched_getaffinity(2)`); empty if the call fails.
pub fn current_affinity() -> CpuList {
    // SAFETY: as in `set_affinity`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable and of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return CpuList(Vec::new());
    }
    // SAFETY: `set` was filled by the kernel; CPU_ISSET reads bits below CPU_SETSIZE.
    CpuList((0..=MAX_CPU).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// Exits the process when its parent goes away (checked every `period` on a thread of its own).
///
/// The harness drives the agent through an SSH channel or a pipe. When that session dies
/// (a dropped connection, `hil` killed), sshd does not signal a command that has no pty, and
/// an agent in the middle of a timed window would not notice the closed stdin until its next
/// write: it would keep computing on the pinned core, into the window of the retried cell.
/// Being re-parented (the parent pid changes) is the reliable sign, and it costs one
/// `getppid` per period.
pub fn exit_when_orphaned(period: std::time::Duration) {
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() };
    if parent <= 1 {
        return; // started by init or a subreaper-less daemon: nothing to watch
    }
    let spawned = std::thread::Builder::new().name("orphan-watch".into()).spawn(move || loop {
        std::thread::sleep(period);
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            crate::log(format_args!("the session that started the agent is gone (parent {parent} exited); exiting"));
            std::process::exit(3);
        }
    });
    if let Err(e) = spawned {
        crate::log(format_args!("cannot watch the parent process: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(CpuList::parse("0,1").unwrap().cpus(), &[0, 1]);
        assert_eq!(CpuList::parse("0-3").unwrap().cpus(), &[0, 1, 2, 3]);
        assert_eq!(CpuList::parse(" 4, 0-1 ,1").unwrap().cpus(), &[0, 1, 4]);
        assert_eq!(CpuList::parse("2").unwrap().to_string(), "2");
    }

    #[test]
    fn rejects_bad_lists_naming_the_problem() {
        let e = CpuList::parse("0,,1").unwrap_err();
        assert!(e.to_string().contains("empty entry"), "{e}");
        let e = CpuList::parse("3-1").unwrap_err();
        assert!(e.to_string().contains("3-1 runs backwards"), "{e}");
        let e = CpuList::parse("a").unwrap_err();
        assert!(e.to_string().contains("`a` is not a CPU number"), "{e}");
        let e = CpuList::parse("0-5000").unwrap_err();
        assert!(e.to_string().contains("5000"), "{e}");
    }

    #[test]
    fn monotonic_clock_does_not_go_back() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
        assert!(a > 0);
    }

    #[test]
    fn affinity_round_trips_in_a_thread() {
        // In a fresh thread so the test runner's threads keep their mask.
        std::thread::spawn(|| {
            let before = current_affinity();
            assert!(!before.cpus().is_empty());
            let first = CpuList::from_cpus(vec![before.cpus()[0]]);
            set_affinity(&first).unwrap();
            assert_eq!(current_affinity(), first);
        })
        .join()
        .unwrap();
    }
}
