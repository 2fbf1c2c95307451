//! A kube-rs operator as one is written and shipped: `kube::runtime::Controller` on tokio's
//! multi-threaded runtime, a CRD of its own (`Widget`, tracer.example.com/v1) and a ConfigMap
//! each Widget owns. `async fn reconcile` awaits the API server (get, server-side apply) and a
//! timer, returns errors of its own type (thiserror) or `Action::requeue`.
//!
//! Ground truth (`--ground-truth FILE`, JSON lines, one per reconcile future that was polled):
//! the object, CLOCK_MONOTONIC of the first poll and of completion (or drop), the number of
//! polls and the thread of each, Ok/Err with the error's Display text and variant, and the
//! requeue duration. It is taken by `Recorded`, a future that `reconcile` awaits as its only
//! await, so each poll of the reconcile's future is one poll of `Recorded` (the same thread,
//! the same count); `at` is Recorded's address, which lies inside the reconcile's future (and
//! so inside the tokio task that holds it).
//!
//! A reconcile aborted by kube-runtime (its task's JoinHandle dropped, the future dropped at
//! its await) is recorded by Recorded's Drop with status "cancelled" and end_ns at the drop.
//! Each reconcile's first poll also writes a `{"started": true, ...}` line at once.
//! SIGUSR1 stops the Controller and starts a new one (a leader lease lost and won back): every
//! reconcile running then is aborted; a `{"restart": N, "ts_ns"}` line says when.
//!
//! Flags: --kubeconfig PATH (else KUBECONFIG / in-cluster), --ground-truth PATH,
//! --namespace NS (default: all), --concurrency N (default 4), --threads N (tokio workers,
//! default 2), --print-crd (the CRD as JSON, then exit). Prints "ready" once the Widget
//! store is synced. SIGTERM/SIGINT: writes {"end": true, "reconciles": N} and exits 0.
//!
//! What a Widget's spec asks of its reconcile: `delayMs` the timer it awaits (default 20),
//! `requeueSeconds` the requeue (default 300), `fail` a reason: the reconcile returns
//! `Error::Asked` with it after applying the ConfigMap.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::watcher;
use kube::{Client, Config, CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(group = "tracer.example.com", version = "v1", kind = "Widget", namespaced)]
#[serde(rename_all = "camelCase")]
pub struct WidgetSpec {
    /// Written into the owned ConfigMap.
    pub message: String,
    /// How long the reconcile's timer waits, in milliseconds.
    pub delay_ms: Option<u64>,
    /// The requeue the reconcile returns, in seconds.
    pub requeue_seconds: Option<u64>,
    /// When set, the reconcile fails with this reason.
    pub fail: Option<String>,
    /// The owned ConfigMap's name (default: NAME-widget); an invalid one makes the API
    /// server refuse the apply (Error::Kube).
    pub config_map_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube API call failed: {0}")]
    Kube(#[source] kube::Error),
    #[error("widget {name} asked to fail: {reason}")]
    Asked { name: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

const MANAGER: &str = "kube-rs-operator";

struct Ctx {
    client: Client,
    truth: Option<Mutex<File>>,
    seq: AtomicU64,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn gettid() -> i64 {
    unsafe { libc::syscall(libc::SYS_gettid) }
}

impl Ctx {
    fn write(&self, record: serde_json::Value) {
        if let Some(file) = &self.truth {
            let mut line = record.to_string();
            line.push('\n');
            let mut f = file.lock().unwrap();
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// The ground truth of one reconcile future: wraps the reconcile's work, counts its polls.
struct Recorded<F> {
    inner: Pin<Box<F>>,
    ctx: Arc<Ctx>,
    namespace: String,
    name: String,
    start_ns: u64,
    threads: Vec<i64>,
    done: bool,
}

impl<F> Recorded<F> {
    fn record(&mut self, status: &str, result: Option<&Result<Action, Error>>) {
        let end_ns = monotonic_ns();
        let (error, variant, requeue) = match result {
            Some(Ok(action)) => (None, None, requeue_ns(action)),
            Some(Err(e)) => (Some(e.to_string()), Some(variant_name(e)), None),
            None => (None, None, None),
        };
        let seq = self.ctx.seq.fetch_add(1, Ordering::Relaxed);
        self.ctx.write(json!({
            "seq": seq,
            "namespace": self.namespace,
            "name": self.name,
            "start_ns": self.start_ns,
            "end_ns": end_ns,
            "polls": self.threads.len(),
            "threads": self.threads,
            "status": status,
            "error": error,
            "error_variant": variant,
            "requeue_ns": requeue,
            "at": format!("0x{:x}", self as *const _ as usize),
        }));
    }
}

impl<F: Future<Output = Result<Action, Error>>> Future for Recorded<F> {
    type Output = Result<Action, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.threads.is_empty() {
            this.start_ns = monotonic_ns();
            // Said at once, for a test to know the reconcile is running (one to abort).
            this.ctx.write(json!({
                "started": true,
                "namespace": this.namespace,
                "name": this.name,
                "start_ns": this.start_ns,
                "at": format!("0x{:x}", this as *const _ as usize),
            }));
        }
        this.threads.push(gettid());
        match this.inner.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                this.done = true;
                let status = if result.is_ok() { "ok" } else { "error" };
                this.record(status, Some(&result));
                Poll::Ready(result)
            }
        }
    }
}

// Dropped before it completed: the reconcile's future was dropped between polls (kube-runtime
// aborts the task when its JoinHandle is dropped) — "cancelled", at the drop.
impl<F> Drop for Recorded<F> {
    fn drop(&mut self) {
        if !self.done && !self.threads.is_empty() {
            self.record("cancelled", None);
        }
    }
}

fn requeue_ns(action: &Action) -> Option<u64> {
    // Action's fields are private; its Debug says `Action { requeue_after: Some(5s) }`.
    let text = format!("{action:?}");
    let start = text.find("Some(")? + 5;
    let end = start + text[start..].find(')')?;
    parse_duration_ns(&text[start..end])
}

fn parse_duration_ns(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')?);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1e9,
        "ms" => 1e6,
        "µs" => 1e3,
        "ns" => 1.0,
        _ => return None,
    };
    Some((value * scale).round() as u64)
}

fn variant_name(e: &Error) -> &'static str {
    match e {
        Error::Kube(_) => "Kube",
        Error::Asked { .. } => "Asked",
        Error::Invalid(_) => "Invalid",
    }
}

/// The reconcile: builds the ConfigMap the Widget owns, waits, applies it.
async fn reconcile(widget: Arc<Widget>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let recorded = Recorded {
        namespace: widget.namespace().unwrap_or_default(),
        name: widget.name_any(),
        inner: Box::pin(reconcile_widget(widget, ctx.clone())),
        ctx,
        start_ns: 0,
        threads: Vec::new(),
        done: false,
    };
    recorded.await
}

async fn reconcile_widget(widget: Arc<Widget>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let namespace = widget
        .namespace()
        .ok_or_else(|| Error::Invalid(format!("widget {} has no namespace", widget.name_any())))?;
    let name = widget.name_any();
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let cm_name = widget.spec.config_map_name.clone().unwrap_or_else(|| format!("{name}-widget"));
    let existing = configmaps.get_opt(&cm_name).await.map_err(Error::Kube)?;
    tokio::time::sleep(Duration::from_millis(widget.spec.delay_ms.unwrap_or(20))).await;
    let owner = widget.controller_owner_ref(&()).ok_or_else(|| {
        Error::Invalid(format!("widget {name} has no uid"))
    })?;
    // Applied only when it differs: an apply that changes nothing makes no watch event, so
    // the owned ConfigMap does not trigger its owner's reconcile again.
    let message = widget.spec.message.clone();
    if existing.as_ref().and_then(|cm| cm.data.as_ref()).and_then(|d| d.get("message"))
        == Some(&message)
    {
        return finish(&widget, name);
    }
    let desired = ConfigMap {
        metadata: ObjectMeta {
            name: Some(cm_name.clone()),
            namespace: Some(namespace.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(
            [("message".to_string(), message)].into(),
        ),
        ..Default::default()
    };
    configmaps
        .patch(&cm_name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&desired))
        .await
        .map_err(Error::Kube)?;
    finish(&widget, name)
}

fn finish(widget: &Widget, name: String) -> Result<Action, Error> {
    if let Some(reason) = &widget.spec.fail {
        return Err(Error::Asked { name, reason: reason.clone() });
    }
    Ok(Action::requeue(Duration::from_secs(widget.spec.requeue_seconds.unwrap_or(300))))
}

fn error_policy(_widget: Arc<Widget>, _error: &Error, _ctx: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_secs(60))
}

struct Args {
    kubeconfig: Option<String>,
    ground_truth: Option<String>,
    namespace: Option<String>,
    concurrency: u16,
    threads: usize,
    print_crd: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        kubeconfig: None,
        ground_truth: None,
        namespace: None,
        concurrency: 4,
        threads: 2,
        print_crd: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (flag, None),
        };
        if flag == "--print-crd" {
            args.print_crd = true;
            continue;
        }
        let value = inline.or_else(|| it.next()).unwrap_or_else(|| {
            eprintln!("{flag} needs a value");
            std::process::exit(2)
        });
        match flag.as_str() {
            "--kubeconfig" => args.kubeconfig = Some(value),
            "--ground-truth" => args.ground_truth = Some(value),
            "--namespace" => args.namespace = Some(value),
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency N"),
            "--threads" => args.threads = value.parse().expect("--threads N"),
            _ => {
                eprintln!("unknown flag {flag}");
                std::process::exit(2)
            }
        }
    }
    args
}

