// Command sample-operator is a tracing target shaped like a controller-runtime
// operator: a producer feeds a work queue, -workers goroutines take requests
// and call (*SampleReconciler).Reconcile through the Reconciler interface via a
// panic-recovering wrapper, and results are honoured like controller-runtime.
//
// Usage:
//
//	sample-operator [-workers 4] [-calls N] [-rate R] [-objects 50] [-work-us 0]
//	    [-error-every E] [-requeue-every Q] [-requeue-after-every A]
//	    [-recurse-every D] [-recurse-kb 160] [-panic-every P]
//	    [-ground-truth FILE] [-wait-signal] [-linger]
//	    [-kube-watch URL -kube-token FILE]
//
// Event i (0-based) is a request for ns-<i%3>/obj-<i%objects>. -calls 0 means
// an endless producer (run until SIGINT/SIGTERM). The queue is a FIFO without
// de-duplication, so every event gives exactly one Reconcile call (cause
// "event") and total calls = events + follow-ups. Follow-ups: Requeue -> re-add
// after 1 ms ("requeue"); RequeueAfter -> re-add after it ("requeue-after");
// error -> per-object exponential backoff 5 ms, 10 ms, ... capped at 100 ms
// ("error-backoff"); recovered panic -> same backoff ("panic-backoff"). Knobs
// set to 1 make every call re-queue, so such a run never ends.
//
// Every signal except SIGURG is reported on stderr as "signal: <name>".
// SIGUSR1 starts the producer under -wait-signal; SIGINT/SIGTERM flush the
// ground truth and exit 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"example.com/sample-operator/controllers"
)

const (
	requeueDelay = time.Millisecond
	backoffBase  = 5 * time.Millisecond
	backoffCap   = 100 * time.Millisecond
	maxQueued    = 4096 // producer back-pressure, so -calls 0 -rate 0 stays bounded
)

type item struct {
	req   controllers.Request
	cause string
}

// workQueue is a small FIFO with delayed adds and per-object failure counts,
// enough to tell when all work is finished.
type workQueue struct {
	mu           sync.Mutex
	ready        *sync.Cond // items available
	space        *sync.Cond // below maxQueued
	items        []item
	inflight     int
	delayed      int
	producerDone bool
	failures     map[controllers.NamespacedName]int
	idle         chan struct{}
	idleClosed   bool
}

func newWorkQueue() *workQueue {
	q := &workQueue{failures: map[controllers.NamespacedName]int{}, idle: make(chan struct{})}
	q.ready = sync.NewCond(&q.mu)
	q.space = sync.NewCond(&q.mu)
	return q
}

func (q *workQueue) Add(it item) {
	q.mu.Lock()
	for len(q.items) >= maxQueued && it.cause == "event" {
		q.space.Wait()
	}
	q.items = append(q.items, it)
	q.ready.Signal()
	q.mu.Unlock()
}

func (q *workQueue) AddAfter(it item, d time.Duration) {
	q.mu.Lock()
	q.delayed++
	q.mu.Unlock()
	time.AfterFunc(d, func() {
		q.mu.Lock()
		q.delayed--
		q.items = append(q.items, it)
		q.ready.Signal()
		q.mu.Unlock()
	})
}

func (q *workQueue) Get() item {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 {
		q.ready.Wait()
	}
	it := q.items[0]
	q.items[0] = item{}
	q.items = q.items[1:]
	q.inflight++
	q.space.Signal()
	return it
}

func (q *workQueue) Done() {
	q.mu.Lock()
	q.inflight--
	q.checkIdle()
	q.mu.Unlock()
}

func (q *workQueue) ProducerDone() {
	q.mu.Lock()
	q.producerDone = true
	q.checkIdle()
	q.mu.Unlock()
}

func (q *workQueue) checkIdle() {
	if q.producerDone && len(q.items) == 0 && q.inflight == 0 && q.delayed == 0 && !q.idleClosed {
		q.idleClosed = true
		close(q.idle)
	}
}

