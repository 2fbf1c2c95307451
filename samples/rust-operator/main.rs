//! rust-operator: a tracing target shaped like a kube-rs operator, standard library only.
//!
//! `async fn reconcile(obj: &Request) -> Result<Action, Error>` runs on a small multi-threaded
//! executor of its own: -workers threads take tasks from one shared run queue, a task's waker
//! puts it back on the queue, and a timer thread wakes sleeping futures. Each reconcile awaits
//! the timer 0 to 3 times (chosen from its sequence number), so it is polled 1 to 4 times, and
//! its polls often run on different threads. Every -error-every-th call returns an error.
//!
//! Usage (Go-style flags: -flag value, -flag=value, --flag also accepted):
//!   rust-operator [-workers 4] [-calls N] [-rate R] [-objects 50] [-work-us U]
//!                 [-sleep-us S] [-error-every E] [-ground-truth FILE] [-wait-signal] [-linger]
//!
//!   -calls N         reconciles in total (0 = unlimited, until SIGINT/SIGTERM)
//!   -rate R          reconciles started per second (0 = as fast as the executor takes them)
//!   -work-us U       busy work in every poll, microseconds
//!   -sleep-us S      each await sleeps S to 2*S microseconds (default 300)
//!   -ground-truth F  JSON Lines, one per finished reconcile, measured by the executor:
//!                    {"seq", "future" (hex address of the pinned boxed future, what poll gets
//!                    as self), "start_ns" (CLOCK_MONOTONIC just before the first poll),
//!                    "end_ns" (after the completing poll returned and the future was dropped),
//!                    "polls", "threads" (gettid of each poll), "poll_ns" ([start, end] of each
//!                    poll), "cpu_ns" (their sum), "namespace", "name",
//!                    "result" ({"requeue_after_ns"} or null), "error" (message or null)}.
//!                    When all calls are done: {"done": true, "calls": N}; on SIGINT/SIGTERM
//!                    before that: {"interrupted": true, "signal": "...", "calls": N}.
//!   -wait-signal     print "ready pid=<pid>" and wait for SIGUSR1 before starting
//!   -linger          after all calls are done stay idle until SIGINT/SIGTERM
//!
//! Every signal is reported on stderr as "signal: <name>". Builds with rustc 1.63 (Debian
//! bookworm) and newer: no crate, no language feature newer than that.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::process;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

// ---- the C library std links anyway -------------------------------------------------------

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

#[repr(C)]
struct SigSet([u64; 16]);

const CLOCK_MONOTONIC: i32 = 1;
const SIG_BLOCK: i32 = 0;
const SIGINT: i32 = 2;
const SIGUSR1: i32 = 10;
const SIGTERM: i32 = 15;
// Fault signals stay unblocked: they belong to the thread that caused them (and a debugger's
// breakpoint trap must reach it).
const SYNC_SIGNALS: [i32; 9] = [4, 5, 6, 7, 8, 9, 11, 19, 31]; // ILL TRAP ABRT BUS FPE KILL SEGV STOP SYS

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    fn gettid() -> i32;
    fn sigfillset(set: *mut SigSet) -> i32;
    fn sigdelset(set: *mut SigSet, sig: i32) -> i32;
    fn pthread_sigmask(how: i32, set: *const SigSet, old: *mut SigSet) -> i32;
    fn sigwait(set: *const SigSet, sig: *mut i32) -> i32;
    fn strsignal(sig: i32) -> *const std::os::raw::c_char;
    fn _exit(code: i32) -> !;
}

/// CLOCK_MONOTONIC in ns, the tracer's clock (std's Instant uses it too but hides the value).
fn mono_ns() -> u64 {
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn tid() -> i32 {
    unsafe { gettid() }
}

fn busy_us(us: u64) {
    if us == 0 {
        return;
    }
    let until = mono_ns() + us * 1000;
    while mono_ns() < until {
        std::hint::spin_loop();
    }
}

// ---- the operator's types, shaped like kube-rs ----------------------------------------------

pub struct Request {
    pub namespace: String,
    pub name: String,
}

/// kube-rs's `Action`: requeue after a delay, or wait for the next change.
#[derive(Debug)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    fn requeue(after: Duration) -> Action {
        Action { requeue_after: Some(after) }
    }
    fn await_change() -> Action {
        Action { requeue_after: None }
    }
}

