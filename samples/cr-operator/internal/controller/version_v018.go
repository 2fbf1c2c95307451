//go:build crv018

package controller

import (
	"context"

	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
)

// This file is built against controller-runtime v0.18 (-tags crv018): reconcile.Result is
// {Requeue bool; RequeueAfter time.Duration}, events go through the core/v1 recorder.

var resultFields = []string{"Requeue", "RequeueAfter"}

func setPriority(*ctrl.Result, *int32) {}

func resultPriority(ctrl.Result) *int { return nil }

func newEventer(mgr ctrl.Manager, name string) eventer {
	rec := mgr.GetEventRecorderFor(name)
	return func(_ context.Context, obj runtime.Object, eventType, reason, _, note string) {
		rec.Event(obj, eventType, reason, note)
	}
}
