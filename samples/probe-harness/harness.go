// Package harness is what the probe samples share: controller-runtime-like
// request and result types, a work queue with workers, a ground-truth writer
// (one JSON line per call, CLOCK_MONOTONIC entry and exit), and the flags and
// signals of samples/go-operator, so the tests drive every sample the same way:
//
//	OPERATOR [-workers 4] [-calls 200] [-objects 10] [-error-every E]
//	    [-requeue-after-every A] [-ground-truth FILE] [-wait-signal] [-linger]
//
// Under -wait-signal it prints "ready pid=<pid>" and starts on SIGUSR1;
// SIGINT/SIGTERM flush the ground truth and exit 0. The last line of the
// ground truth is {"done": true, "calls": N} once all calls are finished.
package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// NamespacedName, Request and Result have controller-runtime's layout, which
// is what the tracer's cr-request and cr-result decoders read from registers.
type NamespacedName struct{ Namespace, Name string }

type Request struct{ NamespacedName }

type Result struct {
	Requeue      bool
	RequeueAfter time.Duration
}

// ErrorInfo is a returned error as the ground truth records it.
type ErrorInfo struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// Step is one child call (a reconcile step) inside a call.
type Step struct {
	Name    string `json:"name"`
	EntryNS int64  `json:"entry_ns"`
	ExitNS  int64  `json:"exit_ns"`
	Depth   int    `json:"depth"`
}

// Call is one ground-truth line: one traced call.
type Call struct {
	Seq            int64      `json:"seq"`
	EntryNS        int64      `json:"entry_ns"`
	ExitNS         int64      `json:"exit_ns"`
	Goroutine      int64      `json:"goroutine"`
	Namespace      string     `json:"namespace"`
	Name           string     `json:"name"`
	Key            string     `json:"key,omitempty"`
	Requeue        bool       `json:"requeue"`
	RequeueAfterNS int64      `json:"requeue_after_ns"`
	LastIntervalNS int64      `json:"last_interval_ns,omitempty"`
	Error          *ErrorInfo `json:"error"`
	Panic          *string    `json:"panic"`
	Steps          []Step     `json:"steps,omitempty"`

	depth int
}

// StepIn records a step's entry; call the returned func (deferred) at its exit.
func (c *Call) StepIn(name string) func() {
	if c == nil {
		return func() {}
	}
	c.depth++
	c.Steps = append(c.Steps, Step{Name: name, EntryNS: MonotonicNS(), Depth: c.depth})
	i := len(c.Steps) - 1
	return func() {
		c.Steps[i].ExitNS = MonotonicNS()
		c.depth--
	}
}

// SetError records err (nil: none).
func (c *Call) SetError(err error) {
	if err != nil {
		c.Error = &ErrorInfo{Type: fmt.Sprintf("%T", err), Message: err.Error()}
	}
}

// MonotonicNS reads CLOCK_MONOTONIC with a raw system call, comparable with
// what the tracer reads in another process.
func MonotonicNS() int64 {
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Sec*1e9 + ts.Nsec
}

// GoroutineID parses "goroutine 18 [running]:" from runtime.Stack.
func GoroutineID() int64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = b[len("goroutine "):]
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	id, _ := strconv.ParseInt(string(b[:i]), 10, 64)
	return id
}

// Truth writes the ground truth, one JSON line per call.
type Truth struct {
	mu     sync.Mutex
	f      *os.File
	w      *bufio.Writer
	calls  int64
	closed bool
}

func (t *Truth) Write(c *Call) {
	if t == nil {
		return
	}
	line, _ := json.Marshal(c)
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.w.Write(line)
		t.w.WriteByte('\n')
		t.calls++
	}
}

func (t *Truth) finish(last string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	if !t.closed {
		fmt.Fprintf(t.w, last, t.calls)
		t.closed = true
	}
	t.w.Flush()
	t.mu.Unlock()
}

// Options are the flags every probe sample takes.
type Options struct {
	Workers, Calls, Objects, ErrorEvery, RequeueAfterEvery int
	Truth                                                  *Truth
	linger                                                 bool
}

// Every says whether call seq (1-based) is one of every n-th.
func Every(seq int64, n int) bool { return n > 0 && seq%int64(n) == 0 }

// Start parses the flags, installs the signal handling and, under
// -wait-signal, waits for SIGUSR1.
func Start() *Options {
	o := &Options{}
	flag.IntVar(&o.Workers, "workers", 4, "worker goroutines")
	flag.IntVar(&o.Calls, "calls", 200, "calls in all")
	flag.IntVar(&o.Objects, "objects", 10, "distinct objects")
	flag.IntVar(&o.ErrorEvery, "error-every", 7, "every E-th call fails")
	flag.IntVar(&o.RequeueAfterEvery, "requeue-after-every", 5, "every A-th call asks to run again after 1-5 ms")
	gt := flag.String("ground-truth", "", "write one JSON line per call to FILE")
	wait := flag.Bool("wait-signal", false, "print 'ready pid=<pid>' and wait for SIGUSR1")
	flag.BoolVar(&o.linger, "linger", false, "stay idle after the work until SIGINT/SIGTERM")
	flag.Parse()
	if *gt != "" {
		f, err := os.Create(*gt)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		o.Truth = &Truth{f: f, w: bufio.NewWriterSize(f, 64<<10)}
	}
	start := make(chan struct{})
	var once sync.Once
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		for s := range sigs {
			if s == syscall.SIGUSR1 {
				once.Do(func() { close(start) })
				continue
			}
			o.Truth.finish("{\"interrupted\": true, \"calls\": %d}\n")
			os.Exit(0)
		}
	}()
	if *wait {
		fmt.Printf("ready pid=%d\n", os.Getpid())
		<-start
	}
	return o
}

// Finish writes the done line, then lingers if asked.
func (o *Options) Finish() {
	o.Truth.finish("{\"done\": true, \"calls\": %d}\n")
	if o.linger {
		select {}
	}
}

// RequestFor is the i-th request: ns-<i%3>/obj-<i%objects>.
func (o *Options) RequestFor(i int) Request {
	return Request{NamespacedName{Namespace: fmt.Sprintf("ns-%d", i%3), Name: fmt.Sprintf("obj-%d", i%o.Objects)}}
}

// RunWorkers feeds -calls requests to -workers goroutines, each calling do,
// and returns when every call is finished.
func (o *Options) RunWorkers(do func(context.Context, Request)) {
	queue := make(chan Request)
	var wg sync.WaitGroup
	for w := 0; w < o.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for req := range queue {
				do(ctx, req)
			}
		}()
	}
	for i := 0; i < o.Calls; i++ {
		queue <- o.RequestFor(i)
	}
	close(queue)
	wg.Wait()
}

// Busy spins for us microseconds, so calls and steps take measurable time.
func Busy(us int) {
	deadline := time.Now().Add(time.Duration(us) * time.Microsecond)
	for time.Now().Before(deadline) {
	}
}
