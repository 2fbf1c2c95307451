// Command postgres-operator runs the PerconaPGCluster reconciler of this
// sample on a work queue (flags: see example.com/probe-harness).
package main

import (
	"context"

	"example.com/probe-harness"
	"github.com/percona/percona-postgresql-operator/percona/controller/pgcluster"
)

type reconciler interface {
	Reconcile(context.Context, harness.Request) (harness.Result, error)
}

func main() {
	o := harness.Start()
	var r reconciler = &pgcluster.PGClusterReconciler{
		ErrorEvery: o.ErrorEvery, RequeueAfterEvery: o.RequeueAfterEvery, Truth: o.Truth}
	o.RunWorkers(func(ctx context.Context, req harness.Request) { r.Reconcile(ctx, req) })
	o.Finish()
}
