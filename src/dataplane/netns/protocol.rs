//! The parent <-> helper protocol over a `SOCK_SEQPACKET` socketpair
//! (message boundaries kept). The helper reports first, either
//! - one queue record per TAP queue, in queue order, each with exactly that
//!   queue's fd attached as `SCM_RIGHTS` (see [`encode_queue`]), or
//! - one error record and no fd (see [`encode_error`]),
//!
//! and the parent then sends the go byte ([`GO_BYTE`]). One fd per message
//! keeps every message far below `SCM_MAX_FD` (253) for any queue count up
//! to 256. The parent checks every record against what it asked for
//! ([`recv_taps`]); anything else (a missing or extra fd, an index out of
//! order, a count or name that changes) is a [`NetnsError::Protocol`], and
//! EOF before the last queue means the helper exited.
//!
//! Each message is one record of at most [`MAX_REPORT`] bytes.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::NetnsError;
use crate::dataplane::tap::{Tap, TapError};
use crate::sys::fd::{recv_msg, send_msg, set_recv_timeout};

pub(super) const REPORT_OK: u8 = 0;
pub(super) const REPORT_NO_PERMISSION: u8 = 1;
pub(super) const REPORT_NO_TUN: u8 = 2;
pub(super) const REPORT_TUN_PERMISSION: u8 = 3;
pub(super) const REPORT_OPEN_TUN: u8 = 4;
pub(super) const REPORT_SET_IFF: u8 = 5;
pub(super) const REPORT_INVALID_NAME: u8 = 6;
pub(super) const REPORT_SETUP: u8 = 7;
pub(super) const REPORT_QUEUE_COUNT: u8 = 8;
pub(super) const GO_BYTE: u8 = 1;
pub(super) const MAX_REPORT: usize = 1024;

/// An error record: a code, an errno and a detail string.
///
/// ```text
///   [code u8][errno i32 LE][detail UTF-8 ...]
/// ```
pub(super) fn encode_error(err: &NetnsError) -> Vec<u8> {
    let (code, errno, detail): (u8, i32, String) = match err {
        NetnsError::NoPermission { what, source } => (
            REPORT_NO_PERMISSION,
            source.raw_os_error().unwrap_or(0),
            what.clone(),
        ),
        NetnsError::Tap(TapError::NoTunDevice(e)) => {
            (REPORT_NO_TUN, e.raw_os_error().unwrap_or(0), String::new())
        }
        NetnsError::Tap(TapError::TunPermission(e)) => (
            REPORT_TUN_PERMISSION,
            e.raw_os_error().unwrap_or(0),
            String::new(),
        ),
        NetnsError::Tap(TapError::OpenTun(e)) => (
            REPORT_OPEN_TUN,
            e.raw_os_error().unwrap_or(0),
            String::new(),
        ),
        NetnsError::Tap(TapError::SetIff { name, source }) => (
            REPORT_SET_IFF,
            source.raw_os_error().unwrap_or(0),
            name.clone(),
        ),
        NetnsError::Tap(TapError::InvalidName(name)) => (REPORT_INVALID_NAME, 0, name.clone()),
        NetnsError::Tap(TapError::QueueCount(n)) => (REPORT_QUEUE_COUNT, 0, n.to_string()),
        NetnsError::Setup { step, source } => (
            REPORT_SETUP,
            source.raw_os_error().unwrap_or(0),
            step.clone(),
        ),
        other => (REPORT_SETUP, 0, other.to_string()),
    };
    let mut out = vec![code];
    out.extend_from_slice(&errno.to_le_bytes());
    let mut detail = detail.into_bytes();
    detail.truncate(MAX_REPORT - 5);
    out.extend_from_slice(&detail);
    out
}

pub(super) fn decode_error(msg: &[u8]) -> NetnsError {
    let Some((&code, rest)) = msg.split_first() else {
        return NetnsError::Protocol("empty report".into());
    };
    let Some((errno, detail)) = rest.split_first_chunk::<4>() else {
        return NetnsError::Protocol(format!("short error record ({} bytes)", msg.len()));
    };
    let source = io::Error::from_raw_os_error(i32::from_le_bytes(*errno));
    let detail = String::from_utf8_lossy(detail).into_owned();
    match code {
        REPORT_NO_PERMISSION => NetnsError::NoPermission {
            what: detail,
            source,
        },
        REPORT_NO_TUN => TapError::NoTunDevice(source).into(),
        REPORT_TUN_PERMISSION => TapError::TunPermission(source).into(),
        REPORT_OPEN_TUN => TapError::OpenTun(source).into(),
        REPORT_SET_IFF => TapError::SetIff {
            name: detail,
            source,
        }
        .into(),
        REPORT_INVALID_NAME => TapError::InvalidName(detail).into(),
        REPORT_QUEUE_COUNT => match detail.parse() {
            Ok(n) => TapError::QueueCount(n).into(),
            Err(_) => {
                NetnsError::Protocol(format!("bad queue count {detail:?} in an error record"))
            }
        },
        REPORT_SETUP => NetnsError::Setup {
            step: detail,
            source,
        },
        c => NetnsError::Protocol(format!("unknown report code {c}")),
    }
}