#[derive(Debug)]
pub enum Error {
    Conflict { object: String },
    Unavailable(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Conflict { object } => write!(f, "conflict: {} was modified", object),
            Error::Unavailable(what) => write!(f, "unavailable: {}", what),
        }
    }
}

struct Knobs {
    work_us: AtomicU64,
    sleep_us: AtomicU64,
    error_every: AtomicU64,
    seq: AtomicU64,
}

static KNOBS: Knobs = Knobs {
    work_us: AtomicU64::new(0),
    sleep_us: AtomicU64::new(300),
    error_every: AtomicU64::new(0),
    seq: AtomicU64::new(0),
};

/// How many times call `seq` awaits the timer: 0 to 3, spread so every count is common.
fn awaits_for(seq: u64) -> u64 {
    (seq.wrapping_mul(2654435761) >> 5) % 4
}

/// The reconcile: the traced async function. Its future is what the executor polls.
#[inline(never)]
pub async fn reconcile(obj: &Request) -> Result<Action, Error> {
    let seq = KNOBS.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let sleep = KNOBS.sleep_us.load(Ordering::Relaxed);
    let work = KNOBS.work_us.load(Ordering::Relaxed);
    busy_us(work);
    for i in 0..awaits_for(seq) {
        Sleep::new(Duration::from_micros(sleep + (seq * 37 + i * 101) % (sleep + 1))).await;
        busy_us(work);
    }
    let every = KNOBS.error_every.load(Ordering::Relaxed);
    if every > 0 && seq % every == 0 {
        if seq % 2 == 0 {
            return Err(Error::Conflict { object: format!("{}/{}", obj.namespace, obj.name) });
        }
        return Err(Error::Unavailable(format!("the API server (call {})", seq)));
    }
    if seq % 3 == 0 {
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(Duration::from_millis(1 + seq % 5)))
}

// ---- timer ----------------------------------------------------------------------------------

struct TimerEntry {
    deadline: u64,
    waker: Waker,
}

// Unsorted: a few hundred sleepers at most, and rustc 1.63 has no const BinaryHeap::new.
struct Timer {
    sleepers: Mutex<Vec<TimerEntry>>,
    changed: Condvar,
}

static TIMER: Timer = Timer { sleepers: Mutex::new(Vec::new()), changed: Condvar::new() };

fn timer_thread() {
    let mut sleepers = TIMER.sleepers.lock().unwrap();
    loop {
        let now = mono_ns();
        let mut i = 0;
        while i < sleepers.len() {
            if sleepers[i].deadline <= now {
                sleepers.swap_remove(i).waker.wake();
            } else {
                i += 1;
            }
        }
        sleepers = match sleepers.iter().map(|e| e.deadline).min() {
            Some(next) => TIMER.changed.wait_timeout(sleepers, Duration::from_nanos(next - now)).unwrap().0,
            None => TIMER.changed.wait(sleepers).unwrap(),
        };
    }
}

/// A future that is ready once its deadline has passed; it registers its waker once, so each
/// await costs exactly one more poll of the task.
struct Sleep {
    deadline: u64,
}

impl Sleep {
    fn new(d: Duration) -> Sleep {
        Sleep { deadline: mono_ns() + d.as_nanos() as u64 }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if mono_ns() >= self.deadline {
            return Poll::Ready(());
        }
        TIMER.sleepers.lock().unwrap().push(TimerEntry { deadline: self.deadline, waker: cx.waker().clone() });
        TIMER.changed.notify_one();
        Poll::Pending
    }
}

// ---- instrumentation, like kube-rs's (tracing's Instrumented) ---------------------------------

thread_local! {
    static CURRENT_SPAN: std::cell::Cell<u64> = std::cell::Cell::new(0);
}

