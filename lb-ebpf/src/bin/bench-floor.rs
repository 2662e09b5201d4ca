//! The per-packet floor of `cargo xtask bench`: an XDP program that sends
//! every frame back out (`XDP_TX`) and does nothing else. Measured with
//! `BPF_PROG_TEST_RUN` beside the real program, it is what the kernel costs
//! for running any XDP program on a frame on this machine.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Sends every frame back out unchanged.
#[xdp]
pub fn bench_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

lb_common::bpf_object_essentials!();
