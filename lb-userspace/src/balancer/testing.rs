//! Helpers shared by the balancer tests: a configuration of one service and
//! a balancer over the in-memory maps.

use std::fmt::Write as _;

use super::Balancer;
use crate::config::Config;
use crate::dataplane::FakeMaps;

pub(super) const MAC: [u8; 6] = [2, 0, 0, 0, 0, 10];

pub(super) fn config(reals: &[(&str, &str)]) -> Config {
    let mut yaml = String::from(
        "node: { name: lb1, interface: eth0 }\nservices:\n  - name: web\n    vip: 198.18.0.100\n    port: 80\n    real_servers:\n",
    );
    for (name, address) in reals {
        let _ = writeln!(yaml, "      - {{ name: {name}, address: {address} }}");
    }
    match Config::from_yaml(&yaml, "test.yaml") {
        Ok(c) => c,
        Err(e) => panic!("test configuration invalid: {e}"),
    }
}

/// A balancer whose real servers have all answered ARP.
pub(super) fn balancer(reals: &[(&str, &str)]) -> Balancer<FakeMaps> {
    let mut b = unresolved_balancer(reals);
    for (i, address) in b.addresses().into_iter().enumerate() {
        let mac = [2, 0, 0, 0, 1, u8::try_from(i).unwrap_or(0)];
        b.set_mac(address, Some(mac))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    b
}

/// A balancer whose real servers have not answered ARP yet.
pub(super) fn unresolved_balancer(reals: &[(&str, &str)]) -> Balancer<FakeMaps> {
    let mut b = Balancer::new(FakeMaps::default(), MAC).unwrap_or_else(|e| panic!("{e}"));
    b.apply(&config(reals)).unwrap_or_else(|e| panic!("{e}"));
    b
}

pub(super) fn real_indexes(b: &Balancer<FakeMaps>) -> Vec<u32> {
    b.service("web")
        .unwrap_or_else(|e| panic!("{e}"))
        .reals
        .iter()
        .map(|r| r.index)
        .collect()
}

pub(super) fn live_ring(b: &Balancer<FakeMaps>) -> Vec<u32> {
    let (_, service) = b
        .maps()
        .services
        .iter()
        .next()
        .unwrap_or_else(|| panic!("no service"));
    b.maps().rings[&service.ring_slot].clone()
}

pub(super) const THREE: [(&str, &str); 3] = [
    ("rs1", "198.18.0.21"),
    ("rs2", "198.18.0.22"),
    ("rs3", "198.18.0.23"),
];
