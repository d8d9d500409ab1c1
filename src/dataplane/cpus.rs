//! CPU lists (`2-3`, `0,2,4-7`, as in Linux's cpulist format) and the
//! process's usable CPUs.

/// A malformed or unusable CPU list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    /// Not cpulist syntax.
    #[error("'{0}' is not a CPU list (examples: 2-3, 0,2,4-7)")]
    Syntax(String),
    /// A CPU the process may not run on.
    #[error("CPU {cpu} is not usable by this process; usable CPUs: {usable}")]
    NotUsable {
        /// The offending CPU.
        cpu: usize,
        /// The usable CPUs, as a cpulist.
        usable: String,
    },
}

/// Most CPUs a list may name.
const MAX_CPU: usize = 4096;

/// Parse a cpulist into ascending, de-duplicated CPU numbers.
pub fn parse_cpulist(s: &str) -> Result<Vec<usize>, CpuError> {
    let err = || CpuError::Syntax(s.to_string());
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a.trim().parse().map_err(|_| err())?;
        let b: usize = b.trim().parse().map_err(|_| err())?;
        if a > b || b >= MAX_CPU {
            return Err(err());
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Format CPU numbers as a compact cpulist (`0-3,6`).
pub fn format_cpulist(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// The CPUs in this process's affinity mask.
pub fn usable_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and
    // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw mut set) != 0 {
            return Vec::new();
        }
        set
    };
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, the set's capacity.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Check every CPU of `cpus` is usable; the error names the usable ones.
pub fn check_usable(cpus: &[usize]) -> Result<(), CpuError> {
    let usable = usable_cpus();
    match cpus.iter().find(|c| !usable.contains(c)) {
        Some(&cpu) => Err(CpuError::NotUsable {
            cpu,
            usable: format_cpulist(&usable),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_lists() {
        assert_eq!(parse_cpulist("2-3").unwrap(), vec![2, 3]);
        assert_eq!(parse_cpulist("0,2,4-7").unwrap(), vec![0, 2, 4, 5, 6, 7]);
        assert_eq!(parse_cpulist("3,1,1-2").unwrap(), vec![1, 2, 3]);
        for bad in ["", "a", "3-1", "1-", "-1", "1,,2", "99999"] {
            assert!(parse_cpulist(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_cpulist(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(format_cpulist(&[1]), "1");
    }

    #[test]
    fn unusable_cpu_names_the_usable_ones() {
        let usable = usable_cpus();
        assert!(!usable.is_empty());
        let beyond = usable.last().unwrap() + 1;
        let err = check_usable(&[beyond]).unwrap_err().to_string();
        assert!(err.contains(&format_cpulist(&usable)), "{err}");
        assert!(check_usable(&usable).is_ok());
    }
}
