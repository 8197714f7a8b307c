//go:build tools

// Package tools keeps the Kubernetes main packages that the test-cluster
// harness builds in this module's dependency graph, so `go mod tidy` keeps
// go.mod and go.sum complete for them. It is never compiled.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	// Built only for a cluster with a real node (`testcluster up --real-node`).
	_ "k8s.io/kubernetes/cmd/kubelet"
)
