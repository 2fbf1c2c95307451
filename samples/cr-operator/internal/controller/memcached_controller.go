package controller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"

	cachev1alpha1 "example.com/cr-operator/api/v1alpha1"
)

// Controller names (the ground truth's "controller").
const (
	MemcachedController        = "memcached"
	LabeledConfigMapController = "labeled-configmap"
)

// MemcachedReconciler reconciles a Memcached object: its owned ConfigMap (<name>-config) and its
// status, through two sub-reconcilers, then returns what the spec asks for.
type MemcachedReconciler struct {
	client.Client
	Reader     client.Reader // the API server, not the cache
	Scheme     *runtime.Scheme
	Truth      *GroundTruth
	configMaps *configMapSubReconciler
	status     *statusSubReconciler
}

// +kubebuilder:rbac:groups=cache.example.com,resources=memcacheds,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=cache.example.com,resources=memcacheds/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=core,resources=configmaps,verbs=get;list;watch;create;update;patch;delete

// Reconcile is the reconcile function of the memcached controller. Its ground-truth record is
// taken here: the entry time first thing, the exit in the deferred closure.
func (r *MemcachedReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	call := r.Truth.Begin(MemcachedController, req)
	defer func() { call.End(res, err) }()

	var m cachev1alpha1.Memcached
	if err := r.Get(ctx, req.NamespacedName, &m); err != nil {
		// Deleted: nothing to do (its ConfigMap has an owner reference).
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if res, err := r.configMaps.Reconcile(ctx, &m); err != nil || !res.IsZero() {
		return res, err
	}
	if res, err := r.status.Reconcile(ctx, &m); err != nil || !res.IsZero() {
		return res, err
	}
	o := outcome{
		Requeue:      m.Spec.Requeue,
		RequeueAfter: millis(m.Spec.RequeueAfterMillis),
		Priority:     m.Spec.Priority,
		FailWith:     m.Spec.FailWith,
	}
	return o.result(), localError(o.FailWith, "memcached", m.Namespace, m.Name)
}

// SetupMemcached registers the memcached controller: For Memcached, Owns ConfigMap.
func SetupMemcached(mgr ctrl.Manager, truth *GroundTruth, workers int) error {
	r := &MemcachedReconciler{
		Client: mgr.GetClient(),
		Reader: mgr.GetAPIReader(),
		Scheme: mgr.GetScheme(),
		Truth:  truth,
	}
	r.configMaps = &configMapSubReconciler{
		client: r.Client, reader: r.Reader, scheme: r.Scheme,
		event: newEventer(mgr, MemcachedController),
	}
	r.status = &statusSubReconciler{client: r.Client}
	return ctrl.NewControllerManagedBy(mgr).
		Named(MemcachedController).
		For(&cachev1alpha1.Memcached{}).
		Owns(&corev1.ConfigMap{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Complete(r)
}
