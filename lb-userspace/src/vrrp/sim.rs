//! A simulated link of VRRP instances for tests, on a fake clock: [`Sim`]
//! carries every advertisement through the codec to every other running
//! instance whose link is not cut, with no delay, and can cut and heal links.
//! Also the addresses, configuration and advertisement the tests share.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::{decode, encode, Action, Advertisement, Config, State, Vrrp};

pub(crate) const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
pub(crate) const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
pub(crate) const VIP1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
pub(crate) const VIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);

pub(crate) fn config(local: Ipv4Addr, priority: u8) -> Config {
    Config {
        vrid: 51,
        priority,
        advert_interval_cs: 100,
        preempt: true,
        addresses: vec![VIP1, VIP2],
        local,
        peer: None,
    }
}

pub(crate) fn node(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + n)
}

pub(crate) fn advert(priority: u8, interval_cs: u16) -> Advertisement {
    Advertisement {
        vrid: 51,
        priority,
        max_advert_interval_cs: interval_cs,
        addresses: vec![VIP1, VIP2],
    }
}

/// Instances on one link; delivers each `SendAdvert` through the codec to
/// every other running instance whose link is not cut, with no delay.
pub(crate) struct Sim {
    pub(crate) base: Instant,
    pub(crate) now: Instant,
    pub(crate) nodes: Vec<Vrrp>,
    cut: HashSet<(usize, usize)>,
    log: Vec<(Duration, usize, Action)>,
}

impl Sim {
    pub(crate) fn new(configs: Vec<Config>) -> Self {
        let base = Instant::now();
        Sim {
            base,
            now: base,
            nodes: configs.into_iter().map(Vrrp::new).collect(),
            cut: HashSet::new(),
            log: Vec::new(),
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub(crate) fn start(&mut self, i: usize) {
        self.nodes[i].startup(self.now);
        self.pump();
    }

    pub(crate) fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.nodes[i].startup(self.now);
        }
        self.pump();
    }

    /// Node `i` is replaced by a new process of the same configuration that
    /// resumes as master ([`Vrrp::resume_master`]).
    pub(crate) fn resume_master(&mut self, i: usize) {
        let config = self.nodes[i].config().clone();
        self.nodes[i] = Vrrp::new(config);
        self.nodes[i].resume_master(self.now);
        self.pump();
    }

    /// Node `i`'s actions after `since`, with their times.
    pub(crate) fn actions(&self, i: usize, since: Duration) -> Vec<(Duration, Action)> {
        self.log
            .iter()
            .filter(|&&(t, n, _)| n == i && t >= since)
            .map(|&(t, _, a)| (t, a))
            .collect()
    }

    pub(crate) fn shutdown(&mut self, i: usize) {
        self.nodes[i].shutdown(self.now);
        self.pump();
    }

    pub(crate) fn cut(&mut self, a: usize, b: usize) {
        self.cut.insert((a.min(b), a.max(b)));
    }

    pub(crate) fn heal(&mut self, a: usize, b: usize) {
        self.cut.remove(&(a.min(b), a.max(b)));
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        !self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.nodes.len() {
                while let Some(action) = self.nodes[i].poll_action() {
                    progressed = true;
                    self.log.push((self.elapsed(), i, action));
                    if let Action::SendAdvert { priority } = action {
                        self.deliver(i, priority);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn deliver(&mut self, from: usize, priority: u8) {
        let src = self.nodes[from].config().local;
        let dst = self.nodes[from].destination();
        let bytes = encode(&self.nodes[from].advertisement(priority), src, dst);
        for to in 0..self.nodes.len() {
            if to != from && self.linked(from, to) {
                let adv = decode(&bytes, src, dst).expect("own encoding decodes");
                self.nodes[to].handle_advert(self.now, src, &adv);
            }
        }
    }

    /// Runs every timer due up to `base + t`; all instances due at the same
    /// instant fire before any packet is delivered (simultaneous senders).
    pub(crate) fn run_until(&mut self, t: Duration) {
        let end = self.base + t;
        loop {
            self.pump();
            let Some(next) = self.nodes.iter().filter_map(Vrrp::poll_timeout).min() else {
                self.now = end;
                return;
            };
            if next > end {
                self.now = end;
                return;
            }
            self.now = next;
            for n in &mut self.nodes {
                n.handle_timeout(next);
            }
        }
    }

    pub(crate) fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].state() == State::Master)
            .collect()
    }

    pub(crate) fn states(&self) -> Vec<State> {
        self.nodes.iter().map(Vrrp::state).collect()
    }

    /// Times at which node `i` changed state, with the new state.
    pub(crate) fn transitions(&self, i: usize) -> Vec<(Duration, State)> {
        self.log
            .iter()
            .filter_map(|&(t, n, a)| match a {
                Action::StateChanged { to, .. } if n == i => Some((t, to)),
                _ => None,
            })
            .collect()
    }
}