/// A generic wrapper that enters a span around each poll of the future it holds. Built with
/// `--cfg instrumented`, the executor boxes every reconcile in one, and an optimized build
/// inlines the reconcile's poll and drop into the wrapper's.
#[cfg_attr(not(instrumented), allow(dead_code))]
struct Instrumented<F> {
    span: u64,
    inner: F,
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Safety: `inner` is never moved out of the pinned wrapper.
        let this = unsafe { self.get_unchecked_mut() };
        let previous = CURRENT_SPAN.with(|c| c.replace(this.span));
        let outcome = unsafe { Pin::new_unchecked(&mut this.inner) }.poll(cx);
        CURRENT_SPAN.with(|c| c.set(previous));
        outcome
    }
}

impl<F> Drop for Instrumented<F> {
    fn drop(&mut self) {
        CURRENT_SPAN.with(|c| {
            if c.get() == self.span {
                c.set(0)
            }
        });
    }
}

#[cfg(instrumented)]
fn instrument<F: Future<Output = Result<Action, Error>> + Send + 'static>(seq: u64, f: F) -> BoxedReconcile {
    Box::pin(Instrumented { span: seq, inner: f })
}

#[cfg(not(instrumented))]
fn instrument<F: Future<Output = Result<Action, Error>> + Send + 'static>(_seq: u64, f: F) -> BoxedReconcile {
    Box::pin(f)
}

// ---- executor -------------------------------------------------------------------------------

type BoxedReconcile = Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

struct Record {
    start_ns: u64,
    polls: Vec<(i32, u64, u64)>, // thread, start, end
}

struct Task {
    seq: u64,
    obj: &'static Request,
    future: Mutex<Option<BoxedReconcile>>,
    record: Mutex<Record>,
    executor: Arc<Executor>,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        let executor = self.executor.clone();
        executor.schedule(self);
    }
}

struct Executor {
    queue: Mutex<VecDeque<Arc<Task>>>,
    ready: Condvar,
    in_flight: Mutex<u64>,
    settled: Condvar,
    truth: Option<Arc<GroundTruth>>,
}

impl Executor {
    fn schedule(&self, task: Arc<Task>) {
        self.queue.lock().unwrap().push_back(task);
        self.ready.notify_one();
    }

    fn spawn(self: &Arc<Self>, seq: u64, obj: &'static Request) {
        *self.in_flight.lock().unwrap() += 1;
        let task = Arc::new(Task {
            seq,
            obj,
            future: Mutex::new(Some(instrument(seq, reconcile(obj)))),
            record: Mutex::new(Record { start_ns: 0, polls: Vec::new() }),
            executor: self.clone(),
        });
        self.schedule(task);
    }

    fn worker(self: Arc<Self>) {
        loop {
            let task = {
                let mut queue = self.queue.lock().unwrap();
                loop {
                    if let Some(task) = queue.pop_front() {
                        break task;
                    }
                    queue = self.ready.wait(queue).unwrap();
                }
            };
            self.run(task);
        }
    }

    fn run(&self, task: Arc<Task>) {
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut slot = task.future.lock().unwrap();
        let future = match slot.as_mut() {
            Some(future) => future,
            None => return, // woken after it finished: nothing to do
        };
        let address = &**future as *const (dyn Future<Output = Result<Action, Error>> + Send)
            as *const u8 as usize;
        let thread = tid();
        let start = mono_ns();
        let outcome = future.as_mut().poll(&mut cx);
        let end = mono_ns();
        let mut record = task.record.lock().unwrap();
        if record.polls.is_empty() {
            record.start_ns = start;
        }
        record.polls.push((thread, start, end));
        if let Poll::Ready(result) = outcome {
            *slot = None; // the future's drop, before the end is taken
            let done = mono_ns();
            if let Some(truth) = &self.truth {
                truth.write(&task, &record, address, done, &result);
            }
            let mut in_flight = self.in_flight.lock().unwrap();
            *in_flight -= 1;
            self.settled.notify_all();
        }
    }

    fn wait_below(&self, limit: u64) {
        let mut in_flight = self.in_flight.lock().unwrap();
        while *in_flight >= limit {
            in_flight = self.settled.wait(in_flight).unwrap();
        }
    }
}

// ---- ground truth ---------------------------------------------------------------------------

