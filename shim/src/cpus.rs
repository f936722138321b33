//! Where a sandbox's vCPUs run. A container's `cpuset_cpus` names host CPUs; in a VM the
//! container runs on vCPUs, so both sides are set:
//! - on the host, the sandbox cgroup's `cpuset.cpus` becomes the union of the pod's cpusets and
//!   the VMM's vCPU threads are pinned: vCPU i to the i-th CPU of that union when they are as
//!   many, else every vCPU to the whole union;
//! - in the guest, the container's cpuset becomes the vCPUs that run on the CPUs it asked for
//!   (every vCPU when the vCPUs float over the union).
//!
//! The CPU lists come from containerd's spec, never from the guest; the threads are found by the
//! names the VMM gives them, in the VMM's own /proc entry.

use std::collections::BTreeSet;

/// Host CPU numbers, or vCPU numbers in the guest.
pub type CpuSet = BTreeSet<u32>;

/// The most CPUs a set may name: what `sched_setaffinity`'s `cpu_set_t` holds.
const MAX_CPUS: u32 = libc::CPU_SETSIZE as u32;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("The cpuset {0:?} is not a CPU list such as \"0-3,6\" with CPUs below {MAX_CPUS}")]
    BadList(String),
    #[error("Cannot pin the VMM's vCPU thread {tid} to CPUs {cpus}: {source}")]
    Pin {
        tid: i32,
        cpus: String,
        source: std::io::Error,
    },
}

/// Parses a kernel CPU list ("0-3,6").
pub fn parse_list(list: &str) -> Result<CpuSet, CpuError> {
    let bad = || CpuError::BadList(list.to_string());
    let mut set = CpuSet::new();
    for part in list.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
        if lo > hi || hi >= MAX_CPUS {
            return Err(bad());
        }
        set.extend(lo..=hi);
    }
    Ok(set)
}

/// Writes `set` as a kernel CPU list, ranges folded ("0-3,6").
pub fn format_list(set: &CpuSet) -> String {
    let mut parts = Vec::new();
    let mut cpus = set.iter().copied().peekable();
    while let Some(lo) = cpus.next() {
        let mut hi = lo;
        while cpus.peek() == Some(&(hi + 1)) {
            hi += 1;
            cpus.next();
        }
        parts.push(if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        });
    }
    parts.join(",")
}

/// The host CPUs each of `vcpus` vCPUs runs on, for a pod whose containers asked for `pod`:
/// one CPU each when there are as many CPUs as vCPUs, else all of them for every vCPU.
pub fn vcpu_placement(pod: &CpuSet, vcpus: u32) -> Vec<CpuSet> {
    if pod.len() == vcpus as usize {
        pod.iter().map(|c| CpuSet::from([*c])).collect()
    } else {
        vec![pod.clone(); vcpus as usize]
    }
}

/// The vCPUs that run on the host CPUs `wanted` under `placement`: the guest cpuset of a
/// container that asked for `wanted`. Every vCPU when none does (a CPU the pod's cpusets do not
/// hold), so that the container still runs.
pub fn guest_cpus(wanted: &CpuSet, placement: &[CpuSet]) -> CpuSet {
    let on: CpuSet = (0..placement.len() as u32)
        .filter(|&i| !placement[i as usize].is_disjoint(wanted))
        .collect();
    if on.is_empty() {
        (0..placement.len() as u32).collect()
    } else {
        on
    }
}

/// The vCPU threads of VMM process `pid`, as (vCPU index, thread id), by their names `vcpuN`.
pub fn vcpu_threads(pid: u32) -> Vec<(u32, i32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<(u32, i32)> = tasks
        .flatten()
        .filter_map(|t| {
            let tid: i32 = t.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let index = comm.trim().strip_prefix("vcpu")?.parse().ok()?;
            Some((index, tid))
        })
        .collect();
    threads.sort_unstable();
    threads
}

/// Lets thread `tid` run on `cpus` only (every CPU when empty).
pub fn pin_thread(tid: i32, cpus: &CpuSet) -> Result<(), CpuError> {
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let all: CpuSet = (0..MAX_CPUS).collect();
    for &c in if cpus.is_empty() { &all } else { cpus } {
        // SAFETY: c < CPU_SETSIZE (parse_list's bound), inside the mask.
        unsafe { libc::CPU_SET(c as usize, &mut mask) };
    }
    // SAFETY: the mask is a valid cpu_set_t of the size given; the call only reads it.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&mask), &mask) };
    if r != 0 {
        return Err(CpuError::Pin {
            tid,
            cpus: format_list(cpus),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &str) -> CpuSet {
        parse_list(list).unwrap()
    }

    #[test]
    fn cpu_lists_round_trip_and_bad_ones_are_named() {
        assert_eq!(set("0-3,6"), CpuSet::from([0, 1, 2, 3, 6]));
        assert_eq!(format_list(&set("6,0-3")), "0-3,6");
        assert_eq!(format_list(&set(" 2 ")), "2");
        assert_eq!(format_list(&set("1,2,4,5,6")), "1-2,4-6");
        for bad in ["", "a", "3-1", "1,,2", "0-99999", "-1", "1024"] {
            let e = parse_list(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn vcpus_are_pinned_one_to_one_when_the_counts_match() {
        let p = vcpu_placement(&set("2,5"), 2);
        assert_eq!(p, vec![set("2"), set("5")]);
        assert_eq!(guest_cpus(&set("5"), &p), set("1"));
        assert_eq!(guest_cpus(&set("2,5"), &p), set("0-1"));
        // A CPU no vCPU runs on: the container gets every vCPU rather than none.
        assert_eq!(guest_cpus(&set("7"), &p), set("0-1"));
    }

    #[test]
    fn vcpus_float_over_the_pods_cpus_otherwise() {
        let p = vcpu_placement(&set("1-3"), 2);
        assert_eq!(p, vec![set("1-3"), set("1-3")]);
        assert_eq!(guest_cpus(&set("2"), &p), set("0-1"));
        let one = vcpu_placement(&set("1"), 1);
        assert_eq!(guest_cpus(&set("1"), &one), set("0"));
    }

    #[test]
    fn our_own_threads_can_be_pinned_and_freed() {
        let me = std::process::id();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        pin_thread(tid, &set("0")).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{me}/task/{tid}/status")).unwrap();
        assert!(status.contains("Cpus_allowed_list:\t0\n"), "{status}");
        pin_thread(tid, &CpuSet::new()).unwrap();
        assert!(vcpu_threads(me).is_empty());
    }
}
