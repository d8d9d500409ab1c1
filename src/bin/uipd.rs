//! The uipd daemon: command line → [`uipd::daemon::Config`] →
//! [`uipd::daemon::run`], for every mode (the VMM with `-net none`
//! included). `uipd ctl` and the personalities (slirp4netns, passt,
//! pasta) are in `uipd/personalities.rs`.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use uipd::daemon::{self, Frontend};
use uipd::dataplane::io::IoEngine;
use uipd::stack;

#[path = "uipd/personalities.rs"]
mod personalities;

use personalities::{ctl_main, passt_main, pasta_main, slirp4netns_main};

/// User-mode networking for network namespaces and VMs: guest Ethernet
/// frames become ordinary host sockets, with no privileges.
///
/// Examples:
///   uipd -- sh                      # a shell in a new namespace with network access
///   uipd --netns /run/netns/ns1     # serve an existing namespace until SIGTERM
///   uipd --socket /tmp/uipd.sock    # serve QEMU: -netdev stream,id=n0,server=off,
///                                   #   addr.type=unix,addr.path=/tmp/uipd.sock
///   uipd -p 8080:80 -- httpd -f     # host's 127.0.0.1:8080 reaches the guest's port 80
///   uipd ctl --control SOCK list    # talk to a running uipd (see `uipd ctl --help`)
///   uipd --kernel bzImage --initrd initrd.img -net none
///                                   # boot a Linux VM on KVM, console on the terminal
///   uipd --kernel bzImage -net tap --tap tap0
///                                   # the VM's NIC on host TAP tap0 (CAP_NET_ADMIN)
///   uipd --kernel vmlinux -net none # an ELF vmlinux: PVH entry when it has one
#[derive(Debug, Parser)]
#[command(name = "uipd", version, verbatim_doc_comment)]
struct Cli {
    /// Attach to an existing network namespace (a path such as
    /// /run/netns/NAME or /proc/PID/ns/net, or a PID) and run until
    /// SIGINT/SIGTERM.
    #[arg(long, value_name = "PATH|PID", conflicts_with = "command")]
    netns: Option<String>,

    /// Listen on this UNIX socket for a VMM speaking QEMU's stream netdev
    /// protocol (`-netdev stream,server=off,addr.type=unix,addr.path=PATH`:
    /// each frame after a 4-byte big-endian length) and run until
    /// SIGINT/SIGTERM. One VMM at a time; when it disconnects, its host
    /// connections are reset and the next one is accepted.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["command", "netns"])]
    socket: Option<std::path::PathBuf>,

    /// Listen on this UNIX socket as a vhost-user-net backend (QEMU:
    /// `-chardev socket,id=c0,path=PATH -netdev vhost-user,id=n0,chardev=c0`,
    /// guest memory shared) and run until SIGINT/SIGTERM. One queue pair
    /// per worker (`--cpus`/`--workers`); when the VMM disconnects, its host
    /// connections are reset and the next one is accepted.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["command", "netns", "socket"])]
    vhost_user: Option<std::path::PathBuf>,

    /// Boot this Linux kernel (bzImage, or ELF vmlinux) in a KVM virtual
    /// machine with a serial console on the terminal; uipd exits 0 when
    /// the guest powers off or reboots, or on SIGINT/SIGTERM.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["command", "netns", "socket", "vhost_user"])]
    kernel: Option<std::path::PathBuf>,

    /// Initial ramdisk for --kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<std::path::PathBuf>,

    /// Kernel command line for --kernel. Keep `reboot=k` (reboot through
    /// the i8042, which ends uipd) and `panic=-1` (a panic reboots at once).
    /// [default: console=ttyS0 reboot=k panic=-1]
    #[arg(long, value_name = "STRING", requires = "kernel")]
    cmdline: Option<String>,

