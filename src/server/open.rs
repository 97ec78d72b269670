//! The open connections of one listener, and which of them makes way for a new one: the one that
//! has been waiting longest for a request, among all of them or among one address's.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use tokio_util::sync::CancellationToken;

/// The open connections, and among them the waiting ones (no request being served) ordered by
/// when they started waiting, so that a full server finds the one waiting longest, overall or
/// from one address, in O(log n).
#[derive(Default)]
pub struct Open {
    next_id: u64,
    /// Ticks each time a connection starts waiting: the order of the waiting sets.
    clock: u64,
    conns: HashMap<u64, Conn>,
    /// `(since, id)`, the one waiting longest first.
    waiting: BTreeSet<(u64, u64)>,
    /// `(address, since, id)` of the waiting connections the per-address cap counts.
    waiting_by_address: BTreeSet<(IpAddr, u64, u64)>,
    /// Open connections by address, of those the per-address cap counts.
    per_address: HashMap<IpAddr, usize>,
}

/// One open connection.
pub struct Conn {
    /// Closes this connection at once (displaced, or the drain's grace is over).
    pub close: CancellationToken,
    /// Its [`address_group`], when the per-address cap counts it.
    address: Option<IpAddr>,
    /// Requests being served: arrived whole (or answered first), response not yet sent.
    serving: usize,
    /// While waiting: when it started (its key in the waiting sets).
    since: Option<u64>,
}

impl Open {
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Open connections from `address` (an [`address_group`]).
    pub fn count_from(&self, address: IpAddr) -> usize {
        self.per_address.get(&address).copied().unwrap_or(0)
    }

    /// Adds a connection, waiting from now; `address` is its group when the per-address cap
    /// counts it. Returns its id.
    pub fn insert(&mut self, close: CancellationToken, address: Option<IpAddr>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(address) = address {
            *self.per_address.entry(address).or_default() += 1;
        }
        self.conns.insert(
            id,
            Conn {
                close,
                address,
                serving: 0,
                since: None,
            },
        );
        self.start_waiting(id);
        id
    }

    /// A request on `id` has arrived whole (or is being answered): the connection is serving.
    pub fn serve(&mut self, id: u64) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.serving += 1;
            if let Some(since) = conn.since.take() {
                self.waiting.remove(&(since, id));
                if let Some(address) = conn.address {
                    self.waiting_by_address.remove(&(address, since, id));
                }
            }
        }
    }

    /// A response on `id` has been sent: with none other in progress, the connection waits again,
    /// from now.
    pub fn served(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.serving = conn.serving.saturating_sub(1);
        if conn.serving == 0 {
            self.start_waiting(id);
        }
    }

    pub fn remove(&mut self, id: u64) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        if let Some(since) = conn.since {
            self.waiting.remove(&(since, id));
            if let Some(address) = conn.address {
                self.waiting_by_address.remove(&(address, since, id));
            }
        }
        if let Some(address) = conn.address
            && let Some(count) = self.per_address.get_mut(&address)
        {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&address);
            }
        }
        Some(conn)
    }

    /// The connection that has been waiting longest, if any is waiting.
    pub fn waiting_longest(&self) -> Option<u64> {
        self.waiting.first().map(|&(_, id)| id)
    }

    /// The connection from `address` that has been waiting longest, if any of its is waiting.
    pub fn waiting_longest_from(&self, address: IpAddr) -> Option<u64> {
        self.waiting_by_address
            .range((address, 0, 0)..=(address, u64::MAX, u64::MAX))
            .next()
            .map(|&(_, _, id)| id)
    }

    fn start_waiting(&mut self, id: u64) {
        let since = self.clock;
        self.clock += 1;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.since = Some(since);
            self.waiting.insert((since, id));
            if let Some(address) = conn.address {
                self.waiting_by_address.insert((address, since, id));
            }
        }
    }
}

/// The address a peer is counted under by the per-address cap: an IPv4 address (an IPv4-mapped
/// IPv6 one as IPv4), or an IPv6 /64, one customer's allocation, as the rate limits count.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// An [`address_group`] as logged: an IPv6 group with its `/64`.
pub struct Group(pub IpAddr);

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_connection_waiting_longest_is_found_whatever_the_accept_order() {
        let mut open = Open::default();
        let first = open.insert(CancellationToken::new(), None);
        let second = open.insert(CancellationToken::new(), None);
        let third = open.insert(CancellationToken::new(), None);
        assert_eq!(open.waiting_longest(), Some(first));
        // The first serves a request and finishes it: it now waits least.
        open.serve(first);
        assert_eq!(open.waiting_longest(), Some(second));
        open.served(first);
        assert_eq!(open.waiting_longest(), Some(second));
        open.remove(second);
        assert_eq!(open.waiting_longest(), Some(third));
        // Serving connections are never offered.
        open.serve(third);
        open.serve(first);
        assert_eq!(open.waiting_longest(), None);
        open.served(third);
        assert_eq!(open.waiting_longest(), Some(third));
        assert_eq!(open.len(), 2);
    }

    #[test]
    fn each_address_is_counted_and_offers_only_its_own_connections() {
        let mut open = Open::default();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let a1 = open.insert(CancellationToken::new(), Some(a));
        let b1 = open.insert(CancellationToken::new(), Some(b));
        let a2 = open.insert(CancellationToken::new(), Some(a));
        let exempt = open.insert(CancellationToken::new(), None);
        assert_eq!((open.count_from(a), open.count_from(b)), (2, 1));
        assert_eq!(open.waiting_longest_from(a), Some(a1));
        assert_eq!(open.waiting_longest_from(b), Some(b1));
        open.serve(a1);
        assert_eq!(open.waiting_longest_from(a), Some(a2));
        open.serve(a2);
        assert_eq!(open.waiting_longest_from(a), None);
        assert_eq!(open.waiting_longest(), Some(b1));
        open.remove(b1);
        assert_eq!(open.count_from(b), 0);
        assert_eq!(open.waiting_longest_from(b), None);
        assert_eq!(open.waiting_longest(), Some(exempt));
        open.remove(a1);
        open.remove(a1);
        assert_eq!(open.count_from(a), 1);
    }

    #[test]
    fn ipv6_peers_are_counted_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            address_group(ip("2001:db8:1:2:aaaa::1")),
            address_group(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            address_group(ip("2001:db8:1:2::1")),
            address_group(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_group(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(
            Group(address_group(ip("2001:db8:1:2::7"))).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(Group(ip("192.0.2.1")).to_string(), "192.0.2.1");
    }
}
