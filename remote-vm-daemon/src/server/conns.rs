//! The open connections and who gives way when a new one comes: a pure table
//! (no I/O; the server fires the abort handles it hands back), so unit tests
//! drive every eviction.
//!
//! - A connection is *unparsed* while no request head of it is being served:
//!   in its TLS handshake, waiting for its first head, or idle between
//!   keep-alive requests. It is *busy* from the moment a head is parsed until
//!   the answer's body is gone, and a busy connection is never evicted.
//! - At most `max` connections are live. A new one beyond that evicts an
//!   unparsed one of the peer holding the most unparsed connections (its
//!   oldest that never completed a request, else its oldest idle one), so a
//!   flood from one address evicts its own connections, not another
//!   address's scraper; with every live connection busy, the new one is
//!   refused.
//! - No peer holds more than `per_peer` unparsed connections: beyond that a
//!   new one of its own gives way first.
//! - An evicted connection is aborted at once (its socket dropped, no
//!   graceful close) and stays in the table as *closing* until its task has
//!   let go of the socket; closing ones do not count against `max`, the
//!   server's descriptor budget (`max` + a margin) bounds them.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use tokio::task::AbortHandle;

/// Who a connection comes from, for fairness: this host (every loopback
/// address: any local user can bind any of 127.0.0.0/8), an IPv4 address, an
/// IPv6 /64 (one host's usual allocation), or the uid of a Unix socket's peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    Loopback,
    V4([u8; 4]),
    V6([u8; 8]),
    Unix(u32),
}

impl Peer {
    pub fn of(addr: SocketAddr) -> Peer {
        match addr.ip().to_canonical() {
            ip if ip.is_loopback() => Peer::Loopback,
            IpAddr::V4(a) => Peer::V4(a.octets()),
            IpAddr::V6(a) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&a.octets()[..8]);
                Peer::V6(prefix)
            }
        }
    }
}

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Its TLS handshake, or waiting for one.
    Handshake,
    /// Waiting for a request head; `served`: some earlier request of it was let in.
    Waiting { served: bool },
    /// A request is being answered.
    Busy,
}

#[derive(Debug)]
struct Entry {
    peer: Peer,
    phase: Phase,
    /// Evicted: aborted, not yet gone.
    closing: bool,
    abort: Option<AbortHandle>,
}

impl Entry {
    fn unparsed(&self) -> bool {
        !self.closing && self.phase != Phase::Busy
    }

    /// Which unparsed connection of a peer goes first: one that never had a
    /// request let in (a slow or hostile client) before an idle keep-alive one.
    fn rank(&self) -> u8 {
        match self.phase {
            Phase::Handshake | Phase::Waiting { served: false } => 0,
            _ => 1,
        }
    }
}

/// What `admit` decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// In, with this id.
    In(u64),
    /// Every live connection is busy: the new one is closed.
    Refused,
}

/// Why a connection was evicted (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its peer held `per_peer` unparsed connections already.
    PeerCap,
    /// `max` connections were live.
    Cap,
}

#[derive(Debug)]
pub struct Table {
    max: usize,
    per_peer: usize,
    next: u64,
    open: BTreeMap<u64, Entry>,
}

impl Table {
    /// `per_peer`: at least 1, at most `max`.
    pub fn new(max: usize, per_peer: usize) -> Table {
        let max = max.max(1);
        Table { max, per_peer: per_peer.clamp(1, max), next: 0, open: BTreeMap::new() }
    }

    /// The per-peer cap for `max`: a quarter, at least 1.
    pub fn per_peer_for(max: usize) -> usize {
        (max / 4).max(1)
    }

    pub fn live(&self) -> usize {
        self.open.values().filter(|e| !e.closing).count()
    }

    pub fn closing(&self) -> usize {
        self.open.values().filter(|e| e.closing).count()
    }

    pub fn phase(&self, id: u64) -> Option<Phase> {
        self.open.get(&id).filter(|e| !e.closing).map(|e| e.phase)
    }

    /// A new connection from `peer` (`tls`: it starts with a handshake).
    /// The evicted ones are aborted here.
    pub fn admit(&mut self, peer: Peer, tls: bool) -> (Admit, Vec<(u64, Why)>) {
        let mut evicted = Vec::new();
        if self.unparsed_of(peer) >= self.per_peer
            && let Some(id) = self.oldest_unparsed(peer)
        {
            self.evict(id);
            evicted.push((id, Why::PeerCap));
        }
        if self.live() >= self.max {
            match self.victim(peer) {
                Some(id) => {
                    self.evict(id);
                    evicted.push((id, Why::Cap));
                }
                None => return (Admit::Refused, evicted),
            }
        }
        let id = self.next;
        self.next += 1;
        let phase = if tls { Phase::Handshake } else { Phase::Waiting { served: false } };
        self.open.insert(id, Entry { peer, phase, closing: false, abort: None });
        (Admit::In(id), evicted)
    }

