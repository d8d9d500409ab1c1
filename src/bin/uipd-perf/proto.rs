//! Control protocol between `uipd-perf` client and server.
//!
//! One test runs over one control connection (TCP, default port 12865) plus
//! one data socket that the server opens for that test alone. Every control
//! message is one JSON object on one line, at most [`MAX_LINE`] bytes:
//!
//! ```text
//! client                                server
//!   | -- Hello{version,test,sizes,ms} -->  |  binds a data socket on its
//!   | <-- Ready{data_port} / Error ------  |  control address, port 0
//!   | ==== data phase on data_port ======  |  (duration_ms, bounded)
//!   | -- Done --------------------------->  |  server drains, stops
//!   | <-- Result{bytes,count,elapsed_s} --  |
//! ```
//!
//! `count` is datagrams (UDP_STREAM), transactions (TCP_RR, TCP_CRR) or
//! zero. The server never trusts the request: sizes and duration are
//! checked against [`limits`] before any buffer is allocated.

use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

/// Protocol version sent in [`Msg::Hello`]; a server rejects any other.
pub const VERSION: u32 = 1;

/// Longest control line accepted, newline included.
pub const MAX_LINE: u64 = 4096;

/// Request/response bounds enforced by the server and the client's parser.
pub mod limits {
    /// Largest TCP message or request/response size (16 MiB).
    pub const MAX_TCP_MSG: usize = 16 << 20;
    /// Largest UDP payload over IPv4 (65535 - 20 - 8).
    pub const MAX_UDP_MSG: usize = 65507;
    /// Longest test (one day).
    pub const MAX_DURATION_MS: u64 = 86_400_000;
}

/// The benchmark to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TestKind {
    /// Client sends a TCP byte stream.
    #[value(name = "TCP_STREAM")]
    TcpStream,
    /// Server sends a TCP byte stream ("stream" backwards).
    #[value(name = "TCP_MAERTS")]
    TcpMaerts,
    /// Client sends UDP datagrams.
    #[value(name = "UDP_STREAM")]
    UdpStream,
    /// Request/response on one TCP connection.
    #[value(name = "TCP_RR")]
    TcpRr,
    /// Connect, request/response, close per transaction.
    #[value(name = "TCP_CRR")]
    TcpCrr,
}

impl TestKind {
    /// netperf's name for the test.
    pub fn name(self) -> &'static str {
        match self {
            Self::TcpStream => "TCP_STREAM",
            Self::TcpMaerts => "TCP_MAERTS",
            Self::UdpStream => "UDP_STREAM",
            Self::TcpRr => "TCP_RR",
            Self::TcpCrr => "TCP_CRR",
        }
    }

    /// Whether the test measures transactions rather than a stream.
    pub fn is_rr(self) -> bool {
        matches!(self, Self::TcpRr | Self::TcpCrr)
    }
}

/// Parameters of one test, as sent in [`Msg::Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSpec {
    /// Which test.
    pub test: TestKind,
    /// Length of the data phase in milliseconds.
    pub duration_ms: u64,
    /// Write size (TCP_STREAM, TCP_MAERTS) or datagram payload (UDP_STREAM).
    pub msg_size: usize,
    /// Request size (TCP_RR, TCP_CRR).
    pub req_size: usize,
    /// Response size (TCP_RR, TCP_CRR).
    pub resp_size: usize,
}