    /// Guest memory in MiB for --kernel [default: 256].
    #[arg(long, value_name = "MiB", requires = "kernel",
          value_parser = clap::value_parser!(u64).range(1..))]
    mem: Option<u64>,

    /// Number of vCPUs for --kernel [default: 1].
    #[arg(long, value_name = "N", requires = "kernel",
          value_parser = clap::value_parser!(u16).range(1..=254))]
    vcpus: Option<u16>,

    /// How to enter an ELF vmlinux (--kernel): `pvh` through its PVH entry
    /// (32-bit, `hvm_start_info`; needs the XEN_ELFNOTE_PHYS32_ENTRY note,
    /// CONFIG_PVH), `linux64` at its ELF entry in 64-bit mode with a zero
    /// page, `auto` = `pvh` when the note is there. A bzImage always boots
    /// through its 64-bit entry [default: auto].
    #[arg(long, value_name = "MODE", value_enum, requires = "kernel")]
    boot: Option<BootMode>,

    /// Host CPUs for the vCPU threads (cpulist syntax): vCPU i runs on the
    /// i-th CPU of the list (wrapping around).
    #[arg(long, value_name = "LIST", requires = "kernel", value_parser = parse_cpulist)]
    vcpu_cpus: Option<CpuList>,

    /// Queue pairs of the VM's virtio-net NIC (--kernel), each with its
    /// own MSI-X vectors [default: the number of workers with -net user,
    /// 1 with -net tap]. With -net tap, one TAP queue per pair
    /// (multi_queue when more than one).
    #[arg(long, value_name = "N", requires = "kernel",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: Option<u16>,

    /// Name of the TAP interface inside the namespace.
    #[arg(long, default_value = "eth0", value_parser = parse_ifname)]
    ifname: String,

    /// Link MTU (68..65520), also offered to the guest by DHCP. Default:
    /// 65520 in a namespace, 1500 for a VMM (--socket, --vhost-user).
    #[arg(long, value_parser = clap::value_parser!(u16).range(68..=65520))]
    mtu: Option<u16>,

    /// Leave the interface without address and route (for DHCP).
    #[arg(long)]
    no_config_net: bool,

    /// The guest link's IPv4 network: the gateway is its host .1, the
    /// guest .15 (by DHCP and config-net), the DNS server the gateway,
    /// unless given below [default: 192.168.33.0/24].
    #[arg(long, value_name = "A.B.C.D/N", value_parser = uipd::addressing::parse_cidr4)]
    cidr: Option<(std::net::Ipv4Addr, u8)>,

    /// uipd's own (the gateway's) address on the guest link.
    #[arg(long, value_name = "ADDR")]
    gateway: Option<std::net::Ipv4Addr>,

    /// The guest's address (offered by DHCP, assigned by config-net).
    #[arg(long, value_name = "ADDR")]
    guest_ip: Option<std::net::Ipv4Addr>,

    /// The DNS server address the guest is given (port 53 there goes to
    /// the resolvers; it answers ARP and ping, nothing else unless it is
    /// the gateway); `none` for no DNS service [default: the gateway].
    #[arg(long, value_name = "ADDR|none", value_parser = parse_dns)]
    dns: Option<DnsAddr>,

    /// The guest interface's MAC address (namespace mode; default: the
    /// kernel's random one).
    #[arg(long, value_name = "MAC", value_parser = uipd::addressing::parse_mac)]
    mac: Option<[u8; 6]>,

    /// The IPv6 /64 advertised for SLAAC; the gateway is its ::1 (and the
    /// DNS server, like IPv4's) [default: fd00:33::/64].
    #[arg(long, value_name = "PREFIX", value_parser = uipd::addressing::parse_prefix6)]
    ipv6_prefix: Option<std::net::Ipv6Addr>,

    /// No IPv6 on the guest link (no RA, NDP, DHCPv6; IPv6 frames dropped).
    #[arg(long, conflicts_with = "ipv6_prefix")]
    no_ipv6: bool,

    /// DNS resolver for queries to the gateway (repeatable; default: the
    /// host's /etc/resolv.conf, re-read when it changes).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_resolver)]
    resolver: Vec<SocketAddr>,

    /// Do not map the gateway address to the host's loopback.
    #[arg(long)]
    no_host_loopback: bool,

    /// Refuse every outbound flow except DNS to the gateway (DHCP and ping
    /// to the gateway are answered by uipd itself); `--allow` opens
    /// exceptions. Published ports (inbound) are not affected.
    #[arg(long)]
    restrict: bool,

    /// Allow outbound flows to CIDR (repeatable; with --deny, the last
    /// matching rule wins). Rules match the host address uipd connects to:
    /// the gateway is 127.0.0.1 to them.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    allow: Vec<stack::policy::Cidr>,

    /// Refuse outbound flows to CIDR (repeatable; see --allow).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    deny: Vec<stack::policy::Cidr>,

    /// Most flows (TCP connections, UDP and ping flows) the guest may have
    /// at once; new flows beyond it are refused and counted. Each worker
    /// gets an equal share.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    max_flows: u32,

    /// Most memory for flow buffers (TCP data queued either way, host
    /// reads, queued datagrams), shared by all flows and workers: SIZE in
    /// bytes with an optional K, M, G suffix (e.g. 256M, 2G). Past it, TCP
    /// windows to the guest close and host reads wait (backpressure) and
    /// datagrams are dropped, instead of memory growing. Default: a quarter
    /// of physical memory.
    #[arg(long, value_name = "SIZE", value_parser = parse_max_memory)]
    max_memory: Option<usize>,

    /// Print counters to stderr at exit (also on SIGUSR1).
    #[arg(long)]
    stats: bool,

    /// CPUs for the stack workers (cpulist syntax, e.g. 2-3 or 0,2,4-7):
    /// one worker per CPU, pinned to it, each with its own TAP queue,
    /// io_uring and share of the flows. Default: one unpinned worker per
    /// usable CPU, at most 4.
    #[arg(long, value_name = "LIST", value_parser = parse_cpulist)]
    cpus: Option<CpuList>,

    /// Number of unpinned workers (when --cpus is not given).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256), conflicts_with = "cpus")]
    workers: Option<u16>,

    /// Longest busy-poll before an idle worker sleeps, in microseconds.
    /// The window is chosen below it so that polling pays for itself: a
    /// worker spins only while its recent waits show that spinning costs
    /// less CPU than the sleeps and wake-ups it saves (a sleep is taken to
    /// cost 30 us of CPU, as measured with netperf's TCP_RR). 0 = always
    /// sleep at once.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    poll_us: u64,

    /// Host I/O engine of the workers: `uring` (io_uring; fails at start
    /// when the host refuses it), `epoll` (a readiness loop on
    /// non-blocking sockets, with batched recvmmsg/sendmmsg), or `auto`:
    /// io_uring, falling back to epoll with one warning where it is refused
    /// (container seccomp profiles, kernel.io_uring_disabled).
    #[arg(long = "io", value_name = "ENGINE", value_enum, default_value_t = IoEngine::Auto)]
    io: IoEngine,

    /// Turn off TAP offloads (virtio-net header, checksum offload, TSO in
    /// both directions), which are on by default.
    #[arg(long)]
    no_offload: bool,

    /// Write the final counters (per worker and total) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<std::path::PathBuf>,

    /// Run without the sandbox. By default, once set up, uipd gives up
    /// every capability, sees only an empty read-only root, and holds each
    /// thread to a seccomp allow-list of the calls its role makes.
    #[arg(long)]
    no_sandbox: bool,

    /// A system call outside the sandbox's lists is logged (call and
    /// thread named) before the process ends of SIGSYS, instead of the
    /// kernel killing it silently. Always on in debug builds.
    #[arg(long, conflicts_with = "no_sandbox")]
    seccomp_log: bool,

    /// Write every frame between the guest and uipd to FILE, in pcap format
    /// (nanosecond timestamps, Ethernet) for tcpdump -r or Wireshark. Frames
    /// the writer cannot keep up with are left out and counted (pcap_drops).
    #[arg(long, value_name = "FILE")]
    pcap: Option<std::path::PathBuf>,

    /// Network backend (kvmtool spelling, `-net user` works too). Only
    /// `user` exists in namespace mode; with --kernel, `user` (the default:
    /// a virtio-net NIC on uipd's stack), `tap` (the NIC on the host TAP
    /// named by --tap) or `none` (no NIC).
    #[arg(long = "net", value_enum)]
    net: Option<NetMode>,

    /// The host TAP device behind the VM's NIC with -net tap: an existing
    /// one (ip tuntap add dev NAME mode tap [vnet_hdr] [multi_queue] [user
    /// USER]) is attached, a missing one is created (and goes away with
    /// uipd). Needs CAP_NET_ADMIN unless the TAP was made for this user.
    /// Frames pass with their virtio-net header: the guest's checksum and
    /// TSO offloads go through to the host.
    #[arg(long, value_name = "NAME", value_parser = parse_ifname)]
    tap: Option<String>,

    /// Publish a guest port on the host (repeatable):
    /// [ADDR:]HOSTPORT[-HOSTPORT2]:GUESTPORT[-GUESTPORT2][/tcp|/udp].
    /// ADDR defaults to 127.0.0.1 (write 0.0.0.0 for every address).
    #[arg(short = 'p', long, value_name = "SPEC", value_parser = parse_publish)]
    publish: Vec<uipd::publish::PublishSpec>,

    /// Show the guest the host client's own address as the source of
    /// published connections (loopback clients still appear as the gateway).
    #[arg(long)]
    publish_keep_source: bool,

    /// Serve a control socket at this path: list flows and counters, add
    /// and remove published ports at run time (`uipd ctl`).
    #[arg(long, value_name = "SOCKET")]
    control: Option<std::path::PathBuf>,

    /// The command to run in the new namespaces.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// Workers started without --cpus: one per usable CPU, at most this many.
