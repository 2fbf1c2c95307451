package controllers

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
)

// ErrorInfo describes a returned error in the ground truth.
type ErrorInfo struct {
	Type    string `json:"type"`    // fmt.Sprintf("%T", err)
	Message string `json:"message"` // err.Error()
}

// Record is one ground-truth line: one Reconcile call.
type Record struct {
	Seq            int64      `json:"seq"`
	EntryNS        int64      `json:"entry_ns"`
	ExitNS         int64      `json:"exit_ns"`
	Goroutine      int64      `json:"goroutine"`
	Thread         int        `json:"thread"`
	Namespace      string     `json:"namespace"`
	Name           string     `json:"name"`
	Requeue        bool       `json:"requeue"`
	RequeueAfterNS int64      `json:"requeue_after_ns"`
	Error          *ErrorInfo `json:"error"`
	Panic          *string    `json:"panic"`
	Cause          string     `json:"cause"`
	RecurseDepth   int        `json:"recurse_depth"` // burnStack frames used (0: no recursion)
	StackMoved     bool       `json:"stack_moved"`   // goroutine stack was copied during the call
}

// GroundTruth writes JSON Lines through one mutex and a buffered writer.
type GroundTruth struct {
	mu     sync.Mutex
	f      *os.File
	w      *bufio.Writer
	calls  int64
	closed bool
}

// OpenGroundTruth creates (truncates) path.
func OpenGroundTruth(path string) (*GroundTruth, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &GroundTruth{f: f, w: bufio.NewWriterSize(f, 64<<10)}, nil
}

func (g *GroundTruth) record(ctx context.Context, req Request, seq, entry, exit int64, tid int,
	res Result, err error, panicMsg *string, depth int, moved bool) {
	rec := Record{
		Seq: seq, EntryNS: entry, ExitNS: exit, Goroutine: goroutineID(), Thread: tid,
		Namespace: req.Namespace, Name: req.Name,
		Requeue: res.Requeue, RequeueAfterNS: int64(res.RequeueAfter),
		Panic: panicMsg, Cause: CauseFrom(ctx), RecurseDepth: depth, StackMoved: moved,
	}
	if err != nil {
		rec.Error = &ErrorInfo{Type: fmt.Sprintf("%T", err), Message: err.Error()}
	}
	line, _ := json.Marshal(&rec)
	g.mu.Lock()
	if !g.closed {
		g.w.Write(line)
		g.w.WriteByte('\n')
		g.calls++
	}
	g.mu.Unlock()
}

// Finish appends {"done": true, "calls": N} and flushes; later records are dropped.
func (g *GroundTruth) Finish() int64 {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		fmt.Fprintf(g.w, "{\"done\": true, \"calls\": %d}\n", g.calls)
		g.closed = true
	}
	g.w.Flush()
	return g.calls
}

// Interrupt flushes on SIGINT/SIGTERM. If the run had not finished it appends
// {"interrupted": true, "signal": "...", "calls": N} (N = records written).
// It leaves the mutex locked so nothing is written after it: call os.Exit next.
func (g *GroundTruth) Interrupt(sig os.Signal) {
	if g == nil {
		return
	}
	g.mu.Lock()
	if !g.closed {
		fmt.Fprintf(g.w, "{\"interrupted\": true, \"signal\": %q, \"calls\": %d}\n", sig.String(), g.calls)
		g.closed = true
	}
	g.w.Flush()
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
