"""Scale-out: bake matrices on Ray (matrix) and Kubernetes manifests (k8s)."""