struct GroundTruth {
    file: Mutex<(Option<File>, u64)>, // None once closed by a signal; calls written
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl GroundTruth {
    fn write(&self, task: &Task, record: &Record, address: usize, end: u64,
             result: &Result<Action, Error>) {
        let threads: Vec<String> = record.polls.iter().map(|p| p.0.to_string()).collect();
        let polls: Vec<String> = record.polls.iter().map(|p| format!("[{},{}]", p.1, p.2)).collect();
        let cpu: u64 = record.polls.iter().map(|p| p.2 - p.1).sum();
        let (result_json, error_json) = match result {
            Ok(action) => (
                match action.requeue_after {
                    Some(d) => format!("{{\"requeue_after_ns\":{}}}", d.as_nanos()),
                    None => "{\"requeue_after_ns\":null}".to_string(),
                },
                "null".to_string(),
            ),
            Err(e) => ("null".to_string(), json_string(&e.to_string())),
        };
        let line = format!(
            "{{\"seq\":{},\"future\":\"0x{:x}\",\"start_ns\":{},\"end_ns\":{},\"polls\":{},\
             \"threads\":[{}],\"poll_ns\":[{}],\"cpu_ns\":{},\"namespace\":{},\"name\":{},\
             \"result\":{},\"error\":{}}}\n",
            task.seq, address, record.start_ns, end, record.polls.len(), threads.join(","),
            polls.join(","), cpu, json_string(&task.obj.namespace), json_string(&task.obj.name),
            result_json, error_json
        );
        let mut file = self.file.lock().unwrap();
        if let Some(f) = file.0.as_mut() {
            let _ = f.write_all(line.as_bytes());
            file.1 += 1;
        }
    }

    fn finish(&self, line: String) {
        let mut file = self.file.lock().unwrap();
        let calls = file.1;
        if let Some(mut f) = file.0.take() {
            let _ = f.write_all(line.replace("CALLS", &calls.to_string()).as_bytes());
            let _ = f.flush();
        }
    }
}

// ---- signals, flags, main -------------------------------------------------------------------

fn signal_name(sig: i32) -> String {
    let raw = unsafe { std::ffi::CStr::from_ptr(strsignal(sig)) };
    raw.to_string_lossy().to_lowercase()
}

fn signal_thread(handled: SigSet, start: Arc<(Mutex<bool>, Condvar)>, truth: Option<Arc<GroundTruth>>) {
    loop {
        let mut sig = 0;
        if unsafe { sigwait(&handled, &mut sig) } != 0 {
            continue;
        }
        let name = signal_name(sig);
        eprintln!("signal: {}", name);
        if sig == SIGUSR1 {
            *start.0.lock().unwrap() = true;
            start.1.notify_all();
        } else if sig == SIGINT || sig == SIGTERM {
            if let Some(truth) = &truth {
                truth.finish(format!(
                    "{{\"interrupted\":true,\"signal\":{},\"calls\":CALLS}}\n", json_string(&name)));
            }
            let _ = std::io::stdout().flush();
            unsafe { _exit(0) };
        }
    }
}

struct Flags {
    workers: u64,
    calls: u64,
    rate: f64,
    objects: u64,
    ground_truth: Option<String>,
    wait_signal: bool,
    linger: bool,
}

fn usage_exit(message: &str) -> ! {
    eprintln!("rust-operator: {}", message);
    eprintln!("usage: rust-operator [-workers 4] [-calls N] [-rate R] [-objects 50] [-work-us U] \
               [-sleep-us S] [-error-every E] [-ground-truth FILE] [-wait-signal] [-linger]");
    process::exit(2)
}

fn parse_flags() -> Flags {
    let mut flags = Flags { workers: 4, calls: 0, rate: 0.0, objects: 50, ground_truth: None,
                            wait_signal: false, linger: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let bare = arg.trim_start_matches('-');
        if bare.len() == arg.len() || bare.is_empty() {
            usage_exit(&format!("unexpected argument: {}", arg));
        }
        let (name, inline) = match bare.find('=') {
            Some(i) => (&bare[..i], Some(bare[i + 1..].to_string())),
            None => (bare, None),
        };
        if name == "wait-signal" || name == "linger" {
            let on = inline.map_or(true, |v| v == "true" || v == "1");
            if name == "linger" { flags.linger = on } else { flags.wait_signal = on }
            continue;
        }
        let value = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => usage_exit(&format!("flag needs a value: -{}", name)),
        };
        let number = || -> u64 {
            value.parse().unwrap_or_else(|_| usage_exit(&format!("invalid value for -{}", name)))
        };
        match name {
            "workers" => flags.workers = number(),
            "calls" => flags.calls = number(),
            "objects" => flags.objects = number(),
            "work-us" => KNOBS.work_us.store(number(), Ordering::Relaxed),
            "sleep-us" => KNOBS.sleep_us.store(number(), Ordering::Relaxed),
            "error-every" => KNOBS.error_every.store(number(), Ordering::Relaxed),
            "rate" => {
                flags.rate = value.parse().unwrap_or_else(|_| usage_exit("invalid value for -rate"))
            }
            "ground-truth" => flags.ground_truth = Some(value.clone()),
            _ => usage_exit(&format!("unknown flag: -{}", name)),
        }
    }
    if flags.workers < 1 || flags.objects < 1 || flags.rate < 0.0 {
        usage_exit("-workers and -objects must be >= 1, -rate >= 0");
    }
    flags
}