const DEFAULT_MAX_WORKERS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NetMode {
    User,
    Tap,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BootMode {
    Auto,
    Pvh,
    Linux64,
}

#[derive(Debug, Clone)]
struct CpuList(Vec<usize>);

fn parse_ifname(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 || s.contains(['/', ' ', ':']) || s == "." || s == ".." {
        return Err("an interface name has 1 to 15 characters, without '/', ':' or spaces".into());
    }
    Ok(s.to_string())
}

fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("'{s}' is not ADDR or ADDR:PORT (IPv6 with a port: [ADDR]:PORT)"))
}

/// `--dns`: an address, or none.
#[derive(Debug, Clone, Copy)]
struct DnsAddr(Option<std::net::Ipv4Addr>);

fn parse_dns(s: &str) -> Result<DnsAddr, String> {
    if s == "none" {
        return Ok(DnsAddr(None));
    }
    s.parse()
        .map(|a| DnsAddr(Some(a)))
        .map_err(|_| format!("'{s}' is not an IPv4 address or 'none'"))
}

/// `--max-memory`: a size with K/M/G suffix, at least 1 MiB (less would
/// leave no room for even one connection's reads).
fn parse_max_memory(s: &str) -> Result<usize, String> {
    let n = stack::mem::parse_size(s)?;
    if n < 1 << 20 {
        return Err(format!("'{s}' is less than the smallest budget, 1M"));
    }
    Ok(n)
}

