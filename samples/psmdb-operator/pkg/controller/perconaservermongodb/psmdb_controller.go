// Package perconaservermongodb has the shape of Percona Server for MongoDB's
// controller for the tracer's percona-server-mongodb probe: the reconciler
// type, its package path and its reconcile* steps (one nested in another) are
// the real ones; the bodies only spend time and record ground truth.
package perconaservermongodb

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"example.com/probe-harness"
)

// PerconaServerMongoDB stands for the custom resource (api/v1 in the real operator).
type PerconaServerMongoDB struct {
	Namespace, Name string
	Replsets        []string
	seq             int64
	call            *harness.Call
}

// ReconcilePerconaServerMongoDB reconciles a PerconaServerMongoDB object.
type ReconcilePerconaServerMongoDB struct {
	ErrorEvery, RequeueAfterEvery int
	Truth                         *harness.Truth
	seq                           int64
}

var errUsers = errors.New("users secret not found")

// Reconcile has controller-runtime's signature.
//
//go:noinline
func (r *ReconcilePerconaServerMongoDB) Reconcile(ctx context.Context, request harness.Request) (res harness.Result, err error) {
	call := &harness.Call{EntryNS: harness.MonotonicNS(), Goroutine: harness.GoroutineID(),
		Namespace: request.Namespace, Name: request.Name}
	call.Seq = atomic.AddInt64(&r.seq, 1)
	defer func() {
		call.ExitNS = harness.MonotonicNS()
		call.Requeue, call.RequeueAfterNS = res.Requeue, int64(res.RequeueAfter)
		call.SetError(err)
		r.Truth.Write(call)
	}()
	cr := &PerconaServerMongoDB{Namespace: request.Namespace, Name: request.Name,
		Replsets: []string{"rs0", "rs1"}, seq: call.Seq, call: call}
	if err := r.reconcileSSL(ctx, cr); err != nil {
		return harness.Result{}, fmt.Errorf("reconcile SSL: %w", err)
	}
	if err := r.reconcileUsers(ctx, cr); err != nil {
		return harness.Result{}, fmt.Errorf("reconcile users: %w", err)
	}
	if err := r.reconcileMongodConfigMaps(ctx, cr); err != nil {
		return harness.Result{}, err
	}
	if err := r.reconcileReplsets(ctx, cr); err != nil {
		return harness.Result{}, err
	}
	if err := r.reconcileBackupTasks(ctx, cr); err != nil {
		return harness.Result{}, err
	}
	if harness.Every(call.Seq, r.RequeueAfterEvery) {
		return harness.Result{RequeueAfter: time.Duration(1+call.Seq%5) * time.Millisecond}, nil
	}
	return harness.Result{}, nil
}

//go:noinline
func (r *ReconcilePerconaServerMongoDB) reconcileSSL(ctx context.Context, cr *PerconaServerMongoDB) error {
	defer cr.call.StepIn("reconcileSSL")()
	harness.Busy(50)
	return nil
}

//go:noinline
func (r *ReconcilePerconaServerMongoDB) reconcileUsers(ctx context.Context, cr *PerconaServerMongoDB) error {
	defer cr.call.StepIn("reconcileUsers")()
	harness.Busy(100)
	if harness.Every(cr.seq, r.ErrorEvery) {
		return errUsers
	}
	return nil
}

//go:noinline
func (r *ReconcilePerconaServerMongoDB) reconcileMongodConfigMaps(ctx context.Context, cr *PerconaServerMongoDB) error {
	defer cr.call.StepIn("reconcileMongodConfigMaps")()
	harness.Busy(30)
	return nil
}

// reconcileReplsets calls a step per replset: steps nested in a step.
//
//go:noinline
func (r *ReconcilePerconaServerMongoDB) reconcileReplsets(ctx context.Context, cr *PerconaServerMongoDB) error {
	defer cr.call.StepIn("reconcileReplsets")()
	for _, rs := range cr.Replsets {
		if err := r.reconcileStatefulSet(ctx, cr, rs); err != nil {
			return err
		}
	}
	return nil
}

//go:noinline
func (r *ReconcilePerconaServerMongoDB) reconcileStatefulSet(ctx context.Context, cr *PerconaServerMongoDB, rs string) error {
	defer cr.call.StepIn("reconcileStatefulSet")()
	harness.Busy(80)
	return nil
}

//go:noinline
func (r *ReconcilePerconaServerMongoDB) reconcileBackupTasks(ctx context.Context, cr *PerconaServerMongoDB) error {
	defer cr.call.StepIn("reconcileBackupTasks")()
	harness.Busy(20)
	return nil
}
