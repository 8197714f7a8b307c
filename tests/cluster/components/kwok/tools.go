//go:build tools

// Package tools keeps kwok's main package in this module's dependency graph
// so `go mod tidy` keeps go.mod and go.sum complete. It is never compiled.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
