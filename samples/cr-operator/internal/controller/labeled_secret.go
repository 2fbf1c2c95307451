package controller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// LabeledSecretController reconciles Secrets labeled WatchLabel=true.
const LabeledSecretController = "labeled-secret"

// SecretReconciler is an ObjectReconciler: controller-runtime fetches the object and calls
// Reconcile(ctx, *corev1.Secret) through reconcile.AsReconciler (a Secret that is gone is
// never passed). It returns what the Secret's annotations ask for (keys requeue,
// requeueAfterMillis, priority, failWith).
type SecretReconciler struct {
	client client.Client
	reader client.Reader
	truth  *GroundTruth
}

// Reconcile is the traced function: (*SecretReconciler).Reconcile.
func (r *SecretReconciler) Reconcile(ctx context.Context, s *corev1.Secret) (res reconcile.Result, err error) {
	call := r.truth.Begin(LabeledSecretController, ctrl.Request{
		NamespacedName: types.NamespacedName{Namespace: s.Namespace, Name: s.Name}})
	defer func() { call.End(res, err) }()

	o := outcomeFromData(s.Annotations)
	if err := apiError(ctx, r.client, r.reader, o.FailWith, s.Namespace, s.Name); err != nil {
		return reconcile.Result{}, err
	}
	return o.result(), localError(o.FailWith, "secret", s.Namespace, s.Name)
}

// SetupLabeledSecrets registers the labeled-secret controller: For Secrets labeled
// WatchLabel=true, its reconciler an ObjectReconciler.
func SetupLabeledSecrets(mgr ctrl.Manager, truth *GroundTruth, workers int) error {
	labeled := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetLabels()[WatchLabel] == "true"
	})
	rec := &SecretReconciler{client: mgr.GetClient(), reader: mgr.GetAPIReader(), truth: truth}
	return ctrl.NewControllerManagedBy(mgr).
		Named(LabeledSecretController).
		For(&corev1.Secret{}, builder.WithPredicates(labeled)).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Complete(reconcile.AsReconciler[*corev1.Secret](mgr.GetClient(), rec))
}
