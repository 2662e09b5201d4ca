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
    let function = object
        .functions
        .get(&program.function_key())
        .expect("lb_xdp's function is in the object");
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
