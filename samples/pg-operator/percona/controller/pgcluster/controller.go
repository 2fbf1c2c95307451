// Package pgcluster has the shape of Percona Operator for PostgreSQL's
// PerconaPGCluster controller (percona/controller/pgcluster) for the tracer's
// percona-postgresql probe: the reconciler type, its package path and its
// reconcile* steps are the real ones; the bodies only spend time and record
// ground truth.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"example.com/probe-harness"
)

// PerconaPGCluster stands for the custom resource (pkg/apis/pgv2.percona.com/v2).
type PerconaPGCluster struct {
	Namespace, Name string
	seq             int64
	call            *harness.Call
}

// PGClusterReconciler reconciles PerconaPGCluster objects.
type PGClusterReconciler struct {
	ErrorEvery, RequeueAfterEvery int
	Truth                         *harness.Truth
	seq                           int64
}

var errTLS = errors.New("waiting for the TLS secret")

// Reconcile has controller-runtime's signature.
//
//go:noinline
func (r *PGClusterReconciler) Reconcile(ctx context.Context, request harness.Request) (res harness.Result, err error) {
	call := &harness.Call{EntryNS: harness.MonotonicNS(), Goroutine: harness.GoroutineID(),
		Namespace: request.Namespace, Name: request.Name}
	call.Seq = atomic.AddInt64(&r.seq, 1)
	defer func() {
		call.ExitNS = harness.MonotonicNS()
		call.Requeue, call.RequeueAfterNS = res.Requeue, int64(res.RequeueAfter)
		call.SetError(err)
		r.Truth.Write(call)
	}()
	cr := &PerconaPGCluster{Namespace: request.Namespace, Name: request.Name, seq: call.Seq, call: call}
	if err := r.reconcileTLS(ctx, cr); err != nil {
		return harness.Result{}, fmt.Errorf("reconcile TLS: %w", err)
	}
	if err := r.reconcileVersion(ctx, cr); err != nil {
		return harness.Result{}, err
	}
	if err := r.reconcileBackups(ctx, cr); err != nil {
		return harness.Result{}, err
	}
	if err := r.reconcilePMM(ctx, cr); err != nil {
		return harness.Result{}, err
	}
	if harness.Every(call.Seq, r.RequeueAfterEvery) {
		return harness.Result{RequeueAfter: time.Duration(1+call.Seq%5) * time.Millisecond}, nil
	}
	return harness.Result{}, nil
}

//go:noinline
func (r *PGClusterReconciler) reconcileTLS(ctx context.Context, cr *PerconaPGCluster) error {
	defer cr.call.StepIn("reconcileTLS")()
	harness.Busy(60)
	if harness.Every(cr.seq, r.ErrorEvery) {
		return errTLS
	}
	return nil
}

//go:noinline
func (r *PGClusterReconciler) reconcileVersion(ctx context.Context, cr *PerconaPGCluster) error {
	defer cr.call.StepIn("reconcileVersion")()
	harness.Busy(40)
	return nil
}

//go:noinline
func (r *PGClusterReconciler) reconcileBackups(ctx context.Context, cr *PerconaPGCluster) error {
	defer cr.call.StepIn("reconcileBackups")()
	harness.Busy(120)
	return nil
}

//go:noinline
func (r *PGClusterReconciler) reconcilePMM(ctx context.Context, cr *PerconaPGCluster) error {
	defer cr.call.StepIn("reconcilePMM")()
	harness.Busy(20)
	return nil
}