fn parse_cidr(s: &str) -> Result<stack::policy::Cidr, String> {
    s.parse()
        .map_err(|e: stack::policy::CidrError| e.to_string())
}

/// The outbound policy from `--restrict`, `--allow` and `--deny`, the rules
/// in command-line order (clap keeps each flag's values apart, so their
/// argument indices restore the interleaving).
fn policy(m: &clap::ArgMatches, cli: &Cli) -> stack::policy::Policy {
    use stack::policy::{Action, Policy, Rule};
    let mut rules: Vec<(usize, Rule)> = Vec::new();
    for (id, action, cidrs) in [
        ("allow", Action::Allow, &cli.allow),
        ("deny", Action::Deny, &cli.deny),
    ] {
        let idx: Vec<usize> = m.indices_of(id).map(Iterator::collect).unwrap_or_default();
        for (i, cidr) in cidrs.iter().enumerate() {
            let at = idx.get(i).copied().unwrap_or(usize::MAX);
            rules.push((
                at,
                Rule {
                    action,
                    cidr: *cidr,
                },
            ));
        }
    }
    rules.sort_by_key(|(at, _)| *at);
    Policy {
        rules: rules.into_iter().map(|(_, r)| r).collect(),
        default: if cli.restrict {
            Action::Deny
        } else {
            Action::Allow
        },
    }
}

fn parse_publish(s: &str) -> Result<uipd::publish::PublishSpec, String> {
    uipd::publish::PublishSpec::parse(s).map_err(|e| e.to_string())
}

fn parse_cpulist(s: &str) -> Result<CpuList, String> {
    uipd::dataplane::cpus::parse_cpulist(s)
        .map(CpuList)
        .map_err(|e| e.to_string())
}

/// The VM part of the command line.
fn vm_config(cli: &Cli, kernel: &std::path::Path) -> uipd::vmm::VmConfig {
    uipd::vmm::VmConfig {
        kernel: kernel.to_owned(),
        initrd: cli.initrd.clone(),
        cmdline: cli
            .cmdline
            .clone()
            .unwrap_or_else(|| uipd::vmm::DEFAULT_CMDLINE.to_string()),
        mem_mib: cli.mem.unwrap_or(256),
        vcpus: usize::from(cli.vcpus.unwrap_or(1)),
        vcpu_cpus: cli.vcpu_cpus.clone().map(|c| c.0).unwrap_or_default(),
        boot: match cli.boot {
            None | Some(BootMode::Auto) => uipd::vmm::BootMode::Auto,
            Some(BootMode::Pvh) => uipd::vmm::BootMode::Pvh,
            Some(BootMode::Linux64) => uipd::vmm::BootMode::Linux64,
        },
    }
}

