//! A stand-in for the wasm-operator host (github.com/idlab-discover/wasm-operator, crate
//! `controller`) with its symbol shapes, for the tracer's wasm-operator probe:
//! `controller::dispatch_reconcile` hands a reconcile request to a wasm controller, and
//! `controller::modules::wasm::WasmRuntime::wakeup` resumes it when an async request it
//! made has finished. Both return what `anyhow::Result<()>` is in a register: 0 for Ok.
//!
//! Usage: wasm-operator-host [-threads 2] [-calls 100] [-ground-truth FILE]
//! Every call (of either function) is one JSON line of ground truth: function, thread,
//! CLOCK_MONOTONIC entry and exit, its first integer argument and its return value.
//! Standard library only; system calls through inline assembly.

use std::arch::asm;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex};

fn syscall2(n: u64, a: u64, b: u64) -> u64 {
    let ret: u64;
    unsafe {
        asm!("syscall", inlateout("rax") n => ret, in("rdi") a, in("rsi") b,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

fn monotonic_ns() -> u64 {
    let mut ts = [0i64; 2];
    syscall2(228, 1, ts.as_mut_ptr() as u64); // clock_gettime(CLOCK_MONOTONIC)
    ts[0] as u64 * 1_000_000_000 + ts[1] as u64
}

fn gettid() -> u64 {
    syscall2(186, 0, 0)
}

fn busy(us: u64) {
    let end = monotonic_ns() + us * 1000;
    while monotonic_ns() < end {}
}

type Truth = Arc<Mutex<Option<BufWriter<File>>>>;

fn record(truth: &Truth, function: &str, entry: u64, arg: u64, ret: usize) {
    let exit = monotonic_ns();
    if let Some(w) = truth.lock().unwrap().as_mut() {
        writeln!(w, "{{\"function\": \"{}\", \"thread\": {}, \"entry_ns\": {}, \"exit_ns\": {}, \
                     \"arg\": {}, \"ret\": {}}}", function, gettid(), entry, exit, arg, ret)
            .unwrap();
    }
}

pub mod modules {
    pub mod wasm {
        /// The wasm runtime of one controller module.
        pub struct WasmRuntime {
            pub truth: super::super::Truth,
            pub resumed: u64,
        }

        impl WasmRuntime {
            /// Resume the controller with the result of its async request.
            #[inline(never)]
            pub fn wakeup(&mut self, async_request_id: u64, finished: bool) -> usize {
                let entry = super::super::monotonic_ns();
                super::super::busy(40);
                self.resumed += 1;
                // Every 9th resumption fails, as a trap in the module would.
                let ret = if finished && async_request_id % 9 == 0 { 1 } else { 0 };
                super::super::record(&self.truth, "wakeup", entry, self as *const _ as u64, ret);
                ret
            }
        }
    }
}

/// Hand a reconcile request to the wasm controller.
#[inline(never)]
pub fn dispatch_reconcile(request_id: u64, truth: &Truth) -> usize {
    let entry = monotonic_ns();
    busy(80);
    record(truth, "dispatch_reconcile", entry, request_id, 0);
    0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: &str| -> String {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let threads: u64 = flag("-threads", "2").parse().unwrap();
    let calls: u64 = flag("-calls", "100").parse().unwrap();
    let path = flag("-ground-truth", "");
    let truth: Truth = Arc::new(Mutex::new(if path.is_empty() {
        None
    } else {
        Some(BufWriter::new(File::create(&path).unwrap()))
    }));
    let handles: Vec<_> = (0..threads).map(|t| {
        let truth = truth.clone();
        std::thread::spawn(move || {
            let mut runtime = modules::wasm::WasmRuntime { truth: truth.clone(), resumed: 0 };
            for i in 0..calls / threads {
                let id = t * 1_000_000 + i;
                dispatch_reconcile(id, &truth);
                runtime.wakeup(id, true);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    }).collect();
    for h in handles {
        h.join().unwrap();
    }
    if let Some(w) = truth.lock().unwrap().as_mut() {
        w.flush().unwrap();
    };
}
