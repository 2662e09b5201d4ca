//! Test support for the load balancer: the network-namespace lab ([`lab`]),
//! `lbd` in it ([`lbd`]), many clients written into its table
//! ([`affinity`]), the web console and a browser ([`console`]), frame building ([`frames`]), spoofed-source
//! floods sent into a lab ([`flood`]), connections held open ([`hold`]), where the built artifacts are
//! ([`paths`]), bounded waiting ([`wait`]), who answers ARP ([`arp`]) and
//! maps made by hand ([`bpf`]) and the XDP program run on a frame ([`xdp`]).

pub mod affinity;
pub mod arp;
pub mod bpf;
pub mod console;
pub mod flood;
pub mod frames;
pub mod hold;
pub mod lab;
pub mod lbd;
pub mod natns;
pub mod paths;
pub mod wait;
pub mod xdp;
