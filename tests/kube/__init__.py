"""A real kube-apiserver (with etcd) and kubelet-shaped pods for `tracer attach POD` tests."""
