//! Packet capture (`--pcap FILE`): every frame between the guest and uipd,
//! in the classic pcap format that tcpdump and Wireshark read.
//!
//! # Theory of operation
//!
//! ```text
//!  worker 0 ── Capture::record ──► [ full: ArrayQueue<Record> ] ──┐
//!            ◄─ reused buffers ─── [ free: ArrayQueue<Vec<u8>> ] ◄─┤  uipd-pcap thread:
//!  worker 1 ── Capture::record ──► [ full ]  ──────────────────────┤  BufWriter<File>
//!            ◄──────────────────── [ free ] ◄──────────────────────┘
//! ```
//!
//! The data path must never wait for the disk. Each worker owns one
//! [`Capture`]: a bounded lock-free queue of records toward the writer
//! thread, and a second queue that hands the emptied buffers back. A worker
//! copies the frame into a recycled buffer and pushes it; if no buffer is
//! free (the writer has fallen `depth` frames behind) the frame is left out
//! of the capture, and the worker counts it (`pcap_drops`). So capture costs
//! the data path one copy and two queue operations per frame, and memory is
//! bounded by `depth` buffers per worker, each as large as the largest frame
//! it carried (at most a 64 KiB GSO super-frame). When a queue fills to a
//! quarter, the worker unparks the writer, which otherwise sleeps up to
//! [`IDLE`] between rounds.
//!
//! What is written: the Ethernet frame, without the virtio-net header the
//! link may carry. GSO super-frames (TSO in either direction) are written as
//! they are, one record of up to 64 KiB with the IPv4 total length of the
//! whole super-frame, not as the wire-sized segments the guest's NIC or
//! uipd's peer would see; the checksum of a frame with a partial checksum
//! (virtio-net `NEEDS_CSUM`) holds only the pseudo-header sum, so tcpdump
//! may flag it as wrong. Frames are captured where a worker takes them in
//! (`Stack::ingress`) and where it hands the stack's frames to the guest's
//! port, so every frontend gets capture. A datagram that one worker
//! reassembles for a flow another owns appears once more, whole, as the
//! owner takes it in.
//!
//! Records are in order per worker; with several workers the writer
//! interleaves them by queue, so timestamps may step back a little between
//! workers (Wireshark and tcpdump read such files; `editcap -S` or `reordercap`
//! sorts them).
//!
//! File format (libpcap's `pcap-savefile(5)`): a 24-byte header with the
//! nanosecond magic `0xa1b23c4d`, version 2.4, snaplen [`SNAPLEN`], link type
//! 1 (Ethernet); then per frame a 16-byte record header (seconds,
//! nanoseconds, captured length, original length) and the bytes, all in the
//! host's byte order (readers detect it from the magic).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::queue::ArrayQueue;

