package proc

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"
)

func TestFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pids.json")
	in := File{
		Supervisor: &Record{Name: "testcluster", Pid: 42, Argv: []string{"/bin/testcluster", "up"}},
		Processes: []Record{
			{Name: "etcd", Pid: 43, Argv: []string{"/c/etcd", "--name=default"}},
			{Name: "kube-apiserver", Pid: 44, Argv: []string{"/c/kube-apiserver", "--a=b c"}},
		},
	}
	if err := Write(path, in); err != nil {
		t.Fatal(err)
	}
	out, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip: %+v != %+v", out, in)
	}
}

func TestParseCmdline(t *testing.T) {
	got := ParseCmdline([]byte("a\x00b c\x00\x00d\x00"))
	if !reflect.DeepEqual(got, []string{"a", "b c", "", "d"}) {
		t.Errorf("ParseCmdline = %q", got)
	}
	if ParseCmdline(nil) != nil {
		t.Error("empty cmdline should be nil")
	}
}

func TestMatchesSelf(t *testing.T) {
	argv, err := Cmdline(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(argv, os.Args) {
		t.Errorf("own cmdline %q != os.Args %q", argv, os.Args)
	}
	if !Matches(Record{Pid: os.Getpid(), Argv: os.Args}) {
		t.Error("own process does not match")
	}
	if Matches(Record{Pid: os.Getpid(), Argv: append(append([]string{}, os.Args...), "x")}) {
		t.Error("different argv matches")
	}
	if Matches(Record{Pid: 0, Argv: os.Args}) || Matches(Record{Pid: os.Getpid()}) {
		t.Error("invalid record matches")
	}
}

func TestStopAllOnlyMatching(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	start := func() *exec.Cmd {
		c := exec.Command(sleep, "300")
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		go c.Wait() // reap, so a killed child does not stay a zombie
		return c
	}
	a, b := start(), start()
	defer b.Process.Kill()
	recA := Record{Name: "a", Pid: a.Process.Pid, Argv: a.Args}
	// b is recorded with an argv it does not have: like a recycled pid.
	recB := Record{Name: "b", Pid: b.Process.Pid, Argv: []string{sleep, "999"}}
	time.Sleep(50 * time.Millisecond) // let exec finish so cmdline is sleep's
	if !Matches(recA) || Matches(recB) {
		t.Fatalf("Matches: a=%v b=%v", Matches(recA), Matches(recB))
	}
	if left := StopAll([]Record{recA, recB}, 5*time.Second); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
	if Matches(recA) {
		t.Error("a still runs")
	}
	if err := syscall.Kill(b.Process.Pid, 0); err != nil {
		t.Errorf("b (mismatching record) was killed: %v", err)
	}
}
