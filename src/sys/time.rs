//! The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).

use std::io;
use std::time::Duration;

/// CPU time the calling thread has used so far (user and system).
pub fn thread_cpu_time() -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec owned by this frame for the
    // whole call; clock_gettime writes only into it and keeps no pointer.
    super::cvt(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) })?;
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_counts_this_threads_work_not_its_sleep() {
        let a = thread_cpu_time().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let b = thread_cpu_time().unwrap();
        assert!(
            b - a < Duration::from_millis(15),
            "sleeping used {:?}",
            b - a
        );
        let end = std::time::Instant::now() + Duration::from_millis(20);
        let mut x = 0u64;
        while std::time::Instant::now() < end {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let c = thread_cpu_time().unwrap();
        // Spinning 20 ms of wall time uses CPU time, though a loaded
        // machine may deschedule the thread for part of it.
        assert!(
            c - b >= Duration::from_millis(2),
            "spinning used {:?}",
            c - b
        );
    }
}
