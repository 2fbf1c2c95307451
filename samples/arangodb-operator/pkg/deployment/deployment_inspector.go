// Package deployment has the shape of kube-arangodb's deployment inspector
// for the tracer's arangodb probe: each ArangoDeployment has a goroutine that
// calls (*Deployment).inspectDeployment in a loop and sleeps for the interval
// it returns. The bodies only spend time and record ground truth.
package deployment

import (
	"sync"
	"sync/atomic"
	"time"

	"example.com/probe-harness"
	"github.com/arangodb/kube-arangodb/pkg/util"
)

// Deployment is one ArangoDeployment being inspected.
type Deployment struct {
	Namespace, Name string
	ErrorEvery      int
	Truth           *harness.Truth
	seq             *int64
}

// inspectDeployment inspects the deployment and returns the delay until it
// should be called again (shorter after an error, longer when all is well).
//
//go:noinline
func (d *Deployment) inspectDeployment(lastInterval util.Interval) util.Interval {
	call := &harness.Call{EntryNS: harness.MonotonicNS(), Goroutine: harness.GoroutineID(),
		Namespace: d.Namespace, Name: d.Name, LastIntervalNS: int64(lastInterval)}
	call.Seq = atomic.AddInt64(d.seq, 1)
	next := lastInterval
	defer func() {
		call.ExitNS = harness.MonotonicNS()
		call.RequeueAfterNS = int64(next)
		d.Truth.Write(call)
	}()
	harness.Busy(150)
	if harness.Every(call.Seq, d.ErrorEvery) {
		next = util.Interval(time.Millisecond) // retry soon
	} else {
		next = util.Interval(time.Duration(2+call.Seq%4) * time.Millisecond)
	}
	return next
}

// Run inspects every deployment `calls` times in all, each in its own loop.
func Run(deployments []*Deployment, calls int) {
	var wg sync.WaitGroup
	var seq int64
	per := calls / len(deployments)
	for _, d := range deployments {
		d.seq = &seq
		wg.Add(1)
		go func(d *Deployment) {
			defer wg.Done()
			interval := util.Interval(time.Millisecond)
			for i := 0; i < per; i++ {
				interval = d.inspectDeployment(interval)
				time.Sleep(time.Duration(interval))
			}
		}(d)
	}
	wg.Wait()
}
