package controller

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	ctrl "sigs.k8s.io/controller-runtime"
)

// ErrorInfo describes a returned error in the ground truth.
type ErrorInfo struct {
	Type    string `json:"type"`    // fmt.Sprintf("%T", err)
	Message string `json:"message"` // err.Error()
}

// Record is one ground-truth line: one call of a reconcile function (not of a sub-reconciler).
type Record struct {
	Controller     string     `json:"controller"`
	Function       string     `json:"function"` // the traced function's symbol, as runtime.FuncForPC names it
	EntryNS        int64      `json:"entry_ns"` // CLOCK_MONOTONIC
	ExitNS         int64      `json:"exit_ns"`
	Goroutine      int64      `json:"goroutine"`
	Namespace      string     `json:"namespace"`
	Name           string     `json:"name"`
	Requeue        bool       `json:"requeue"`
	RequeueAfterNS int64      `json:"requeue_after_ns"`
	Priority       *int       `json:"priority"` // null: not set, or a build whose Result has no Priority
	Error          *ErrorInfo `json:"error"`
}

// GroundTruth writes JSON Lines through one mutex and a buffered writer, flushed at least every
// 50 ms while there is something to flush, on SIGINT/SIGTERM (Interrupt) and at the end (Close).
type GroundTruth struct {
	mu     sync.Mutex
	f      *os.File
	w      *bufio.Writer
	dirty  bool
	calls  int64
	closed bool
	stop   chan struct{}
}

// OpenGroundTruth creates (truncates) path and writes a header line:
// {"header": true, "pid": ..., "go": ..., "modules": {path: version}, "result_fields": [...]}.
func OpenGroundTruth(path string, workers int) (*GroundTruth, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	g := &GroundTruth{f: f, w: bufio.NewWriterSize(f, 64<<10), stop: make(chan struct{})}
	header := map[string]any{
		"header":        true,
		"pid":           os.Getpid(),
		"go":            runtime.Version(),
		"modules":       moduleVersions(),
		"result_fields": resultFields,
		"workers":       workers,
	}
	line, _ := json.Marshal(header)
	g.w.Write(line)
	g.w.WriteByte('\n')
	g.w.Flush()
	go g.flusher()
	return g, nil
}

func (g *GroundTruth) flusher() {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
			g.mu.Lock()
			if g.dirty && !g.closed {
				g.w.Flush()
				g.dirty = false
			}
			g.mu.Unlock()
		}
	}
}

// Call is one reconcile in progress.
type Call struct {
	g   *GroundTruth
	rec Record
}

// Begin is called first thing in a reconcile function: it reads the clock before anything else.
// Function is the caller's name as the runtime's symbol table has it.
func (g *GroundTruth) Begin(controller string, req ctrl.Request) *Call {
	entry := monotonicNS()
	if g == nil {
		return nil
	}
	c := &Call{g: g, rec: Record{
		Controller: controller, EntryNS: entry, Goroutine: goroutineID(),
		Namespace: req.Namespace, Name: req.Name,
	}}
	if pc, _, _, ok := runtime.Caller(1); ok {
		if fn := runtime.FuncForPC(pc); fn != nil {
			c.rec.Function = fn.Name()
		}
	}
	return c
}

// End is called in the reconcile function's deferred closure with its named results.
func (c *Call) End(res ctrl.Result, err error) {
	exit := monotonicNS()
	if c == nil {
		return
	}
	c.rec.ExitNS = exit
	c.rec.Requeue = res.Requeue
	c.rec.RequeueAfterNS = int64(res.RequeueAfter)
	c.rec.Priority = resultPriority(res)
	if err != nil {
		c.rec.Error = &ErrorInfo{Type: fmt.Sprintf("%T", err), Message: err.Error()}
	}
	line, _ := json.Marshal(&c.rec)
	g := c.g
	g.mu.Lock()
	if !g.closed {
		g.w.Write(line)
		g.w.WriteByte('\n')
		g.calls++
		g.dirty = true
	}
	g.mu.Unlock()
}

// Flush writes out what is buffered (on the first SIGINT/SIGTERM, before the manager stops).
func (g *GroundTruth) Flush() {
	if g == nil {
		return
	}
	g.mu.Lock()
	if !g.closed {
		g.w.Flush()
		g.dirty = false
	}
	g.mu.Unlock()
}

// Close appends {"end": true, "signal": "..." (or null), "calls": N} and flushes; records after
// it are dropped.
func (g *GroundTruth) Close(sig os.Signal) int64 {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		s := "null"
		if sig != nil {
			s = strconv.Quote(sig.String())
		}
		fmt.Fprintf(g.w, "{\"end\": true, \"signal\": %s, \"calls\": %d}\n", s, g.calls)
		g.closed = true
		close(g.stop)
		g.w.Flush()
		g.f.Sync()
	}
	return g.calls
}

func monotonicNS() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return -1
	}
	return ts.Nano()
}

// goroutineID parses "goroutine 18 [running]:" from runtime.Stack.
func goroutineID() int64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	const prefix = "goroutine "
	if len(b) < len(prefix) {
		return -1
	}
	b = b[len(prefix):]
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	id, err := strconv.ParseInt(string(b[:i]), 10, 64)
	if err != nil {
		return -1
	}
	return id
}

// moduleVersions: the versions of the Kubernetes libraries this binary was built with.
func moduleVersions() map[string]string {
	out := map[string]string{}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return out
	}
	for _, dep := range info.Deps {
		switch dep.Path {
		case "sigs.k8s.io/controller-runtime", "k8s.io/client-go", "k8s.io/apimachinery", "k8s.io/api":
			out[dep.Path] = dep.Version
		}
	}
	return out
}
