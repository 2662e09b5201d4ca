//! The compiled XDP object, read as the loader reads it: properties of the
//! code the compiler made that no packet fixture shows, because they cost
//! time, not correctness.
//!
//! Needs no privileges.

use aya_obj::{generated::bpf_insn, Object};
use lb_userspace::dataplane::Program;

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// A call's source register for a BPF-to-BPF call (a helper's is 0).
const BPF_PSEUDO_CALL: u8 = 1;

/// `BPF_FUNC_ktime_get_ns`: the monotonic clock read from its source.
const KTIME_GET_NS: i32 = 5;
/// `BPF_FUNC_ktime_get_coarse_ns`: the same clock as of the last tick.
const KTIME_GET_COARSE_NS: i32 = 160;

/// The calls `lb_xdp` makes to BPF functions of its own object, by the
/// instruction's index.
fn bpf_to_bpf_calls(instructions: &[bpf_insn]) -> Vec<usize> {
    instructions
        .iter()
        .enumerate()
        .filter(|(_, insn)| insn.code == CALL && insn.src_reg() == BPF_PSEUDO_CALL)
        .map(|(i, _)| i)
        .collect()
}

/// How many calls of the kernel helper `id` the instructions make.
fn helper_calls(instructions: &[bpf_insn], id: i32) -> usize {
    instructions
        .iter()
        .filter(|insn| insn.code == CALL && insn.src_reg() == 0 && insn.imm == id)
        .count()
}

/// The XDP object's `lb_xdp`, as the loader sees it.
fn lb_xdp() -> aya_obj::Function {
    let bytes = Program::object();
    assert!(
        !bytes.is_empty(),
        "this test binary was built without the XDP object: run `cargo xtask build`"
    );
    let object = Object::parse(bytes).expect("the XDP object parses");
    let program = object
        .programs
        .get("lb_xdp")
        .expect("the object has the program lb_xdp");
    object
        .functions
        .get(&program.function_key())
        .expect("lb_xdp's function is in the object")
        .clone()
}

/// Every frame runs straight through `lb_xdp` with no call of a function
/// of the object: not the program's own body (the entry-point macro wraps
/// it in a function of its own unless it is inlined), and not `memset` or
/// `memmove`, which LLVM emits for the BPF target as byte loops in
/// functions of their own when a copy or a zeroing is not written as
/// single loads and stores (a MAC address copied as an array, a 3-byte
/// padding written `[0; 3]`, a parameter block zeroed with
/// `mem::zeroed()`). Each such call cost every frame more than the rest of
/// its parsing.
#[test]
fn lb_xdp_calls_no_function_of_its_own() {
    let function = lb_xdp();
    let calls = bpf_to_bpf_calls(&function.instructions);
    assert!(
        calls.is_empty(),
        "lb_xdp calls functions of its own at instructions {calls:?}; \
         `llvm-objdump -dr` on the object names them (memset, memmove, or lb_xdp's body)"
    );
    assert!(
        function.instructions.len() > 100,
        "lb_xdp has {} instructions: not the program",
        function.instructions.len()
    );
}

/// Affinity and connection entries are stamped and aged with the clock as
/// of the last tick (`bpf_ktime_get_coarse_ns`), which reads what the tick
/// stored instead of the time source (a new client's insert took about
/// 50 ns less in quick packet runs); the exact clock is read only where
/// milliseconds count: the ARP lease, whose margin to the peer's takeover
/// can be under a millisecond.
#[test]
fn lb_xdp_reads_the_exact_clock_only_for_the_arp_lease() {
    let function = lb_xdp();
    assert_eq!(
        helper_calls(&function.instructions, KTIME_GET_NS),
        1,
        "bpf_ktime_get_ns is called only by the ARP lease check (`arp::lease_holds`)"
    );
    assert!(
        helper_calls(&function.instructions, KTIME_GET_COARSE_NS) > 0,
        "the entries' clock is bpf_ktime_get_coarse_ns (`now_ns`)"
    );
}
