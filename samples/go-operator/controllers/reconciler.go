// Package controllers holds a reconciler shaped like a controller-runtime one,
// used as a tracing target. Only the standard library is used.
//
// The traced symbol is
//
//	example.com/sample-operator/controllers.(*SampleReconciler).Reconcile
//
// With the Go register ABI (amd64) its arguments arrive in RAX (receiver),
// RBX/RCX (ctx itab/data), RDI/RSI (namespace ptr/len), R8/R9 (name ptr/len)
// and it returns AL (Requeue), RBX (RequeueAfter), RCX/RDI (error itab/data).
// Do not change the signature.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// NamespacedName identifies an object, like k8s.io/apimachinery/pkg/types.
type NamespacedName struct{ Namespace, Name string }

// Request is what a reconciler is asked to reconcile, like reconcile.Request.
type Request struct{ NamespacedName }

// Result tells the controller whether to requeue, like reconcile.Result.
type Result struct {
	Requeue      bool
	RequeueAfter time.Duration
}

// Reconciler is the interface the worker calls through, like reconcile.Reconciler.
type Reconciler interface {
	Reconcile(context.Context, Request) (Result, error)
}

// RetryableError is a custom error type; its first field is Msg and Error() returns Msg.
type RetryableError struct {
	Msg  string
	Code int
}

func (e *RetryableError) Error() string { return e.Msg }

// ErrConflict is what the fmt.Errorf("...: %w") errors wrap.
var ErrConflict = errors.New("object has been modified")

// SampleReconciler reconciles nothing in particular; its knobs decide, from the
// global call number seq (1-based), what a call does. Priority when several
// knobs match the same call: panic > error > requeue-after > requeue.
// Recursion is independent and happens before any of those.
type SampleReconciler struct {
	ErrorEvery        int // every E-th call returns an error (types cycle)
	RequeueEvery      int // every Q-th call returns Result{Requeue: true}
	RequeueAfterEvery int // every A-th call returns Result{RequeueAfter: 1..5 ms}
	RecurseEvery      int // every D-th call recurses through a big-frame helper
	RecurseKB         int // stack used by that recursion, in KiB
	PanicEvery        int // every P-th call panics with a string
	WorkUS            int // busy work per call, microseconds

	GT *GroundTruth // nil: no ground truth written

	seq int64 // global call counter (atomic)
}

type causeKey struct{}

// WithCause returns a context recording why this reconcile happens.
func WithCause(ctx context.Context, cause string) context.Context {
	return context.WithValue(ctx, causeKey{}, cause)
}

// CauseFrom returns the cause stored by WithCause ("" if none).
func CauseFrom(ctx context.Context) string {
	s, _ := ctx.Value(causeKey{}).(string)
	return s
}

// MonotonicNS reads CLOCK_MONOTONIC with a raw clock_gettime system call, so
// the value is comparable with what a debugger or another process reads.
func MonotonicNS() int64 {
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1 /* CLOCK_MONOTONIC */, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Sec*1e9 + ts.Nsec
}

// Reconcile is the traced function. It is not recursive; see burnStack.
//
//go:noinline
func (r *SampleReconciler) Reconcile(ctx context.Context, req Request) (res Result, err error) {
	entry := MonotonicNS() // first statement: the "print at entry"
	tid := syscall.Gettid()
	seq := atomic.AddInt64(&r.seq, 1)
	var panicMsg *string
	var depth int
	var moved bool
	defer func() {
		exit := MonotonicNS() // the "print at exit": runs on every return and while panicking
		if r.GT != nil {
			r.GT.record(ctx, req, seq, entry, exit, tid, res, err, panicMsg, depth, moved)
		}
	}()

	if every(seq, r.RecurseEvery) {
		depth, moved = r.recurse(seq)
	}
	busyWork(r.WorkUS)

	switch {
	case every(seq, r.PanicEvery):
		msg := fmt.Sprintf("sample panic reconciling %s/%s (call %d)", req.Namespace, req.Name, seq)
		panicMsg = &msg
		panic(msg)
	case every(seq, r.ErrorEvery):
		return Result{}, makeError(req, seq, seq/int64(r.ErrorEvery))
	case every(seq, r.RequeueAfterEvery):
		return Result{RequeueAfter: time.Duration(1+seq%5) * time.Millisecond}, nil
	case every(seq, r.RequeueEvery):
		return Result{Requeue: true}, nil
	}
	return Result{}, nil
}

func every(seq int64, n int) bool { return n > 0 && seq%int64(n) == 0 }

// makeError cycles through *errors.errorString, *fmt.wrapError and *RetryableError.
func makeError(req Request, seq, k int64) error {
	switch k % 3 {
	case 0:
		return errors.New(fmt.Sprintf("failed to reconcile %s/%s (call %d)", req.Namespace, req.Name, seq))
	case 1:
		return fmt.Errorf("update status of %s/%s (call %d): %w", req.Namespace, req.Name, seq, ErrConflict)
	default:
		return &RetryableError{
			Msg:  fmt.Sprintf("retryable: backend busy for %s/%s (call %d)", req.Namespace, req.Name, seq),
			Code: 500 + int(seq%4),
		}
	}
}

func busyWork(us int) {
	if us <= 0 {
		return
	}
	deadline := time.Now().Add(time.Duration(us) * time.Microsecond)
	for time.Now().Before(deadline) {
	}
}

const frameBytes = 8 << 10

// recurse uses RecurseKB KiB of goroutine stack through burnStack, which
// forces the runtime to grow (copy) the stack unless it is already big
// enough. moved reports whether this goroutine's stack was relocated.
func (r *SampleReconciler) recurse(seq int64) (depth int, moved bool) {
	kb := r.RecurseKB
	if kb <= 0 {
		kb = 160
	}
	depth = (kb*1024 + frameBytes - 1) / frameBytes
	before := stackMarker()
	sink.Add(burnStack(depth, seq))
	return depth, stackMarker() != before
}

var sink atomic.Int64

// burnStack is the recursive helper: each level has an 8 KiB frame.
//
//go:noinline
func burnStack(n int, seed int64) int64 {
	var frame [frameBytes]byte
	i := int(seed+int64(n)) & (frameBytes - 1)
	frame[i] = byte(n)
	if n <= 1 {
		return int64(frame[i])
	}
	return burnStack(n-1, seed*31+1) + int64(frame[i^1])
}

// stackMarker returns the address of a local of a fresh frame; called twice
// from the same frame it differs only if the stack was copied in between.
//
//go:noinline
func stackMarker() uintptr {
	var b byte
	return uintptr(unsafe.Pointer(&b))
}