/// An error and its sources, joined by ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    // The re-executed namespace helper must run before anything starts a
    // thread, so it stays first in main() (see uipd::dataplane::netns).
    if args
        .get(1)
        .is_some_and(|a| a == uipd::dataplane::netns::CHILD_ARG)
    {
        uipd::dataplane::netns::child_main(&args[2..]);
    }
    if args.get(1).is_some_and(|a| a == "ctl") {
        return ctl_main(&args[1..]);
    }
    // Personalities: invoked as `slirp4netns` (a link to uipd), or
    // `uipd slirp4netns ARGS`.
    let name = args
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "slirp4netns" {
        return slirp4netns_main(&args[1..]);
    }
    if args.get(1).is_some_and(|a| a == "slirp4netns") {
        return slirp4netns_main(&args[2..]);
    }
    if name == "passt" {
        return passt_main(&args[1..]);
    }
    if name == "pasta" {
        return pasta_main(&args[1..]);
    }
    if args.get(1).is_some_and(|a| a == "pasta") {
        return pasta_main(&args[2..]);
    }
    if args.get(1).is_some_and(|a| a == "passt") {
        return passt_main(&args[2..]);
    }
    // kvmtool spells it `-net`: accept that before the `--`.
    for a in args.iter_mut().skip(1) {
        if a == "--" {
            break;
        }
        if a == "-net" {
            *a = "--net".into();
        }
    }
    let matches = Cli::command().get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let policy = policy(&matches, &cli);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();

    let tap_mode = cli.kernel.is_some() && cli.net == Some(NetMode::Tap);
    match (&cli.kernel, cli.net) {
        (Some(kernel), Some(NetMode::None)) => {
            // No network: none of the options below matter.
            let frontend = Frontend::VmNoNet(Box::new(vm_config(&cli, kernel)));
            let cfg = daemon::Config::with_defaults(frontend, stack::Config::default(), 1);
            return exit_code(daemon::run(cfg));
        }
        (Some(_), Some(NetMode::Tap)) if cli.tap.is_none() => {
            eprintln!(
                "uipd: -net tap needs --tap NAME: the host TAP device for the VM's NIC \
                 (attached if it exists, created if not)"
            );
            return ExitCode::from(2);
        }
        _ => {}
    }
    if cli.tap.is_some() && !tap_mode {
        eprintln!("uipd: --tap NAME goes with --kernel and -net tap");
        return ExitCode::from(2);
    }
    if tap_mode
        && (!cli.publish.is_empty()
            || cli.control.is_some()
            || cli.pcap.is_some()
            || cli.restrict
            || !cli.allow.is_empty()
            || !cli.deny.is_empty())
    {
        eprintln!(
            "uipd: --publish, --control, --pcap, --restrict, --allow and --deny are for uipd's \
             stack (-net user); with -net tap the host's own network set-up decides (tcpdump -i \
             the TAP to capture)"
        );
        return ExitCode::from(2);
    }
    // clap lets `requires` pass when the required flag conflicts with a
    // present one (a command, --netns): check the VM options here.
    if cli.kernel.is_none()
        && (cli.initrd.is_some()
            || cli.cmdline.is_some()
            || cli.mem.is_some()
            || cli.vcpus.is_some()
            || cli.vcpu_cpus.is_some()
            || cli.queues.is_some()
            || cli.boot.is_some())
    {
        eprintln!(
            "uipd: --initrd, --cmdline, --mem, --vcpus, --vcpu-cpus, --queues and --boot go with --kernel"
        );
        return ExitCode::from(2);
    }

    let frontend = match (&cli.netns, &cli.socket, cli.command.is_empty()) {
        _ if cli.kernel.is_some() => Frontend::Vm(
            Box::new(vm_config(
                &cli,
                cli.kernel.as_deref().unwrap_or_else(|| unreachable!()),
            )),
            0,
        ),
        _ if cli.vhost_user.is_some() && cli.command.is_empty() => {
            Frontend::VhostUser(cli.vhost_user.clone().unwrap_or_default())
        }
        (Some(ns), None, true) => Frontend::Attach(ns.clone()),
        (None, Some(path), true) => Frontend::Stream(path.clone()),
        (None, None, false) => Frontend::Spawn(cli.command.clone()),
        (None, None, true) => {
            eprintln!(
                "uipd: give a command after `--`, --netns PATH|PID, --socket PATH or --vhost-user PATH (see --help)"
            );
            return ExitCode::from(2);
        }
        _ => unreachable!("clap rejects conflicting frontends"),
    };
    let vm = matches!(
        frontend,
        Frontend::Stream(_) | Frontend::StreamFd(_) | Frontend::VhostUser(_) | Frontend::Vm(..)
    );
    if let Some(net) = cli
        .net
        .filter(|n| *n != NetMode::User && cli.kernel.is_none())
    {
        eprintln!(
            "uipd: -net {} is for a VM (--kernel); a namespace gets `user`",
            format!("{net:?}").to_lowercase()
        );
        return ExitCode::from(2);
    }
    let cpus = match cli.cpus {
        Some(CpuList(list)) => match uipd::dataplane::cpus::check_usable(&list) {
            Ok(()) => list,
            Err(e) => {
                eprintln!("uipd: --cpus: {e}");
                return ExitCode::from(2);
            }
        },
        None => Vec::new(),
    };
    let workers = match (cpus.len(), cli.workers) {
        (0, Some(n)) => usize::from(n),
        (0, None) => uipd::dataplane::cpus::usable_cpus()
            .len()
            .clamp(1, DEFAULT_MAX_WORKERS),
        (n, _) => n,
    };
    // A VMM's guest starts at 1500 (virtio-net without big buffers); a
    // namespace's TAP takes 65520 at once.
    let mtu = cli.mtu.unwrap_or(if vm { 1500 } else { 65520 });
    // The stream protocol carries bare Ethernet frames: no virtio-net
    // header, so no offloads (QEMU does not offer them to the guest then).
    let offload =
        !cli.no_offload && !matches!(frontend, Frontend::Stream(_) | Frontend::StreamFd(_));
    let max_flows = usize::try_from(cli.max_flows).unwrap_or(usize::MAX);
    if max_flows < workers {
        eprintln!(
            "uipd: --max-flows {max_flows} is less than the {workers} workers: each needs a share \
             of at least one (use --workers)"
        );
        return ExitCode::from(2);
    }
    let request = uipd::addressing::Request {
        cidr: cli.cidr,
        gateway: cli.gateway,
        guest: cli.guest_ip,
        dns: cli.dns.map(|d| d.0),
        prefix6: cli.ipv6_prefix,
    };
    let plan = match uipd::addressing::Plan::resolve(
        &request,
        uipd::addressing::Layout::UIPD,
        (std::net::Ipv4Addr::new(192, 168, 33, 0), 24),
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("uipd: {e}");
            return ExitCode::from(2);
        }
    };
    let mut stack = stack::Config {
        policy,
        max_flows,
        mtu,
        host_loopback: !cli.no_host_loopback,
        offload: stack::Offload::all(offload),
        publish_keep_source: cli.publish_keep_source,
        ipv6: !cli.no_ipv6,
        ..stack::Config::default()
    };
    plan.apply(&mut stack);
    let frontend = match frontend {
        Frontend::Vm(vm, _) if tap_mode => Frontend::VmTap {
            vm,
            tap: cli.tap.clone().unwrap_or_default(),
            queues: cli.queues.map_or(1, usize::from),
        },
        Frontend::Vm(vm, _) => Frontend::Vm(vm, cli.queues.map_or(workers, usize::from)),
        f => f,
    };
    // Everything uipd's own command line sets; the personalities' options
    // (handshake fds, API socket, one-off, ...) stay at their defaults.
    let cfg = daemon::Config {
        ifname: cli.ifname,
        config_net: !cli.no_config_net,
        resolvers: cli.resolver,
        stats: cli.stats,
        cpus,
        workers,
        poll_us: cli.poll_us,
        io: cli.io,
        stats_json: cli.stats_json,
        pcap: cli.pcap,
        publish: cli.publish,
        control: cli.control,
        guest_mac: cli.mac,
        sandbox: uipd::sandbox::Options {
            enabled: !cli.no_sandbox,
            log: cli.seccomp_log,
        },
        max_memory: cli.max_memory.unwrap_or_else(daemon::default_max_memory),
        ..daemon::Config::with_defaults(frontend, stack, workers)
    };
    exit_code(daemon::run(cfg))
}

/// uipd's exit status for what the daemon returned; an error is said on
/// stderr with its sources.
fn exit_code(r: Result<i32, daemon::Error>) -> ExitCode {
    match r {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            eprintln!("uipd: {}", error_chain(&e));
            // Like a shell: a command that cannot be found exits 127.
            match e {
                daemon::Error::Netns(uipd::dataplane::netns::NetnsError::CommandNotFound(_)) => {
                    ExitCode::from(127)
                }
                _ => ExitCode::from(1),
            }
        }
    }
}
