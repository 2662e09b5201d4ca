//! A do-nothing XDP program for the test and demo labs.
//!
//! A frame sent with `XDP_TX` out of a veth only arrives if the peer veth runs
//! an XDP program of its own (veth's NAPI path); the labs attach this one to
//! the switch side of the load balancer's veth. Real NICs need nothing like it.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Passes every frame to the kernel.
#[xdp]
pub fn lab_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

lb_common::bpf_object_essentials!();
