//! Running the real XDP program on one frame (`BPF_PROG_TEST_RUN`), for the
//! packet-level tests.

use aya::programs::{TestRun as _, TestRunOptions};
use lb_userspace::dataplane::Program;

/// Runs `program` on `frame`: the verdict and the frame it left with.
///
/// # Panics
/// When the kernel refuses the run (a test cannot go on).
#[must_use]
pub fn run(program: &mut Program, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0_u8; frame.len() + 256];
    let xdp = program.xdp_program().unwrap_or_else(|e| panic!("{e}"));
    let result = xdp
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("test_run: {e}"));
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Keeps the calling thread on the CPU it runs on, so that consecutive test
/// runs meet the same per-CPU maps (the flow cache, the next-hop cache):
/// a thread moved between runs meets another CPU's empty ones.
///
/// # Panics
/// When the kernel refuses the affinity (a test cannot go on).
pub fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpu = usize::try_from(libc::sched_getcpu()).unwrap_or(0);
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "sched_setaffinity"
        );
    }
}
