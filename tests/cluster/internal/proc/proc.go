// Package proc records the processes of a test cluster (pids.json) and stops
// them safely: a recorded pid is signalled only while /proc/<pid>/cmdline
// still matches the argv that was recorded for it, so a recycled pid is never
// killed.
package proc

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// Record is one process started for a cluster.
type Record struct {
	Name string   `json:"name"`
	Pid  int      `json:"pid"`
	Argv []string `json:"argv"`
}

// File is the content of DIR/pids.json.
type File struct {
	Supervisor *Record  `json:"supervisor,omitempty"`
	Processes  []Record `json:"processes"`
}

// Write stores f at path atomically.
func Write(path string, f File) error {
	if f.Processes == nil {
		f.Processes = []Record{}
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".pids.json.tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Read loads a pids.json file.
func Read(path string) (File, error) {
	var f File
	data, err := os.ReadFile(path)
	if err != nil {
		return f, err
	}
	err = json.Unmarshal(data, &f)
	return f, err
}

// Cmdline returns the argv of a live process from /proc/<pid>/cmdline.
// Zombies and kernel threads have an empty cmdline.
func Cmdline(pid int) ([]string, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, err
	}
	return ParseCmdline(data), nil
}

// ParseCmdline splits the NUL-separated content of /proc/<pid>/cmdline.
func ParseCmdline(data []byte) []string {
	data = bytes.TrimSuffix(data, []byte{0})
	if len(data) == 0 {
		return nil
	}
	parts := bytes.Split(data, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	return out
}

// Matches reports whether pid is alive and still runs exactly r.Argv.
func Matches(r Record) bool {
	if r.Pid <= 0 || len(r.Argv) == 0 {
		return false
	}
	argv, err := Cmdline(r.Pid)
	if err != nil {
		return false
	}
	return slices.Equal(argv, r.Argv)
}

// Signal sends sig to r's process group (children are started as group
// leaders) and to r itself, but only if Matches(r).
func Signal(r Record, sig syscall.Signal) bool {
	if !Matches(r) {
		return false
	}
	_ = syscall.Kill(-r.Pid, sig)
	_ = syscall.Kill(r.Pid, sig)
	return true
}

// StopAll sends SIGTERM to every record that still matches, waits up to grace
// for them to go away, then sends SIGKILL to what is left and waits again
// briefly. It returns the records that still match at the end.
func StopAll(recs []Record, grace time.Duration) []Record {
	var live []Record
	for _, r := range recs {
		if Signal(r, syscall.SIGTERM) {
			live = append(live, r)
		}
	}
	live = waitGone(live, grace)
	for _, r := range live {
		Signal(r, syscall.SIGKILL)
	}
	return waitGone(live, 5*time.Second)
}

func waitGone(recs []Record, d time.Duration) []Record {
	deadline := time.Now().Add(d)
	for {
		var still []Record
		for _, r := range recs {
			if Matches(r) {
				still = append(still, r)
			}
		}
		if len(still) == 0 || time.Now().After(deadline) {
			return still
		}
		recs = still
		time.Sleep(100 * time.Millisecond)
	}
}