fn main() {
    let args = parse_args();
    if args.print_crd {
        println!("{}", serde_json::to_string_pretty(&Widget::crd()).unwrap());
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(args));
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    let path = args.kubeconfig.clone().or_else(|| std::env::var("KUBECONFIG").ok());
    let config = match &path {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).expect("read the kubeconfig");
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("kubeconfig")
        }
        None => Config::infer().await.expect("no kubeconfig"),
    };
    let client = Client::try_from(config).expect("client");
    let truth = args
        .ground_truth
        .as_ref()
        .map(|p| Mutex::new(File::create(p).expect("ground truth file")));
    let ctx = Arc::new(Ctx { client: client.clone(), truth, seq: AtomicU64::new(0) });
    ctx.write(json!({"header": true, "pid": std::process::id(),
                     "kind": Widget::kind(&()), "group": Widget::group(&())}));
    let (widgets, configmaps): (Api<Widget>, Api<ConfigMap>) = match &args.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let mut said_ready = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .expect("SIGUSR1 handler");
    let mut restarts = 0u64;
    'controller: loop {
        let controller = Controller::new(widgets.clone(), watcher::Config::default())
            .owns(configmaps.clone(), watcher::Config::default())
            .with_config(ControllerConfig::default().concurrency(args.concurrency));
        let store = controller.store();
        let ready = async move { store.wait_until_ready().await };
        tokio::pin!(ready);
        let stream = controller.run(reconcile, error_policy, ctx.clone());
        tokio::pin!(stream);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => eprintln!("reconcile failed: {e}"),
                    None => break 'controller,
                },
                result = &mut ready, if !said_ready => {
                    said_ready = true;
                    if result.is_ok() {
                        println!("ready");
                        let _ = std::io::stdout().flush();
                    }
                }
                // SIGUSR1: stop this Controller and start a new one, as an operator does that
                // loses its leader lease and wins it back. Dropping the Controller's stream
                // drops its runner's CancelableJoinHandles, which abort every reconcile task
                // still running (kube-runtime 5.0.0, utils::CancelableJoinHandle).
                _ = usr1.recv() => {
                    restarts += 1;
                    ctx.write(json!({"restart": restarts, "ts_ns": monotonic_ns()}));
                    break;
                }
                _ = term.recv() => break 'controller,
                _ = tokio::signal::ctrl_c() => break 'controller,
            }
        }
    }
    let n = ctx.seq.load(Ordering::Relaxed);
    ctx.write(json!({"end": true, "reconciles": n}));
    0
}