    /// The task serving `id` (aborted if `id` is evicted; at once if it was
    /// evicted before this).
    pub fn set_abort(&mut self, id: u64, handle: AbortHandle) {
        match self.open.get_mut(&id) {
            Some(e) if !e.closing => e.abort = Some(handle),
            _ => handle.abort(),
        }
    }

    /// `id` moved on: handshake done, a head parsed (busy), an answer gone.
    pub fn set(&mut self, id: u64, phase: Phase) {
        if let Some(e) = self.open.get_mut(&id) {
            e.phase = phase;
        }
    }

    /// `id`'s task has let go of its socket.
    pub fn gone(&mut self, id: u64) {
        self.open.remove(&id);
    }

    /// Every connection aborted (a reload that tightened TLS or client
    /// certificates): how many.
    pub fn evict_all(&mut self) -> usize {
        let ids: Vec<u64> = self.open.iter().filter(|(_, e)| !e.closing).map(|(id, _)| *id).collect();
        for id in &ids {
            self.evict(*id);
        }
        ids.len()
    }

    fn evict(&mut self, id: u64) {
        if let Some(e) = self.open.get_mut(&id) {
            e.closing = true;
            if let Some(a) = e.abort.take() {
                a.abort();
            }
        }
    }

    fn unparsed_of(&self, peer: Peer) -> usize {
        self.open.values().filter(|e| e.peer == peer && e.unparsed()).count()
    }

    /// `peer`'s unparsed connection to go first: lowest rank, then oldest.
    fn oldest_unparsed(&self, peer: Peer) -> Option<u64> {
        self.open
            .iter()
            .filter(|(_, e)| e.peer == peer && e.unparsed())
            .min_by_key(|(id, e)| (e.rank(), **id))
            .map(|(id, _)| *id)
    }

