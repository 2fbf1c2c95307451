package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MemcachedSpec defines the desired state of Memcached. Besides Size, its fields choose what
// the reconciler returns, so that a test can check the recorded result and error.
type MemcachedSpec struct {
	// Size is written into the owned ConfigMap (<name>-config), key "size".
	Size int32 `json:"size,omitempty"`
	// Requeue: the reconciler returns Result{Requeue: true}.
	Requeue bool `json:"requeue,omitempty"`
	// RequeueAfterMillis > 0: the reconciler returns Result{RequeueAfter: N ms}.
	RequeueAfterMillis int64 `json:"requeueAfterMillis,omitempty"`
	// Priority: Result.Priority (controller-runtime v0.23+ builds only; ignored by the v0.18 build).
	Priority *int32 `json:"priority,omitempty"`
	// FailWith: the reconciler returns an error of this kind: conflict (a real 409 from the API
	// server), notfound (a real 404), plain (errors.New), wrapped (fmt.Errorf %w), agent (a
	// custom *agentError). Empty: no error.
	FailWith string `json:"failWith,omitempty"`
}

// MemcachedStatus defines the observed state of Memcached.
type MemcachedStatus struct {
	// ConfigMap is the name of the owned ConfigMap.
	ConfigMap string `json:"configMap,omitempty"`
	// ObservedGeneration is the last generation the reconciler saw.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status

// Memcached is the Schema for the memcacheds API.
type Memcached struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MemcachedSpec   `json:"spec,omitempty"`
	Status MemcachedStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// MemcachedList contains a list of Memcached.
type MemcachedList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Memcached `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Memcached{}, &MemcachedList{})
}
