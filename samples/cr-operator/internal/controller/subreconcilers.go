package controller

import (
	"context"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	cachev1alpha1 "example.com/cr-operator/api/v1alpha1"
)

// The two sub-reconcilers below have methods literally named Reconcile, with another signature
// (a *Memcached, not a ctrl.Request). They are steps of MemcachedReconciler.Reconcile, not
// reconciles: the ground truth has no record of their own.

// configMapSubReconciler keeps the owned ConfigMap <name>-config in line with spec.size, and
// makes the API errors spec.failWith asks for (conflict, notfound).
type configMapSubReconciler struct {
	client client.Client
	reader client.Reader
	scheme *runtime.Scheme
	event  eventer
}

func (s *configMapSubReconciler) Reconcile(ctx context.Context, m *cachev1alpha1.Memcached) (ctrl.Result, error) {
	name := m.Name + "-config"
	want := strconv.Itoa(int(m.Spec.Size))
	var cm corev1.ConfigMap
	err := s.client.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: name}, &cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: m.Namespace, Name: name},
			Data:       map[string]string{"size": want},
		}
		if err := controllerutil.SetControllerReference(m, &cm, s.scheme); err != nil {
			return ctrl.Result{}, err
		}
		if err := s.client.Create(ctx, &cm); err != nil && !apierrors.IsAlreadyExists(err) {
			return ctrl.Result{}, err
		}
		s.event(ctx, m, corev1.EventTypeNormal, "ConfigMapCreated", "Create", "created ConfigMap "+name)
	case err != nil:
		return ctrl.Result{}, err
	case cm.Data["size"] != want:
		patch := client.MergeFrom(cm.DeepCopy())
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data["size"] = want
		if err := s.client.Patch(ctx, &cm, patch); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	return ctrl.Result{}, apiError(ctx, s.client, s.reader, m.Spec.FailWith, m.Namespace, m.Name)
}

// statusSubReconciler writes status.configMap and status.observedGeneration (a merge patch: no
// conflicts of its own).
type statusSubReconciler struct {
	client client.Client
}

func (s *statusSubReconciler) Reconcile(ctx context.Context, m *cachev1alpha1.Memcached) (ctrl.Result, error) {
	if m.Status.ObservedGeneration == m.Generation && m.Status.ConfigMap == m.Name+"-config" {
		return ctrl.Result{}, nil
	}
	patch := client.MergeFrom(m.DeepCopy())
	m.Status.ObservedGeneration = m.Generation
	m.Status.ConfigMap = m.Name + "-config"
	return ctrl.Result{}, client.IgnoreNotFound(s.client.Status().Patch(ctx, m, patch))
}

func millis(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }
