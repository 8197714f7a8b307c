//go:build tools

// Package tools keeps etcd's main package (go.etcd.io/etcd/server/v3, built
// as the `etcd` binary) in this module's dependency graph so `go mod tidy`
// keeps go.mod and go.sum complete. It is never compiled.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
