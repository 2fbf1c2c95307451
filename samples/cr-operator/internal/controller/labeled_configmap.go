package controller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// WatchLabel marks the ConfigMaps the labeled-configmap controller reconciles (value "true").
const WatchLabel = "cache.example.com/watch"

// NewLabeledConfigMapReconciler returns the labeled-configmap reconciler as a reconcile.Func:
// a closure (its symbol is NewLabeledConfigMapReconciler.func1). It returns what the
// ConfigMap's data asks for (keys requeue, requeueAfterMillis, priority, failWith).
func NewLabeledConfigMapReconciler(c client.Client, reader client.Reader, truth *GroundTruth) reconcile.Func {
	return func(ctx context.Context, req reconcile.Request) (res reconcile.Result, err error) {
		call := truth.Begin(LabeledConfigMapController, req)
		defer func() { call.End(res, err) }()

		var cm corev1.ConfigMap
		if err := c.Get(ctx, req.NamespacedName, &cm); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
		o := outcomeFromData(cm.Data)
		if err := apiError(ctx, c, reader, o.FailWith, cm.Namespace, cm.Name); err != nil {
			return reconcile.Result{}, err
		}
		return o.result(), localError(o.FailWith, "configmap", cm.Namespace, cm.Name)
	}
}

// SetupLabeledConfigMaps registers the labeled-configmap controller: For ConfigMaps labeled
// WatchLabel=true.
func SetupLabeledConfigMaps(mgr ctrl.Manager, truth *GroundTruth, workers int) error {
	labeled := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetLabels()[WatchLabel] == "true"
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named(LabeledConfigMapController).
		For(&corev1.ConfigMap{}, builder.WithPredicates(labeled)).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Complete(NewLabeledConfigMapReconciler(mgr.GetClient(), mgr.GetAPIReader(), truth))
}
