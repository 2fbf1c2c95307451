"""The one-node cluster of scripts/cluster: etcd, kube-apiserver, containerd, kubelet.

  files.py     atomic writes, the cluster directory's layout
  pki.py       the CA, serving and client certificates, kubeconfigs
  procs.py     start a daemon with its PID recorded, stop it by that PID
  api.py       a few API server requests (stdlib urllib, client certificate)
  node.py      `up` and `down`
  operator.py  `run-operator`: image, import, Pod, wait until Running
"""
