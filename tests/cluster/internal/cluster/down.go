package cluster

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"deskpod.io/tests/cluster/internal/pki"
	"deskpod.io/tests/cluster/internal/proc"
)

// supervisorAlive reports whether the supervisor recorded in pf still runs.
func supervisorAlive(pf proc.File) bool {
	return pf.Supervisor != nil && pf.Supervisor.Pid != os.Getpid() && proc.Matches(*pf.Supervisor)
}

// Down stops what is left of the cluster in dir and removes dir. A live
// supervisor is asked to shut down first (SIGTERM). Recorded processes are
// signalled only if their /proc/<pid>/cmdline still matches the record.
func Down(dir string, stderr io.Writer) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	dir = abs
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "testcluster: %s does not exist; nothing to do\n", dir)
		return nil
	}
	if !isClusterDir(dir) {
		return fmt.Errorf("%s is not a testcluster directory (no %s); refusing to remove it", dir, markerFile)
	}
	pf, err := proc.Read(filepath.Join(dir, pidsFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading pids.json: %w", err)
	}
	if supervisorAlive(pf) {
		sv := *pf.Supervisor
		fmt.Fprintf(stderr, "testcluster: supervisor pid %d still runs; sending SIGTERM\n", sv.Pid)
		syscall.Kill(sv.Pid, syscall.SIGTERM)
		deadline := time.Now().Add(20 * time.Second)
		for proc.Matches(sv) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if proc.Matches(sv) {
			fmt.Fprintf(stderr, "testcluster: supervisor pid %d did not exit; sending SIGKILL\n", sv.Pid)
			syscall.Kill(sv.Pid, syscall.SIGKILL)
		}
	}
	var live []string
	for _, r := range pf.Processes {
		if proc.Matches(r) {
			live = append(live, fmt.Sprintf("%s(%d)", r.Name, r.Pid))
		}
	}
	if len(live) > 0 {
		fmt.Fprintf(stderr, "testcluster: stopping %s\n", strings.Join(live, " "))
	}
	if left := proc.StopAll(pf.Processes, 10*time.Second); len(left) > 0 {
		return fmt.Errorf("processes still running after SIGKILL: %v", left)
	}
	ns, err := readNodeState(dir)
	if err != nil {
		return fmt.Errorf("reading %s: %w", nodeFile, err)
	}
	if ns != nil {
		if err := cleanupNodeHost(dir, ns, pf.Processes, stderr); err != nil {
			return fmt.Errorf("cleaning up the real node: %w", err)
		}
	}
	if mps, err := mountsUnder(dir); err != nil || len(mps) > 0 {
		// Never recurse into a mount: it could be a host directory.
		return fmt.Errorf("not removing %s: mounts left under it: %v %v", dir, mps, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "testcluster: removed %s\n", dir)
	return nil
}

// Cleanup runs Down on every cluster directory under root whose supervisor
// is no longer running. It returns the number of directories removed.
func Cleanup(root string, stderr io.Writer) (int, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		if !isClusterDir(dir) {
			continue // being created right now, or not ours
		}
		pf, err := proc.Read(filepath.Join(dir, pidsFile))
		if err == nil && supervisorAlive(pf) {
			fmt.Fprintf(stderr, "testcluster: %s in use (supervisor pid %d)\n", dir, pf.Supervisor.Pid)
			continue
		}
		if err := Down(dir, stderr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", dir, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// MintKubeconfig issues a client certificate for user (groups as O=) signed
// by the cluster CA in dir and writes a kubeconfig for it to out.
func MintKubeconfig(dir, user string, groups []string, out string) error {
	if user == "" {
		return errors.New("--user is required")
	}
	st, err := readState(dir)
	if err != nil {
		return fmt.Errorf("reading %s (is the cluster up?): %w", filepath.Join(dir, stateFile), err)
	}
	ca, err := pki.Load(filepath.Join(dir, "pki"), "ca")
	if err != nil {
		return err
	}
	ck, err := ca.Sign(pki.Request{CommonName: user, Organizations: groups, Client: true})
	if err != nil {
		return err
	}
	return pki.WriteKubeconfig(out, st.Server, ca.CertPEM, user, ck)
}
