// Command kube-arangodb inspects -objects deployments, -calls inspections in
// all (flags: see example.com/probe-harness; -calls is rounded down to a
// multiple of -objects).
package main

import (
	"fmt"

	"example.com/probe-harness"
	"github.com/arangodb/kube-arangodb/pkg/deployment"
)

func main() {
	o := harness.Start()
	var ds []*deployment.Deployment
	for i := 0; i < o.Objects; i++ {
		ds = append(ds, &deployment.Deployment{Namespace: fmt.Sprintf("ns-%d", i%3),
			Name: fmt.Sprintf("arango-%d", i), ErrorEvery: o.ErrorEvery, Truth: o.Truth})
	}
	deployment.Run(ds, o.Calls)
	o.Finish()
}