    /// At the cap, for a new connection of `newcomer`: from the peer with the
    /// most unparsed connections (ties: the newcomer's own, else the one whose
    /// candidate goes first), its connection to go first.
    fn victim(&self, newcomer: Peer) -> Option<u64> {
        let mut per_peer: HashMap<Peer, usize> = HashMap::new();
        for e in self.open.values().filter(|e| e.unparsed()) {
            *per_peer.entry(e.peer).or_default() += 1;
        }
        let most = *per_peer.values().max()?;
        if per_peer.get(&newcomer) == Some(&most) {
            return self.oldest_unparsed(newcomer);
        }
        per_peer
            .iter()
            .filter(|(_, n)| **n == most)
            .filter_map(|(p, _)| self.oldest_unparsed(*p))
            .min_by_key(|id| (self.open[id].rank(), *id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: Peer = Peer::Loopback;
    const SCRAPER: Peer = Peer::V4([192, 0, 2, 10]);

    fn admit(t: &mut Table, peer: Peer) -> u64 {
        match t.admit(peer, false).0 {
            Admit::In(id) => id,
            Admit::Refused => panic!("refused"),
        }
    }

    #[test]
    fn peers_are_addresses_v6_prefixes_and_uids() {
        let v4: SocketAddr = "192.0.2.1:5".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:6".parse().unwrap();
        assert_eq!(Peer::of(v4), Peer::of(mapped));
        let a: SocketAddr = "[2001:db8:1:2::1]:1".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:ffff::9]:1".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::1]:1".parse().unwrap();
        assert_eq!(Peer::of(a), Peer::of(b));
        assert_ne!(Peer::of(a), Peer::of(c));
        // Every loopback address is this host.
        for l in ["127.0.0.1:1", "127.3.2.1:1", "[::1]:1", "[::ffff:127.0.0.9]:1"] {
            assert_eq!(Peer::of(l.parse().unwrap()), Peer::Loopback, "{l}");
        }
    }

    #[test]
    fn a_flood_from_one_address_evicts_its_own_oldest_and_never_more_than_the_cap_stay() {
        // 900 connections that never send a whole head, at a cap of 16.
        let mut t = Table::new(16, 16);
        let mut evicted = 0;
        for _ in 0..900 {
            let (a, e) = t.admit(LOCAL, false);
            assert!(matches!(a, Admit::In(_)));
            evicted += e.len();
            assert!(t.live() <= 16);
        }
        assert_eq!(evicted, 900 - 16);
        assert_eq!(t.live(), 16);
        // The survivors are the newest 16.
        let live: Vec<u64> = t.open.iter().filter(|(_, e)| !e.closing).map(|(id, _)| *id).collect();
        assert_eq!(live, (884..900).collect::<Vec<_>>());
    }

    #[test]
    fn a_busy_connection_is_never_evicted_and_a_full_house_of_busy_ones_refuses() {
        let mut t = Table::new(3, 3);
        let ids: Vec<u64> = (0..3).map(|_| admit(&mut t, LOCAL)).collect();
        t.set(ids[0], Phase::Busy);
        // The oldest unparsed (1), not the busy 0.
        assert_eq!(t.admit(LOCAL, false).1, vec![(1, Why::Cap)]);
        for id in t.open.keys().copied().collect::<Vec<_>>() {
            t.set(id, Phase::Busy);
        }
        assert_eq!(t.admit(SCRAPER, false), (Admit::Refused, Vec::new()));
        assert_eq!(t.phase(ids[0]), Some(Phase::Busy));
    }

    #[test]
    fn a_local_flood_does_not_evict_a_remote_scraper() {
        let mut t = Table::new(8, 8);
        // The scraper connects (a TLS handshake, then idle between scrapes).
        let scraper = t.admit(SCRAPER, true).0;
        let Admit::In(scraper) = scraper else { panic!() };
        for _ in 0..1000 {
            admit(&mut t, LOCAL);
        }
        assert_eq!(t.phase(scraper), Some(Phase::Handshake));
        t.set(scraper, Phase::Waiting { served: true });
        for _ in 0..1000 {
            admit(&mut t, LOCAL);
        }
        assert_eq!(t.phase(scraper), Some(Phase::Waiting { served: true }));
    }

    #[test]
    fn one_peer_holds_at_most_its_share_of_unparsed_connections() {
        let mut t = Table::new(16, Table::per_peer_for(16));
        assert_eq!(Table::per_peer_for(16), 4);
        for _ in 0..100 {
            admit(&mut t, LOCAL);
        }
        assert_eq!(t.live(), 4);
        // Others still find room without evicting anyone.
        for i in 0..12u8 {
            let (a, e) = t.admit(Peer::V4([10, 0, 0, i]), false);
            assert!(matches!(a, Admit::In(_)) && e.is_empty(), "{i}: {e:?}");
        }
        assert_eq!(t.live(), 16);
    }

    #[test]
    fn in_a_tie_the_newcomers_own_peer_gives_way() {
        let mut t = Table::new(2, 2);
        let Admit::In(scraper) = t.admit(SCRAPER, true).0 else { panic!() };
        let local = admit(&mut t, LOCAL);
        assert_eq!(t.admit(LOCAL, false).1, vec![(local, Why::Cap)]);
        assert_eq!(t.phase(scraper), Some(Phase::Handshake));
    }

    #[test]
    fn a_connection_never_served_goes_before_an_idle_keep_alive_one() {
        let mut t = Table::new(3, 3);
        let a = admit(&mut t, LOCAL);
        let b = admit(&mut t, LOCAL);
        let _c = admit(&mut t, LOCAL);
        t.set(a, Phase::Waiting { served: true });
        // b is the oldest that never completed a request (the peer's cap is
        // the table's here: it is what gives way first).
        assert_eq!(t.admit(LOCAL, false).1, vec![(b, Why::PeerCap)]);
        // The same at the cap, with the newcomer from another address.
        let mut t = Table::new(3, 3);
        let a = admit(&mut t, LOCAL);
        let b = admit(&mut t, LOCAL);
        let _c = admit(&mut t, SCRAPER);
        t.set(a, Phase::Waiting { served: true });
        assert_eq!(t.admit(SCRAPER, false).1, vec![(b, Why::Cap)]);
    }

    #[test]
    fn closing_connections_leave_the_count_when_gone_and_late_aborts_fire() {
        let mut t = Table::new(1, 1);
        let a = admit(&mut t, LOCAL);
        let (_, e) = t.admit(LOCAL, false);
        assert_eq!(e, vec![(a, Why::PeerCap)]);
        assert_eq!((t.live(), t.closing()), (1, 1));
        t.gone(a);
        assert_eq!((t.live(), t.closing()), (1, 0));
        assert_eq!(t.evict_all(), 1);
        assert_eq!((t.live(), t.closing()), (0, 1));
    }
}
