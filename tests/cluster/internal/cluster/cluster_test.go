package cluster

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	root "deskpod.io/tests/cluster"
	"deskpod.io/tests/cluster/internal/proc"
)

func TestNodeObject(t *testing.T) {
	data, _ := json.Marshal(NodeObject(1, "32", "128Gi", 500))
	var n struct {
		Metadata struct {
			Name        string            `json:"name"`
			Annotations map[string]string `json:"annotations"`
			Labels      map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec   map[string]any `json:"spec"`
		Status struct {
			Capacity    map[string]string `json:"capacity"`
			Allocatable map[string]string `json:"allocatable"`
		} `json:"status"`
	}
	if err := json.Unmarshal(data, &n); err != nil {
		t.Fatal(err)
	}
	if n.Metadata.Name != "kwok-node-1" || n.Metadata.Annotations["kwok.x-k8s.io/node"] != "fake" || n.Metadata.Labels["type"] != "kwok" {
		t.Errorf("metadata = %+v", n.Metadata)
	}
	if _, ok := n.Spec["taints"]; ok {
		t.Error("nodes must have no taints")
	}
	want := map[string]string{"cpu": "32", "memory": "128Gi", "pods": "500"}
	for k, v := range want {
		if n.Status.Capacity[k] != v || n.Status.Allocatable[k] != v {
			t.Errorf("%s: capacity %s allocatable %s, want %s", k, n.Status.Capacity[k], n.Status.Allocatable[k], v)
		}
	}
}

func TestStagesEmbedded(t *testing.T) {
	for _, name := range []string{"node-initialize", "node-heartbeat-with-lease", "pod-ready",
		"pod-job-complete", "deskpod-pod-exit", "pod-delete", "kwok.deskpod.io/exit-code", "kwok.deskpod.io/run-for"} {
		if !bytes.Contains(root.KwokStages, []byte(name)) {
			t.Errorf("kwok-stages.yaml lacks %s", name)
		}
	}
}

func TestDownRefusesForeignDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "precious"), []byte("x"), 0o644)
	var log bytes.Buffer
	if err := Down(dir, &log); err == nil || !strings.Contains(err.Error(), "not a testcluster directory") {
		t.Fatalf("Down on foreign dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "precious")); err != nil {
		t.Fatal("foreign dir was touched")
	}
}

// fakeCluster makes a cluster dir whose supervisor and child are `sleep`
// processes (or a dead pid).
func fakeCluster(t *testing.T, root, name string, supervisorAlive bool) (string, *exec.Cmd) {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	dir := filepath.Join(root, name)
	os.MkdirAll(dir, 0o755)
	child := exec.Command(sleep, "300")
	child.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	go child.Wait()
	t.Cleanup(func() { child.Process.Kill() })
	sv := proc.Record{Name: "testcluster", Pid: 1 << 22, Argv: []string{"/gone/testcluster", "up"}} // no such pid
	if supervisorAlive {
		s := exec.Command(sleep, "301")
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		go s.Wait()
		t.Cleanup(func() { s.Process.Kill() })
		sv = proc.Record{Name: "testcluster", Pid: s.Process.Pid, Argv: s.Args}
	}
	pf := proc.File{Supervisor: &sv, Processes: []proc.Record{{Name: "etcd", Pid: child.Process.Pid, Argv: child.Args}}}
	if err := proc.Write(filepath.Join(dir, pidsFile), pf); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, markerFile), nil, 0o644)
	return dir, child
}

func TestCleanup(t *testing.T) {
	root := t.TempDir()
	dead, deadChild := fakeCluster(t, root, "dead", false)
	live, liveChild := fakeCluster(t, root, "live", true)
	other := filepath.Join(root, "other")
	os.MkdirAll(other, 0o755)
	time.Sleep(50 * time.Millisecond) // let the sleeps exec
	var log bytes.Buffer
	n, err := Cleanup(root, &log)
	if err != nil || n != 1 {
		t.Fatalf("Cleanup = %d, %v\n%s", n, err, log.String())
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Error("dead cluster dir not removed")
	}
	if proc.Matches(proc.Record{Pid: deadChild.Process.Pid, Argv: deadChild.Args}) {
		t.Error("child of dead cluster still runs")
	}
	if _, err := os.Stat(live); err != nil {
		t.Error("live cluster dir removed")
	}
	if !proc.Matches(proc.Record{Pid: liveChild.Process.Pid, Argv: liveChild.Args}) {
		t.Error("child of live cluster was stopped")
	}
	if _, err := os.Stat(other); err != nil {
		t.Error("unmarked dir removed")
	}
}