/// A queue record: queue `index` of `count`, of TAP `name`; its fd goes with it.
///
/// ```text
///   [REPORT_OK u8][index u16 LE][count u16 LE][TAP name UTF-8 ...]
/// ```
pub(super) fn encode_queue(index: usize, count: usize, name: &str) -> io::Result<Vec<u8>> {
    let field = |v: usize| {
        u16::try_from(v).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("queue number {v} out of range"),
            )
        })
    };
    let mut out = vec![REPORT_OK];
    out.extend_from_slice(&field(index)?.to_le_bytes());
    out.extend_from_slice(&field(count)?.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    if out.len() > MAX_REPORT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TAP name too long",
        ));
    }
    Ok(out)
}

/// The helper's report on success: one queue record per TAP, each with its fd.
pub(super) fn send_taps(sock: BorrowedFd<'_>, taps: &[Tap]) -> io::Result<()> {
    for (index, tap) in taps.iter().enumerate() {
        let record = encode_queue(index, taps.len(), tap.name())?;
        send_msg(sock, &record, Some(tap.as_fd()))?;
    }
    Ok(())
}

/// Receives the helper's report: `queues` queue records, or an error record.
///
/// `Ok(None)`: the helper closed its end first (it exited). The whole report must
/// arrive before `deadline` ([`NetnsError::HelperTimeout`] otherwise).
pub(super) fn recv_taps(
    sock: BorrowedFd<'_>,
    queues: usize,
    deadline: Instant,
) -> Result<Option<Vec<Tap>>, NetnsError> {
    let helper_err = |what| move |source| NetnsError::Helper { what, source };
    let mut taps: Vec<Tap> = Vec::with_capacity(queues);
    let mut buf = [0u8; MAX_REPORT];
    while taps.len() < queues {
        let left = deadline.saturating_duration_since(Instant::now());
        // SO_RCVTIMEO rounds to microseconds, and zero would mean "no timeout".
        if left < Duration::from_millis(1) {
            return Err(NetnsError::HelperTimeout);
        }
        set_recv_timeout(sock, left).map_err(helper_err("set a receive timeout"))?;
        let (n, fd) = match recv_msg(sock, &mut buf) {
            Ok(r) => r,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return Err(NetnsError::HelperTimeout);
            }
            Err(e) => return Err(helper_err("receive its report")(e)),
        };
        let index = taps.len();
        let msg = &buf[..n];
        let fd = match (msg.first(), fd) {
            (None, _) => return Ok(None),
            (Some(&REPORT_OK), Some(fd)) => fd,
            (Some(&REPORT_OK), None) => {
                return Err(NetnsError::Protocol(format!(
                    "queue record {index} of {n} bytes without its fd"
                )));
            }
            (Some(_), Some(_)) => {
                return Err(NetnsError::Protocol(
                    "an fd came with an error record".into(),
                ));
            }
            (Some(_), None) if index == 0 => return Err(decode_error(msg)),
            (Some(_), None) => {
                return Err(NetnsError::Protocol(format!(
                    "error record after {index} queue records"
                )));
            }
        };
        let Some((head, name)) = msg[1..].split_first_chunk::<4>() else {
            return Err(NetnsError::Protocol(format!(
                "short queue record ({n} bytes)"
            )));
        };
        let got = usize::from(u16::from_le_bytes([head[0], head[1]]));
        let count = usize::from(u16::from_le_bytes([head[2], head[3]]));
        if got != index {
            return Err(NetnsError::Protocol(format!(
                "queue record {got} where {index} was expected"
            )));
        }
        if count != queues {
            return Err(NetnsError::Protocol(format!(
                "{count} queues reported, {queues} asked for"
            )));
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if let Some(first) = taps.first()
            && first.name() != name
        {
            return Err(NetnsError::Protocol(format!(
                "queue {index} is on {name:?}, queue 0 on {:?}",
                first.name()
            )));
        }
        taps.push(Tap::from_fd(fd, name));
    }
    Ok(Some(taps))
}