// backoff returns the next per-object error delay (like ItemExponentialFailureRateLimiter).
func (q *workQueue) backoff(key controllers.NamespacedName) time.Duration {
	q.mu.Lock()
	n := q.failures[key]
	q.failures[key] = n + 1
	q.mu.Unlock()
	d := backoffBase
	for i := 0; i < n && d < backoffCap; i++ {
		d *= 2
	}
	if d > backoffCap {
		d = backoffCap
	}
	return d
}

func (q *workQueue) Forget(key controllers.NamespacedName) {
	q.mu.Lock()
	delete(q.failures, key)
	q.mu.Unlock()
}

type controller struct {
	queue *workQueue
	do    controllers.Reconciler // called through the interface
}

func (c *controller) worker(ctx context.Context, freshStackEvery int) {
	for n := 1; ; n++ {
		it := c.queue.Get()
		if freshStackEvery > 0 && n%freshStackEvery == 0 {
			// On a new goroutine (a small stack) behind a chain of frames whose depth varies
			// call to call: some depths leave too little stack for Reconcile's own frame, so
			// its stack check sends it to morestack, which grows the stack and runs
			// Reconcile from its first instruction again (one call, entered twice).
			done := make(chan struct{})
			go func(depth int) {
				defer close(done)
				pad(depth, func() { c.reconcileHandler(ctx, it) })
			}((n / freshStackEvery) % 96)
			<-done
			continue
		}
		c.reconcileHandler(ctx, it)
	}
}

//go:noinline
func pad(depth int, f func()) {
	if depth == 0 {
		f()
		return
	}
	pad(depth-1, f)
}

// reconcileHandler mirrors controller-runtime's: recover panics, honour Result.
func (c *controller) reconcileHandler(ctx context.Context, it item) {
	defer c.queue.Done()
	key := it.req.NamespacedName
	res, err, panicked := c.reconcile(controllers.WithCause(ctx, it.cause), it.req)
	switch {
	case panicked:
		c.queue.AddAfter(item{it.req, "panic-backoff"}, c.queue.backoff(key))
	case err != nil:
		c.queue.AddAfter(item{it.req, "error-backoff"}, c.queue.backoff(key))
	case res.RequeueAfter > 0:
		c.queue.Forget(key)
		c.queue.AddAfter(item{it.req, "requeue-after"}, res.RequeueAfter)
	case res.Requeue:
		c.queue.AddAfter(item{it.req, "requeue"}, requeueDelay)
	default:
		c.queue.Forget(key)
	}
}

func (c *controller) reconcile(ctx context.Context, req controllers.Request) (res controllers.Result, err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			panicked = true
			err = fmt.Errorf("panic: %v [recovered]", r)
		}
	}()
	res, err = c.do.Reconcile(ctx, req)
	return res, err, false
}