/// pcap magic for nanosecond timestamps.
pub const MAGIC_NSEC: u32 = 0xa1b2_3c4d;
/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Snapshot length in the header: every frame is captured whole (the
/// largest is a 64 KiB GSO super-frame plus its Ethernet header).
pub const SNAPLEN: u32 = 262_144;
/// Frames each worker may have waiting for the writer.
pub const DEPTH: usize = 512;
/// Longest sleep of an idle writer.
pub const IDLE: Duration = Duration::from_millis(10);
/// Buffer of the writer's file.
const FILE_BUF: usize = 1 << 20;

/// A frame on its way to the file.
struct Record {
    ts_ns: u64,
    data: Vec<u8>,
}

/// One worker's capture queue (see the module docs).
pub struct Capture {
    full: ArrayQueue<Record>,
    free: ArrayQueue<Vec<u8>>,
    /// Buffers made so far (at most `depth`); only the worker makes them.
    made: std::sync::atomic::AtomicUsize,
    depth: usize,
    writer: OnceLock<Thread>,
}

impl Capture {
    /// A queue of `depth` frames (at least 1).
    pub fn new(depth: usize) -> Capture {
        let depth = depth.max(1);
        Capture {
            full: ArrayQueue::new(depth),
            free: ArrayQueue::new(depth),
            made: 0.into(),
            depth,
            writer: OnceLock::new(),
        }
    }

    /// Queue a copy of `frame` (an Ethernet frame) stamped now. Returns
    /// false, having done nothing, when the writer is `depth` frames behind:
    /// the caller counts the drop. Never blocks.
    pub fn record(&self, frame: &[u8]) -> bool {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.record_at(ts, frame)
    }

    /// [`Capture::record`] with the timestamp given (nanoseconds since the
    /// Unix epoch).
    pub fn record_at(&self, ts_ns: u64, frame: &[u8]) -> bool {
        let mut data = match self.free.pop() {
            Some(b) => b,
            // Relaxed: only this (the producing) thread reads or writes `made`.
            None if self.made.load(Ordering::Relaxed) < self.depth => {
                self.made.fetch_add(1, Ordering::Relaxed);
                Vec::with_capacity(frame.len().max(2048))
            }
            None => return false,
        };
        data.clear();
        data.extend_from_slice(frame);
        match self.full.push(Record { ts_ns, data }) {
            Ok(()) => {
                if self.full.len() == self.depth / 4 + 1 {
                    if let Some(t) = self.writer.get() {
                        t.unpark();
                    }
                }
                true
            }
            // Cannot happen with at most `depth` buffers in all, but if it
            // did the buffer goes back and the frame counts as dropped.
            Err(r) => {
                let _ = self.free.push(r.data);
                false
            }
        }
    }

    /// Write every queued record to `out`; returns how many.
    fn drain(&self, out: &mut impl Write) -> io::Result<usize> {
        let mut n = 0;
        while let Some(r) = self.full.pop() {
            let res = write_record(out, r.ts_ns, &r.data);
            // The buffer goes back even when the write failed.
            let _ = self.free.push(r.data);
            res?;
            n += 1;
        }
        Ok(n)
    }
}

/// The pcap file header.
pub fn write_header(out: &mut impl Write) -> io::Result<()> {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&MAGIC_NSEC.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone and sigfigs: 0.
    h[16..20].copy_from_slice(&SNAPLEN.to_ne_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    out.write_all(&h)
}

/// One record: header and frame (cut to [`SNAPLEN`]).
fn write_record(out: &mut impl Write, ts_ns: u64, frame: &[u8]) -> io::Result<()> {
    let sec = u32::try_from(ts_ns / 1_000_000_000).unwrap_or(u32::MAX);
    // Cannot fail: below 10^9.
    let nsec = u32::try_from(ts_ns % 1_000_000_000).unwrap_or(0);
    let orig = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    let incl = orig.min(SNAPLEN);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&sec.to_ne_bytes());
    h[4..8].copy_from_slice(&nsec.to_ne_bytes());
    h[8..12].copy_from_slice(&incl.to_ne_bytes());
    h[12..16].copy_from_slice(&orig.to_ne_bytes());
    out.write_all(&h)?;
    // Cannot truncate: `incl` ≤ frame.len().
    out.write_all(&frame[..incl as usize])
}

/// The capture: one [`Capture`] per worker and the `uipd-pcap` writer thread.
pub struct Pcap {
    captures: Vec<Arc<Capture>>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<io::Result<u64>>,
}

impl Pcap {
    /// Write the header to `file` (created by the caller before the
    /// sandbox) and start the writer for `workers` queues of `depth`
    /// frames.
    pub fn start(file: File, workers: usize, depth: usize) -> io::Result<Pcap> {
        let mut out = BufWriter::with_capacity(FILE_BUF, file);
        write_header(&mut out)?;
        out.flush()?;
        let captures: Vec<Arc<Capture>> = (0..workers.max(1))
            .map(|_| Arc::new(Capture::new(depth)))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (caps, st) = (captures.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("uipd-pcap".into())
            .spawn(move || {
                if let Err(e) = crate::sandbox::confine(crate::sandbox::Role::Pcap) {
                    return Err(io::Error::other(e.to_string()));
                }
                writer(&caps, &st, out)
            })?;
        for c in &captures {
            let _ = c.writer.set(handle.thread().clone());
        }
        Ok(Pcap {
            captures,
            stop,
            handle,
        })
    }

    /// Worker `i`'s queue.
    pub fn capture(&self, i: usize) -> Arc<Capture> {
        self.captures[i.min(self.captures.len() - 1)].clone()
    }

    /// Stop the writer once it has written everything queued (call after the
    /// workers stopped), flush the file; returns the records written.
    pub fn finish(self) -> io::Result<u64> {
        // Release: pairs with the writer's Acquire load, so the records the
        // workers queued before they stopped (joined) are seen by its last
        // drain.
        self.stop.store(true, Ordering::Release);
        self.handle.thread().unpark();
        self.handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the pcap writer panicked")))
    }
}

/// The writer thread: drain every queue, sleep when all are empty, flush
/// when idle and at the end. After a write error it keeps draining (so
/// the workers keep recycling buffers) but writes nothing more.
fn writer(
    captures: &[Arc<Capture>],
    stop: &AtomicBool,
    mut out: BufWriter<File>,
) -> io::Result<u64> {
    let mut written = 0u64;
    let mut dirty = false;
    let mut failed: Option<io::Error> = None;
    loop {
        // Read the flag before the last drain, so nothing queued before it
        // was set is left behind.
        let stopping = stop.load(Ordering::Acquire);
        let mut n = 0;
        for c in captures {
            let res = match failed {
                None => c.drain(&mut out),
                Some(_) => c.drain(&mut io::sink()),
            };
            match res {
                Ok(k) => n += k,
                Err(e) => {
                    log::error!("pcap: write failed: {e}; the capture stops here");
                    failed = Some(e);
                }
            }
        }
        if failed.is_none() {
            written += n as u64;
        }
        dirty |= n > 0;
        if stopping {
            break;
        }
        if n == 0 {
            // Idle: let a reader see what there is.
            if dirty && failed.is_none() {
                if let Err(e) = out.flush() {
                    log::error!("pcap: write failed: {e}; the capture stops here");
                    failed = Some(e);
                }
            }
            dirty = false;
            std::thread::park_timeout(IDLE);
        }
    }
    match failed {
        Some(e) => Err(e),
        None => out.flush().map(|()| written),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_instead_of_blocking_and_recovers() {
        // No writer: nothing drains.
        let c = Capture::new(4);
        let frame = [0xabu8; 60];
        let t = std::time::Instant::now();
        let ok = (0..1000).filter(|_| c.record_at(1, &frame)).count();
        assert_eq!(ok, 4, "exactly `depth` frames fit");
        assert!(t.elapsed() < Duration::from_secs(1), "record never waits");
        assert_eq!(c.made.load(Ordering::Relaxed), 4, "buffers are bounded");
        // Drained: the buffers come back and are reused, not re-made.
        let mut out = Vec::new();
        assert_eq!(c.drain(&mut out).unwrap(), 4);
        assert_eq!(out.len(), 4 * (16 + 60));
        assert!(c.record_at(2, &[1, 2, 3]));
        assert_eq!(c.made.load(Ordering::Relaxed), 4);
    }

    /// A parsed record: seconds, nanoseconds, original length, bytes.
    type Rec = (u32, u32, u32, Vec<u8>);

    /// Parse a pcap file written by this module: (header fields, records).
    fn parse(b: &[u8]) -> ([u32; 4], Vec<Rec>) {
        let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_ne_bytes(b[i..i + 2].try_into().unwrap());
        let hdr = [
            u32_at(0),
            u32::from(u16_at(4)) << 16 | u32::from(u16_at(6)),
            u32_at(16),
            u32_at(20),
        ];
        let mut recs = Vec::new();
        let mut i = 24;
        while i < b.len() {
            let (sec, nsec, incl, orig) = (u32_at(i), u32_at(i + 4), u32_at(i + 8), u32_at(i + 12));
            assert_eq!(incl, orig);
            let start = i + 16;
            let end = start + incl as usize;
            recs.push((sec, nsec, orig, b[start..end].to_vec()));
            i = end;
        }
        (hdr, recs)
    }

    #[test]
    fn the_writer_produces_a_nanosecond_pcap_file_and_flushes_at_finish() {
        let dir = std::env::temp_dir().join(format!("uipd-pcap-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcap");
        let p = Pcap::start(File::create(&path).unwrap(), 2, 16).unwrap();
        let big = vec![7u8; 65_000];
        assert!(
            p.capture(0)
                .record_at(1_700_000_000_123_456_789, &[1u8; 60])
        );
        assert!(p.capture(1).record_at(1_700_000_001_000_000_001, &big));
        assert!(
            p.capture(0)
                .record_at(1_700_000_002_999_999_999, &[2u8; 14])
        );
        assert_eq!(p.finish().unwrap(), 3);
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let (hdr, mut recs) = parse(&bytes);
        assert_eq!(hdr, [0xa1b2_3c4d, 2 << 16 | 4, SNAPLEN, 1]);
        assert_eq!(recs.len(), 3);
        recs.sort_by_key(|r| (r.0, r.1));
        assert_eq!(
            (recs[0].0, recs[0].1, recs[0].2),
            (1_700_000_000, 123_456_789, 60)
        );
        assert_eq!(
            (recs[1].0, recs[1].1, recs[1].2),
            (1_700_000_001, 1, 65_000)
        );
        assert_eq!(recs[1].3, big);
        assert_eq!((recs[2].1, recs[2].3.len()), (999_999_999, 14));
    }
}