impl TestSpec {
    /// Checks the sizes and the duration against [`limits`].
    pub fn validate(&self) -> Result<(), String> {
        if self.duration_ms == 0 || self.duration_ms > limits::MAX_DURATION_MS {
            return Err(format!(
                "duration {} ms is outside 1..={} ms",
                self.duration_ms,
                limits::MAX_DURATION_MS
            ));
        }
        let max_msg = match self.test {
            TestKind::UdpStream => limits::MAX_UDP_MSG,
            _ => limits::MAX_TCP_MSG,
        };
        if self.msg_size == 0 || self.msg_size > max_msg {
            return Err(format!(
                "message size {} is outside 1..={max_msg} for {}",
                self.msg_size,
                self.test.name()
            ));
        }
        for (what, n) in [("request", self.req_size), ("response", self.resp_size)] {
            if n == 0 || n > limits::MAX_TCP_MSG {
                return Err(format!(
                    "{what} size {n} is outside 1..={}",
                    limits::MAX_TCP_MSG
                ));
            }
        }
        Ok(())
    }
}

/// A control message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// Client: run this test.
    Hello {
        /// Must equal [`VERSION`].
        version: u32,
        /// The test.
        #[serde(flatten)]
        spec: TestSpec,
    },
    /// Server: the data socket is bound on the control address at this port.
    Ready {
        /// TCP or UDP port of the data socket.
        data_port: u16,
    },
    /// Server: the test was refused or failed.
    Error {
        /// Why.
        message: String,
    },
    /// Client: the data phase is over on this side.
    Done,
    /// Server: what it measured.
    Result {
        /// Bytes received (or sent, for TCP_MAERTS) by the server.
        bytes: u64,
        /// Datagrams received or transactions served.
        count: u64,
        /// Seconds from the server's first to last data event.
        elapsed_s: f64,
    },
}

/// Writes `msg` as one line.
pub fn send(w: &mut impl Write, msg: &Msg) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads one line (at most [`MAX_LINE`] bytes) and parses it.
///
/// The caller's read timeout applies; a peer that closes first yields
/// `UnexpectedEof`.
pub fn recv(r: &mut impl BufRead) -> io::Result<Msg> {
    let mut line = String::new();
    let n = Read::take(r.by_ref(), MAX_LINE).read_line(&mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "control connection closed by peer",
        ));
    }
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control line too long or truncated",
        ));
    }
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn spec() -> TestSpec {
        TestSpec {
            test: TestKind::UdpStream,
            duration_ms: 1000,
            msg_size: 1400,
            req_size: 1,
            resp_size: 1,
        }
    }

    #[test]
    fn roundtrip() {
        let msgs = [
            Msg::Hello {
                version: VERSION,
                spec: spec(),
            },
            Msg::Ready { data_port: 4242 },
            Msg::Done,
            Msg::Result {
                bytes: 7,
                count: 3,
                elapsed_s: 1.5,
            },
            Msg::Error {
                message: "no".into(),
            },
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            send(&mut buf, m).unwrap();
        }
        let mut r = Cursor::new(buf);
        for m in &msgs {
            assert_eq!(&recv(&mut r).unwrap(), m);
        }
        assert_eq!(
            recv(&mut r).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn hello_wire_format() {
        let mut buf = Vec::new();
        send(
            &mut buf,
            &Msg::Hello {
                version: 1,
                spec: spec(),
            },
        )
        .unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(s.contains(r#""type":"hello""#), "{s}");
        assert!(s.contains(r#""test":"UDP_STREAM""#), "{s}");
    }

    #[test]
    fn long_line_rejected() {
        let mut r = Cursor::new(vec![b'x'; 10_000]);
        assert_eq!(recv(&mut r).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn validate_bounds() {
        assert!(spec().validate().is_ok());
        let big_udp = TestSpec {
            msg_size: 65508,
            ..spec()
        };
        assert!(big_udp.validate().is_err());
        let max_udp = TestSpec {
            msg_size: 65507,
            ..spec()
        };
        assert!(max_udp.validate().is_ok());
        let zero = TestSpec {
            duration_ms: 0,
            ..spec()
        };
        assert!(zero.validate().is_err());
        let huge_req = TestSpec {
            test: TestKind::TcpRr,
            req_size: limits::MAX_TCP_MSG + 1,
            ..spec()
        };
        assert!(huge_req.validate().is_err());
    }
}