func main() {
	workers := flag.Int("workers", 4, "number of worker goroutines")
	calls := flag.Int("calls", 0, "producer events (0 = unlimited)")
	rate := flag.Float64("rate", 0, "producer events per second (0 = as fast as possible)")
	objects := flag.Int("objects", 50, "distinct object names (obj-<i mod objects>)")
	workUS := flag.Int("work-us", 0, "busy work per Reconcile call, microseconds")
	errorEvery := flag.Int("error-every", 0, "every E-th call returns an error (0 = never)")
	requeueEvery := flag.Int("requeue-every", 0, "every Q-th call returns Requeue: true")
	requeueAfterEvery := flag.Int("requeue-after-every", 0, "every A-th call returns RequeueAfter 1-5 ms")
	recurseEvery := flag.Int("recurse-every", 0, "every D-th call recurses deep enough to grow the goroutine stack")
	freshStackEvery := flag.Int("fresh-stack-every", 0, "every F-th call a worker makes on a new goroutine behind frames of varied depth, so that some calls grow the stack at Reconcile's own entry")
	recurseKB := flag.Int("recurse-kb", 160, "stack used by a recursing call, KiB")
	panicEvery := flag.Int("panic-every", 0, "every P-th call panics (recovered by the worker)")
	gtPath := flag.String("ground-truth", "", "write one JSON line per Reconcile call to FILE")
	waitSignal := flag.Bool("wait-signal", false, "print 'ready pid=<pid>' and wait for SIGUSR1 before producing")
	linger := flag.Bool("linger", false, "after all work is done stay idle until SIGINT/SIGTERM")
	thenExec := flag.Bool("then-exec", false, "after all work is done exec this binary again with -calls 1 -linger")
	spawnEvery := flag.Int("spawn-every", 0, "every S-th event also runs /bin/true as a child process (fork+exec)")
	threadChurnEvery := flag.Int("thread-churn-every", 0, "every T-th event a goroutine locks its OS thread and exits, ending the thread")
	kubeWatch := flag.String("kube-watch", "", "instead of producing events, watch this Kubernetes API URL (a list path with ?watch=1) and reconcile each changed object")
	kubeToken := flag.String("kube-token", "", "file holding the bearer token for -kube-watch")
	flag.Parse()
	if *workers < 1 || *objects < 1 || *calls < 0 || *rate < 0 {
		fmt.Fprintln(os.Stderr, "sample-operator: -workers and -objects must be >= 1, -calls and -rate >= 0")
		os.Exit(2)
	}

	var gt *controllers.GroundTruth
	if *gtPath != "" {
		var err error
		if gt, err = controllers.OpenGroundTruth(*gtPath); err != nil {
			fmt.Fprintln(os.Stderr, "sample-operator:", err)
			os.Exit(1)
		}
	}

	start := make(chan struct{})
	var startOnce sync.Once
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs) // every signal, so stray ones are visible
	go func() {
		for s := range sigs {
			if s == syscall.SIGURG { // Go's own preemption signal
				continue
			}
			fmt.Fprintf(os.Stderr, "signal: %v\n", s)
			switch s {
			case syscall.SIGUSR1:
				startOnce.Do(func() { close(start) })
			case syscall.SIGINT, syscall.SIGTERM:
				gt.Interrupt(s)
				os.Exit(0)
			}
		}
	}()

	r := &controllers.SampleReconciler{
		ErrorEvery: *errorEvery, RequeueEvery: *requeueEvery, RequeueAfterEvery: *requeueAfterEvery,
		RecurseEvery: *recurseEvery, RecurseKB: *recurseKB, PanicEvery: *panicEvery,
		WorkUS: *workUS, GT: gt,
	}
	c := &controller{queue: newWorkQueue(), do: r}
	ctx := context.Background()
	for i := 0; i < *workers; i++ {
		go c.worker(ctx, *freshStackEvery)
	}

	if *waitSignal {
		fmt.Printf("ready pid=%d\n", os.Getpid())
		<-start
	}

	if *kubeWatch != "" {
		go watchProducer(c.queue, *kubeWatch, *kubeToken)
		select {} // the signal goroutine exits on SIGINT/SIGTERM
	}

	go func() {
		t0 := time.Now()
		for i := 0; *calls == 0 || i < *calls; i++ {
			if *rate > 0 {
				if d := time.Until(t0.Add(time.Duration(float64(i) / *rate * float64(time.Second)))); d > 0 {
					time.Sleep(d)
				}
			}
			req := controllers.Request{NamespacedName: controllers.NamespacedName{
				Namespace: fmt.Sprintf("ns-%d", i%3),
				Name:      fmt.Sprintf("obj-%d", i%*objects),
			}}
			c.queue.Add(item{req, "event"})
			if *spawnEvery > 0 && (i+1)%*spawnEvery == 0 {
				go func() { _ = exec.Command("/bin/true").Run() }()
			}
			if *threadChurnEvery > 0 && (i+1)%*threadChurnEvery == 0 {
				// A goroutine that exits while locked to its thread takes the thread with it.
				go func() { runtime.LockOSThread() }()
			}
		}
		c.queue.ProducerDone()
	}()

	<-c.queue.idle
	gt.Finish()
	if *thenExec {
		self, _ := os.Executable()
		err := syscall.Exec(self, []string{os.Args[0], "-calls", "1", "-linger"}, os.Environ())
		fmt.Fprintln(os.Stderr, "sample-operator: exec:", err)
		os.Exit(1)
	}
	if *linger {
		select {} // the signal goroutine exits on SIGINT/SIGTERM
	}
	os.Exit(0)
}
