//! The process's listening addresses, before and after pingora binds them:
//! a concrete port for every address given with port 0 (held so that no other
//! program is handed it until pingora listens on it), the early check that
//! each address can be bound, and whether *this* process listens on a port —
//! not merely some process on the machine.

use socket2::{Domain, Socket, Type};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

/// Ports chosen for port-0 addresses, held until dropped.
///
/// Each is a socket bound with `SO_REUSEADDR` but not listening: the kernel
/// hands its port to no other `bind(…:0)` and refuses it to binds without
/// `SO_REUSEADDR`, while pingora's listener (which sets `SO_REUSEADDR`) can
/// still bind and listen on it. Drop it once pingora listens.
#[derive(Debug, Default)]
pub struct Reservation {
    held: Vec<Socket>,
}

impl Reservation {
    /// How many ports it holds.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Replace port 0 in each address by a free port, and hold those ports.
pub fn reserve(addrs: &mut [&mut SocketAddr]) -> Result<Reservation, (SocketAddr, std::io::Error)> {
    let mut held = Vec::new();
    for addr in addrs.iter_mut() {
        if addr.port() != 0 {
            continue;
        }
        let socket = hold(addr).map_err(|e| (**addr, e))?;
        held.push(socket);
    }
    Ok(Reservation { held })
}

/// Bind a socket for a free port on `addr`'s IP and write that port into it.
fn hold(addr: &mut SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&(*addr).into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("bound socket has no IP address"))?;
    addr.set_port(bound.port());
    Ok(socket)
}

/// Bind (and release) each address once, to fail early and clearly when one
/// is in use or not permitted. A port held by a [`Reservation`] passes.
pub fn check_bindable<'a>(
    addrs: impl IntoIterator<Item = &'a SocketAddr>,
) -> Result<(), (SocketAddr, std::io::Error)> {
    for addr in addrs {
        std::net::TcpListener::bind(addr).map_err(|e| (*addr, e))?;
    }
    Ok(())
}

/// Whether two listening addresses would claim the same port, so that the
/// second bind fails: the same port (not 0) and the same IP, or a wildcard
/// that covers the other. `0.0.0.0` covers every IPv4 address; `[::]` covers
/// both families, since Linux binds it dual-stack unless told otherwise.
pub fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |w: IpAddr, other: IpAddr| match w {
        IpAddr::V4(v) => v.is_unspecified() && other.is_ipv4(),
        IpAddr::V6(v) => v.is_unspecified(),
    };
    x == y || covers(x, y) || covers(y, x)
}

/// The TCP ports this process listens on (Linux: its socket descriptors
/// matched against `/proc/net/tcp{,6}`), or `None` where that cannot be read.
///
/// Another program listening on the same port (possible with `SO_REUSEPORT`,
/// or on another address) does not count: a gateway must not call itself
/// ready on the strength of someone else's socket.
pub fn own_listening_ports() -> Option<HashSet<u16>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let mut ports = HashSet::new();
    let mut any_file = false;
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        any_file = true;
        ports.extend(listening_ports_in(&text, &inodes));
    }
    any_file.then_some(ports)
}

/// The local ports of the sockets in LISTEN state among `inodes`, from the
/// text of `/proc/net/tcp` or `/proc/net/tcp6`.
fn listening_ports_in<'a>(
    text: &'a str,
    inodes: &'a HashSet<String>,
) -> impl Iterator<Item = u16> + 'a {
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    text.lines().skip(1).filter_map(move |line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
        if *state != "0A" || !inodes.contains(*inode) {
            return None;
        }
        u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_becomes_a_held_port_that_a_listener_can_still_take() {
        let mut a: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut fixed: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let held = reserve(&mut [&mut a, &mut fixed]).unwrap();
        assert_eq!(held.len(), 1);
        assert_ne!(a.port(), 0);
        assert_eq!(fixed.port(), 1, "a given port is left alone");
        // Nobody else is handed it, and a bind without SO_REUSEADDR fails.
        for _ in 0..2000 {
            let tcp = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            tcp.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            let p = tcp.local_addr().unwrap().as_socket().unwrap().port();
            assert_ne!(p, a.port());
        }
        let plain = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        assert!(plain.bind(&a.into()).is_err());
        // A listener as pingora makes it takes the port while it is held.
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.set_reuse_address(true).unwrap();
        l.bind(&a.into()).unwrap();
        l.listen(8).unwrap();
        drop(held);
        std::net::TcpStream::connect(a).unwrap();
    }

    #[test]
    fn overlapping_listen_addresses_are_told() {
        let o = |a: &str, b: &str| overlaps(a.parse().unwrap(), b.parse().unwrap());
        for (a, b) in [
            ("0.0.0.0:8080", "0.0.0.0:8080"),
            ("0.0.0.0:8080", "[::]:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:8080", "127.0.0.1:8080"),
            ("[::]:8080", "[::1]:8080"),
            ("127.0.0.1:8080", "[::ffff:127.0.0.1]:8080"),
        ] {
            assert!(o(a, b) && o(b, a), "{a} and {b} overlap");
        }
        for (a, b) in [
            ("0.0.0.0:8080", "0.0.0.0:8081"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("0.0.0.0:8080", "[::1]:8080"),
            ("127.0.0.1:8080", "[::1]:8080"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            assert!(!o(a, b) && !o(b, a), "{a} and {b} do not overlap");
        }
        // Both orders bind as claimed (dual-stack [::] where the host has IPv6).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(std::net::TcpListener::bind(("0.0.0.0", port)).is_err());
    }

    #[test]
    fn only_this_process_s_listening_sockets_count() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ports = own_listening_ports().expect("Linux /proc");
        assert!(ports.contains(&port));
        // A connected (not listening) socket of ours does not count.
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let local = c.local_addr().unwrap().port();
        assert!(!own_listening_ports().unwrap().contains(&local));
        drop(l);
        assert!(!own_listening_ports().unwrap().contains(&port));
    }

    #[test]
    fn sockets_of_other_processes_do_not_count() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0 100 0 0 10 0\n   \
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 222 1 0 100 0 0 10 0\n   \
   2: 0100007F:1F92 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0 100 0 0 10 0\n";
        let mine: HashSet<String> = ["222", "333"].iter().map(|s| s.to_string()).collect();
        let ports: Vec<u16> = listening_ports_in(text, &mine).collect();
        assert_eq!(ports, vec![0x1F91], "LISTEN and ours only");
    }
}
