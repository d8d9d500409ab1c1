//! A flow's socket ops on the epoll executor: each tried with one
//! non-blocking syscall (`send`/`recv` for streams, `sendmmsg`/`recvmmsg`
//! for datagrams) until done or `EAGAIN` (see the [parent module](super)).

use std::os::fd::RawFd;

use super::{DGRAM_ROUNDS, Epoll, shutdown_write, sys};
use crate::dataplane::io::Completion;
use crate::stack::flow::FlowId;
use crate::stack::ops::{Errno, HostEvent};

impl Epoll {
    pub(super) fn send_stream(&mut self, id: FlowId, fd: RawFd) {
        let mut done = Vec::new();
        let mut short = 0;
        let Some(f) = self.flow_mut(id) else { return };
        while let Some(buf) = f.sends.front() {
            let rest = buf.get(f.sent..).unwrap_or_default();
            let r = if rest.is_empty() {
                Ok(0)
            } else {
                sys::send(fd, rest)
            };
            match r {
                Ok(n) if f.sent + n < buf.len() => {
                    // A short write: the rest waits for EPOLLOUT (or goes
                    // at once if there is room again).
                    f.sent += n;
                    short += 1;
                }
                Ok(_) => {
                    f.sent = 0;
                    let buf = f.sends.pop_front().unwrap_or_default();
                    done.push((Ok(buf.len()), buf));
                }
                Err(libc::EAGAIN) => break,
                Err(libc::EINTR) => {}
                Err(e) => {
                    f.sent = 0;
                    let buf = f.sends.pop_front().unwrap_or_default();
                    done.push((Err(e), buf));
                }
            }
        }
        if f.sends.is_empty() && std::mem::take(&mut f.shutdown_pending) {
            shutdown_write(f);
        }
        self.short_sends += short;
        for (result, buf) in done {
            self.recycle(buf);
            self.ready
                .push_back(Completion::Host(HostEvent::Sent { flow: id, result }));
        }
    }

    pub(super) fn recv_stream(&mut self, id: FlowId, fd: RawFd) {
        let Some(max) = self.flow_mut(id).and_then(|f| f.recv) else {
            return;
        };
        let mut buf = self.spare.pop().unwrap_or_default();
        let result = loop {
            match sys::recv(fd, &mut buf, max) {
                Err(libc::EINTR) => {}
                Err(libc::EAGAIN) => {
                    self.recycle(buf);
                    return;
                }
                Ok(_) => break Ok(buf),
                Err(e) => {
                    self.recycle(buf);
                    break Err(e);
                }
            }
        };
        if let Some(f) = self.flow_mut(id) {
            f.recv = None;
        }
        self.ready
            .push_back(Completion::Host(HostEvent::Received { flow: id, result }));
    }

    pub(super) fn send_datagrams(&mut self, id: FlowId, fd: RawFd) {
        let mut done: Vec<(Result<usize, Errno>, Vec<u8>)> = Vec::new();
        let Some(f) = self.flow_mut(id) else { return };
        while !f.sends.is_empty() {
            match sys::send_batch(fd, f.sends.iter().map(Vec::as_slice)) {
                Ok(n) => {
                    for buf in f.sends.drain(..n.min(f.sends.len())) {
                        done.push((Ok(buf.len()), buf));
                    }
                    if n == 0 {
                        break;
                    }
                }
                Err(libc::EAGAIN) => break,
                Err(libc::EINTR) => {}
                Err(e) => {
                    // This datagram fails; the next ones are tried.
                    let buf = f.sends.pop_front().unwrap_or_default();
                    done.push((Err(e), buf));
                }
            }
        }
        for (result, buf) in done {
            self.recycle(buf);
            self.ready
                .push_back(Completion::Host(HostEvent::Sent { flow: id, result }));
        }
    }

    pub(super) fn recv_datagrams(&mut self, id: FlowId, fd: RawFd) {
        if !self.flow_mut(id).is_some_and(|f| f.receiving) {
            return;
        }
        self.ensure_dgram_bufs();
        for _ in 0..DGRAM_ROUNDS {
            let mut bufs = std::mem::take(&mut self.dgram_bufs);
            let r = sys::recv_batch(fd, &mut bufs, None);
            let full = matches!(r, Ok(n) if n == bufs.len());
            match r {
                Ok(n) => {
                    for b in &bufs[..n] {
                        let data = self.copy_out(b);
                        self.ready.push_back(Completion::Host(HostEvent::Received {
                            flow: id,
                            result: Ok(data),
                        }));
                    }
                }
                Err(libc::EAGAIN) => {}
                Err(libc::EINTR) => {}
                Err(e) => {
                    // ECONNREFUSED: the host's ICMP port unreachable; the
                    // flow goes on. Anything else ends its receiving.
                    self.ready.push_back(Completion::Host(HostEvent::Received {
                        flow: id,
                        result: Err(e),
                    }));
                    if e != libc::ECONNREFUSED
                        && let Some(f) = self.flow_mut(id)
                    {
                        f.receiving = false;
                    }
                }
            }
            self.dgram_bufs = bufs;
            match r {
                Ok(_) if full => {}
                Err(libc::ECONNREFUSED | libc::EINTR) => {}
                _ => return,
            }
        }
        // More may be queued: go on before the next wait.
        self.mark_dirty(id);
    }
}
