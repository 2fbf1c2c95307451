// Command sample-controller has the shape of client-go's workqueue
// controllers (k8s.io/sample-controller): workers take "namespace/name" keys
// off a queue and call (*Controller).syncHandler(ctx, key) error. The bodies
// only spend time and record ground truth (flags: see example.com/probe-harness).
package main

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"

	"example.com/probe-harness"
)

// Controller is the sample controller for Foo resources.
type Controller struct {
	errorEvery int
	truth      *harness.Truth
	seq        int64
}

// processNextWorkItem takes one key off the queue, as client-go's do.
func (c *Controller) processNextWorkItem(ctx context.Context, key string) {
	if err := c.syncHandler(ctx, key); err != nil {
		_ = err // the real one re-queues it with rate limiting
	}
}

// syncHandler compares the actual state with the desired one for the object
// named by key.
//
//go:noinline
func (c *Controller) syncHandler(ctx context.Context, key string) (err error) {
	call := &harness.Call{EntryNS: harness.MonotonicNS(), Goroutine: harness.GoroutineID(), Key: key}
	call.Seq = atomic.AddInt64(&c.seq, 1)
	defer func() {
		call.ExitNS = harness.MonotonicNS()
		call.SetError(err)
		c.truth.Write(call)
	}()
	namespace, name, _ := strings.Cut(key, "/")
	call.Namespace, call.Name = namespace, name
	harness.Busy(100)
	if harness.Every(call.Seq, c.errorEvery) {
		return fmt.Errorf("foo %q: deployment is not controlled by it", key)
	}
	return nil
}

func main() {
	o := harness.Start()
	c := &Controller{errorEvery: o.ErrorEvery, truth: o.Truth}
	o.RunWorkers(func(ctx context.Context, req harness.Request) {
		c.processNextWorkItem(ctx, req.Namespace+"/"+req.Name)
	})
	o.Finish()
}
