package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"deskpod.io/tests/cluster/internal/proc"
)

// TestUpDown is the integration test: build (or reuse the cache), start a
// cluster, check readiness and nodes, close stdin, and check that every
// process of the cluster is gone and DIR is removed. It runs only with
// DESKPOD_CLUSTER_IT=1 (the first build takes many minutes).
func TestUpDown(t *testing.T) {
	if os.Getenv("DESKPOD_CLUSTER_IT") != "1" {
		t.Skip("set DESKPOD_CLUSTER_IT=1 to run the cluster integration test")
	}
	tmp := t.TempDir()
	exe := filepath.Join(tmp, "testcluster")
	if out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// A build may be needed first; it has no time limit here (go test -timeout applies).
	if out, err := exec.Command(exe, "build").CombinedOutput(); err != nil {
		t.Fatalf("testcluster build: %v\n%s", err, out)
	}

	dir := filepath.Join(tmp, "cluster")
	cmd := exec.Command(exe, "up", "--dir", dir, "--nodes", "2")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()

	lineCh := make(chan string, 1)
	extra := make(chan []string, 1) // stdout lines after the first, at EOF
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lineCh <- sc.Text()
		}
		close(lineCh)
		var rest []string
		for sc.Scan() {
			rest = append(rest, sc.Text())
		}
		extra <- rest
	}()
	var line string
	select {
	case l, ok := <-lineCh:
		if !ok {
			<-extra
			cmd.Wait()
			t.Fatalf("up exited without a ready line:\n%s", stderr.String())
		}
		line = l
	case <-time.After(4 * time.Minute):
		t.Fatalf("up not ready after 4m:\n%s", stderr.String())
	}
	t.Logf("ready after %s: %s", time.Since(t0).Round(100*time.Millisecond), line)

	var ready struct {
		Kubeconfig, Server, Dir, BinDir, Version string
	}
	if err := json.Unmarshal([]byte(line), &ready); err != nil {
		t.Fatalf("ready line %q: %v", line, err)
	}
	if ready.Version != "v1.37.2" || ready.Dir != dir || !strings.HasPrefix(ready.Server, "https://127.0.0.1:") ||
		ready.Kubeconfig != filepath.Join(dir, "kubeconfig") {
		t.Errorf("ready line: %+v", ready)
	}
	kubectl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(filepath.Join(ready.BinDir, "kubectl"),
			append([]string{"--kubeconfig", ready.Kubeconfig}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if got := kubectl("get", "--raw", "/readyz"); strings.TrimSpace(got) != "ok" {
		t.Errorf("/readyz = %q", got)
	}
	var nodes struct {
		Items []struct {
			Metadata struct{ Name string }
			Status   struct {
				Conditions []struct{ Type, Status string }
			}
		}
	}
	if err := json.Unmarshal([]byte(kubectl("get", "nodes", "-o", "json")), &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 2 {
		t.Fatalf("%d nodes, want 2", len(nodes.Items))
	}
	for _, n := range nodes.Items {
		ok := false
		for _, c := range n.Status.Conditions {
			ok = ok || (c.Type == "Ready" && c.Status == "True")
		}
		if !ok {
			t.Errorf("node %s not Ready", n.Metadata.Name)
		}
	}

	pf, err := proc.Read(filepath.Join(dir, "pids.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(pf.Processes) != 5 {
		t.Errorf("pids.json lists %d processes, want 5", len(pf.Processes))
	}
	for _, r := range pf.Processes {
		if !proc.Matches(r) {
			t.Errorf("%s (pid %d) not running", r.Name, r.Pid)
		}
	}

	// Closing stdin tears the cluster down.
	stdin.Close()
	select {
	case rest := <-extra: // stdout reaches EOF when up exits
		if len(rest) > 0 {
			t.Errorf("unexpected extra stdout lines: %q", rest)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("up did not exit 60s after stdin was closed:\n%s", stderr.String())
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("up exited with %v:\n%s", err, stderr.String())
	}
	for _, r := range pf.Processes {
		if proc.Matches(r) {
			t.Errorf("%s (pid %d) still running after teardown", r.Name, r.Pid)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("cluster dir still exists: %v", err)
	}
}
