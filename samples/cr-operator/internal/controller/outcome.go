package controller

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// eventer records a Kubernetes event (events.k8s.io/v1 on v0.23+, core/v1 on v0.18).
type eventer func(ctx context.Context, obj runtime.Object, eventType, reason, action, note string)

// outcome is what a reconcile is told to return: by a Memcached's spec, or by a labeled
// ConfigMap's data (keys requeue, requeueAfterMillis, priority, failWith).
type outcome struct {
	Requeue      bool
	RequeueAfter time.Duration
	Priority     *int32
	FailWith     string
}

// Error kinds (spec.failWith / data.failWith).
const (
	FailConflict = "conflict" // a real 409 from the API server (*errors.StatusError)
	FailNotFound = "notfound" // a real 404 from the API server (*errors.StatusError)
	FailPlain    = "plain"    // errors.New (*errors.errorString)
	FailWrapped  = "wrapped"  // fmt.Errorf with %w (*fmt.wrapError)
	FailAgent    = "agent"    // *controller.agentError
)

func outcomeFromData(data map[string]string) outcome {
	o := outcome{FailWith: data["failWith"]}
	o.Requeue, _ = strconv.ParseBool(data["requeue"])
	if ms, err := strconv.ParseInt(data["requeueAfterMillis"], 10, 64); err == nil {
		o.RequeueAfter = time.Duration(ms) * time.Millisecond
	}
	if p, err := strconv.ParseInt(data["priority"], 10, 32); err == nil {
		v := int32(p)
		o.Priority = &v
	}
	return o
}

func (o outcome) result() ctrl.Result {
	res := ctrl.Result{Requeue: o.Requeue, RequeueAfter: o.RequeueAfter}
	setPriority(&res, o.Priority)
	return res
}

// errBackendUnavailable is wrapped by the "wrapped" kind.
var errBackendUnavailable = errors.New("backend unavailable")

// agentError is an error type of the operator's own whose first string field (Agent) is not its
// Error() text. It is returned as a pointer.
type agentError struct {
	Agent  string
	Code   int
	Detail string
}

func (e *agentError) Error() string {
	return fmt.Sprintf("%s: status %d: %s", e.Agent, e.Code, e.Detail)
}

// localError returns the error of a kind made in the process (plain, wrapped, agent), else nil.
func localError(kind, what, namespace, name string) error {
	switch kind {
	case FailPlain:
		return errors.New(what + " " + namespace + "/" + name + ": size must be at most 5")
	case FailWrapped:
		return fmt.Errorf("reconcile %s %s/%s: %w", what, namespace, name, errBackendUnavailable)
	case FailAgent:
		return &agentError{Agent: "backup-agent", Code: 508,
			Detail: fmt.Sprintf("pbm config for %s is not synced", name)}
	}
	return nil
}

// apiError returns the error of a kind the API server makes (conflict, notfound), else nil.
// reader reads from the API server, not from the cache.
func apiError(ctx context.Context, c client.Client, reader client.Reader, kind, namespace, name string) error {
	switch kind {
	case FailConflict:
		return realConflict(ctx, c, reader, namespace, name+"-lock")
	case FailNotFound:
		var cm corev1.ConfigMap
		return reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name + "-missing"}, &cm)
	}
	return nil
}

// realConflict updates the ConfigMap lockName twice from the same read: the second update
// carries a stale resourceVersion and the API server refuses it with 409 Conflict. The lock
// ConfigMap has no owner and no watch label: its updates enqueue nothing.
func realConflict(ctx context.Context, c client.Client, reader client.Reader, namespace, lockName string) error {
	key := types.NamespacedName{Namespace: namespace, Name: lockName}
	var lock corev1.ConfigMap
	err := reader.Get(ctx, key, &lock)
	if apierrors.IsNotFound(err) {
		lock = corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: lockName},
			Data:       map[string]string{"writes": "0"},
		}
		if err := c.Create(ctx, &lock); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		err = reader.Get(ctx, key, &lock)
	}
	if err != nil {
		return err
	}
	if lock.Data == nil {
		lock.Data = map[string]string{}
	}
	stale := lock.DeepCopy()
	n, _ := strconv.Atoi(lock.Data["writes"])
	lock.Data["writes"] = strconv.Itoa(n + 1)
	if err := c.Update(ctx, &lock); err != nil {
		return err
	}
	stale.Data["writes"] = "stale"
	return c.Update(ctx, stale) // 409: the object has been modified
}
