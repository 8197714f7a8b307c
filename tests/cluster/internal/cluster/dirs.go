// Package cluster starts, supervises and stops Deskpod test clusters: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler and kwok on
// 127.0.0.1, each on free ports, with their state in one directory.
package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

const (
	// ServiceCIDR is the Service ClusterIP range.
	ServiceCIDR = "10.96.0.0/16"
	// ClusterCIDR is the pod network; kube-controller-manager cuts a /24 per node from it.
	ClusterCIDR = "10.244.0.0/16"
	// ClusterDomain is the DNS domain of the cluster.
	ClusterDomain = "cluster.local"

	markerFile     = ".deskpod-testcluster"
	pidsFile       = "pids.json"
	supervisorFile = "supervisor.pid"
	stateFile      = "cluster.json"
)

// DefaultRoot is ${TMPDIR:-/tmp}/deskpod-testcluster, where `up` creates a
// cluster directory when --dir is not given and `cleanup` looks for them.
func DefaultRoot() string {
	tmp := os.Getenv("TMPDIR")
	if tmp == "" {
		tmp = "/tmp"
	}
	return filepath.Join(tmp, "deskpod-testcluster")
}

// State is DIR/cluster.json: what other subcommands need to know about a cluster.
type State struct {
	Server     string         `json:"server"`
	Kubeconfig string         `json:"kubeconfig"`
	Dir        string         `json:"dir"`
	BinDir     string         `json:"binDir"`
	Version    string         `json:"version"`
	Ports      map[string]int `json:"ports"`
	RealNode   *NodeState     `json:"realNode,omitempty"`
}

// ReadyLine is the one JSON line `up` prints on stdout once the cluster is ready.
type ReadyLine struct {
	Kubeconfig string `json:"kubeconfig"`
	Server     string `json:"server"`
	Dir        string `json:"dir"`
	BinDir     string `json:"binDir"`
	Version    string `json:"version"`
	// RealNode is set when the cluster has a real node (`up --real-node`).
	RealNode *NodeState `json:"realNode,omitempty"`
}

func readState(dir string) (State, error) {
	var st State
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(data, &st)
}

// isClusterDir reports whether dir was created by `up` (has the marker file).
func isClusterDir(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, markerFile))
	return err == nil
}

func dirEmpty(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return false, err
}

// tail returns the last n lines of a file (at most 64 KiB are read).
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	const max = 64 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	data, _ := io.ReadAll(f)
	data = bytes.TrimRight(data, "\n")
	lines := strings.Split(string(data), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