fn main() {
    let flags = parse_flags();
    // Every asynchronous signal goes to one sigwait thread: blocked here, before any thread
    // starts, so every thread inherits the mask.
    let mut handled = SigSet([0; 16]);
    unsafe {
        sigfillset(&mut handled);
        for sig in SYNC_SIGNALS.iter() {
            sigdelset(&mut handled, *sig);
        }
        pthread_sigmask(SIG_BLOCK, &handled, std::ptr::null_mut());
    }
    let truth = flags.ground_truth.as_ref().map(|path| {
        let file = File::create(path).unwrap_or_else(|e| {
            eprintln!("rust-operator: {}: {}", path, e);
            process::exit(1)
        });
        Arc::new(GroundTruth { file: Mutex::new((Some(file), 0)) })
    });
    let start = Arc::new((Mutex::new(!flags.wait_signal), Condvar::new()));
    {
        let (start, truth) = (start.clone(), truth.clone());
        thread::spawn(move || signal_thread(handled, start, truth));
    }
    thread::Builder::new().name("timer".into()).spawn(timer_thread).unwrap();
    let executor = Arc::new(Executor {
        queue: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
        in_flight: Mutex::new(0),
        settled: Condvar::new(),
        truth: truth.clone(),
    });
    for i in 0..flags.workers {
        let executor = executor.clone();
        thread::Builder::new().name(format!("worker-{}", i)).spawn(move || executor.worker()).unwrap();
    }
    // The objects live for the whole run, so a reconcile's future may borrow its request.
    let objects: Vec<&'static Request> = (0..flags.objects)
        .map(|i| &*Box::leak(Box::new(Request {
            namespace: format!("ns-{}", i % 3),
            name: format!("obj-{}", i),
        })))
        .collect();
    if flags.wait_signal {
        println!("ready pid={}", process::id());
        let _ = std::io::stdout().flush();
    }
    {
        let mut started = start.0.lock().unwrap();
        while !*started {
            started = start.1.wait(started).unwrap();
        }
    }
    let t0 = mono_ns();
    let mut i: u64 = 0;
    while flags.calls == 0 || i < flags.calls {
        if flags.rate > 0.0 {
            let due = t0 + (i as f64 / flags.rate * 1e9) as u64;
            let now = mono_ns();
            if due > now {
                thread::sleep(Duration::from_nanos(due - now));
            }
        }
        executor.wait_below(256); // back-pressure: a bounded number of reconciles in flight
        executor.spawn(i + 1, objects[(i % flags.objects) as usize]);
        i += 1;
    }
    executor.wait_below(1);
    if let Some(truth) = &truth {
        truth.finish("{\"done\":true,\"calls\":CALLS}\n".to_string());
    }
    if flags.linger {
        static NEVER: AtomicBool = AtomicBool::new(false);
        while !NEVER.load(Ordering::Relaxed) {
            thread::park(); // the signal thread exits the process on SIGINT/SIGTERM
        }
    }
    process::exit(0);
}
