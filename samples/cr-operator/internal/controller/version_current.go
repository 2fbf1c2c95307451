//go:build !crv018

package controller

import (
	"context"

	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
)

// This file is built against controller-runtime v0.23+ (reconcile.Result has Priority);
// version_v018.go is its counterpart for the v0.18 build (-tags crv018).

var resultFields = []string{"Requeue", "RequeueAfter", "Priority"}

func setPriority(res *ctrl.Result, p *int32) {
	if p != nil {
		v := int(*p)
		res.Priority = &v
	}
}

func resultPriority(res ctrl.Result) *int {
	if res.Priority == nil {
		return nil
	}
	v := *res.Priority
	return &v
}

// newEventer records events through the events.k8s.io/v1 API (GetEventRecorder, v0.23+).
func newEventer(mgr ctrl.Manager, name string) eventer {
	rec := mgr.GetEventRecorder(name)
	return func(_ context.Context, obj runtime.Object, eventType, reason, action, note string) {
		rec.Eventf(obj, nil, eventType, reason, action, "%s", note)
	}
}
