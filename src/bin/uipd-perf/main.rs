//! uipd-perf: a netperf-style benchmark tool.
//!
//! `uipd-perf -s` serves tests; `uipd-perf -H HOST -t TEST -l SECS` runs one
//! and prints netperf-style results (or one JSON object with `--json`).
//! Tests: TCP_STREAM, TCP_MAERTS, UDP_STREAM, TCP_RR, TCP_CRR. The control
//! protocol is in [`proto`], the bounded socket helpers in [`net`].
//!
//! Exit status: 0 on success, 1 on a runtime error (unreachable server,
//! refused or failed test), 2 on a bad command line.

mod client;
mod net;
mod proto;
mod report;
mod server;

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser};

use crate::proto::{TestKind, TestSpec, limits};

/// Default control port (netperf's).
const DEFAULT_PORT: u16 = 12865;
/// Default TCP write size.
const DEFAULT_TCP_MSG: usize = 128 << 10;
/// Default UDP payload: fits a 1500-byte MTU with IPv4/IPv6 headers.
const DEFAULT_UDP_MSG: usize = 1400;

/// netperf-style network benchmark (server and client).
#[derive(Parser, Debug)]
#[command(name = "uipd-perf", version)]
#[command(group(ArgGroup::new("mode").required(true).args(["server", "host"])))]
struct Cli {
    /// Run as a server.
    #[arg(short = 's', long)]
    server: bool,

    /// Run a test against the server on HOST.
    #[arg(short = 'H', long, value_name = "HOST")]
    host: Option<String>,

    /// Control port (server: 0 picks a free one and prints it).
    #[arg(short = 'p', long, default_value_t = DEFAULT_PORT)]
    port: u16,

    /// Server: address to listen on (IPv4 or IPv6).
    #[arg(short = 'B', long, value_name = "ADDR", default_value = "0.0.0.0")]
    bind: IpAddr,

    /// Server: exit after one test.
    #[arg(long, conflicts_with = "host")]
    once: bool,

    /// Client: the test.
    #[arg(
        short = 't',
        long,
        value_enum,
        ignore_case = true,
        default_value = "TCP_STREAM"
    )]
    test: TestKind,

    /// Client: test length in seconds.
    #[arg(short = 'l', long, value_name = "SECONDS", default_value = "10", value_parser = parse_secs)]
    length: Duration,

    /// Client: write size for TCP tests (default 128K) or UDP payload
    /// (default 1400, at most 65507); K and M suffixes are binary.
    #[arg(short = 'm', long, value_name = "SIZE", value_parser = parse_size)]
    msg_size: Option<usize>,

    /// Client: request and response sizes for TCP_RR and TCP_CRR.
    #[arg(short = 'r', long, value_name = "REQ[,RESP]", default_value = "1,1", value_parser = parse_rr)]
    rr: RrSizes,

    /// Client: parallel streams, each its own control and data connection.
    #[arg(short = 'P', long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=128))]
    streams: u16,

    /// Client: print one JSON object instead of the text table.
    #[arg(long)]
    json: bool,
}

/// `-r REQ[,RESP]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RrSizes {
    req: usize,
    resp: usize,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    let max = Duration::from_millis(limits::MAX_DURATION_MS);
    let d =
        Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is not a valid length"))?;
    if d < Duration::from_millis(1) || d > max {
        return Err(format!(
            "length must be between 0.001 and {} seconds",
            max.as_secs()
        ));
    }
    Ok(d)
}

/// Parses `1400`, `64K`, `1M` (K = 1024).
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1 << 10),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1 << 20),
        _ => (t, 1),
    };
    let n: usize = num.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let n = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if n == 0 || n > limits::MAX_TCP_MSG {
        return Err(format!(
            "size must be between 1 and {}",
            limits::MAX_TCP_MSG
        ));
    }
    Ok(n)
}

/// Parses `REQ[,RESP]`; a lone size sets both, as netperf does.
fn parse_rr(s: &str) -> Result<RrSizes, String> {
    let (a, b) = s.split_once(',').unwrap_or((s, s));
    Ok(RrSizes {
        req: parse_size(a)?,
        resp: parse_size(b)?,
    })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = if cli.server {
        server::run(&server::Opts {
            bind: cli.bind,
            port: cli.port,
            once: cli.once,
        })
    } else {
        run_client(&cli)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uipd-perf: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_client(cli: &Cli) -> Result<(), String> {
    // Cannot fail: clap requires one of -s / -H, and -s is handled above.
    let host = cli.host.clone().unwrap_or_default();
    let msg_size = cli.msg_size.unwrap_or(match cli.test {
        TestKind::UdpStream => DEFAULT_UDP_MSG,
        _ => DEFAULT_TCP_MSG,
    });
    let spec = TestSpec {
        test: cli.test,
        duration_ms: u64::try_from(cli.length.as_millis()).unwrap_or(u64::MAX),
        msg_size,
        req_size: cli.rr.req,
        resp_size: cli.rr.resp,
    };
    spec.validate()?;
    let report = client::run(&client::Opts {
        host,
        port: cli.port,
        spec,
        streams: usize::from(cli.streams),
    })?;
    if cli.json {
        let j = serde_json::to_string(&report).map_err(|e| e.to_string())?;
        println!("{j}");
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1400"), Ok(1400));
        assert_eq!(parse_size("128K"), Ok(131_072));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("17M").is_err());
        assert!(parse_size("x").is_err());
        assert_eq!(parse_rr("64"), Ok(RrSizes { req: 64, resp: 64 }));
        assert_eq!(parse_rr("1,2K"), Ok(RrSizes { req: 1, resp: 2048 }));
        assert!(parse_rr("1,").is_err());
    }

    #[test]
    fn lengths() {
        assert_eq!(parse_secs("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("1e9").is_err());
    }

    #[test]
    fn modes() {
        assert!(Cli::try_parse_from(["uipd-perf"]).is_err());
        assert!(Cli::try_parse_from(["uipd-perf", "-s", "-H", "x"]).is_err());
        assert!(Cli::try_parse_from(["uipd-perf", "-H", "x", "--once"]).is_err());
        let c =
            Cli::try_parse_from(["uipd-perf", "-H", "x", "-t", "tcp_rr", "-r", "32,1K"]).unwrap();
        assert_eq!(c.test, TestKind::TcpRr);
        assert_eq!(
            c.rr,
            RrSizes {
                req: 32,
                resp: 1024
            }
        );
        let c = Cli::try_parse_from(["uipd-perf", "-s", "-B", "::1", "-p", "0"]).unwrap();
        assert!(c.server && c.bind.is_ipv6());
    }
}
