package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"deskpod.io/tests/cluster/internal/proc"
)

// The control socket carries one command and its outcome each way; commands are answered by
// whoever reads the requests (the supervisor's main goroutine).
func TestControlSocketRoundTrip(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	requests := make(chan controlRequest)
	closeControl, err := serveControl(ctx, dir, requests)
	if err != nil {
		t.Fatal(err)
	}
	defer closeControl()
	var seen []string
	go func() {
		for req := range requests {
			seen = append(seen, req.command)
			if req.command == ctlAPIServerStop {
				req.reply <- nil
			} else {
				req.reply <- errors.New("refused\nsecond line")
			}
		}
	}()

	if err := SendControl(dir, ctlAPIServerStop, 5*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	err = SendControl(dir, "reboot", 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "refused | second line") {
		t.Fatalf("an error is passed back on one line, got %v", err)
	}
	if len(seen) != 2 || seen[0] != ctlAPIServerStop || seen[1] != "reboot" {
		t.Errorf("commands = %q", seen)
	}
}

func TestControlUnknownCommand(t *testing.T) {
	s := &supervisor{}
	err := s.control(context.Background(), "apiserver restart")
	if err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Fatalf("got %v", err)
	}
}

func TestSendControlWithoutSupervisor(t *testing.T) {
	err := SendControl(t.TempDir(), ctlAPIServerStart, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "is `testcluster up` running?") {
		t.Fatalf("got %v", err)
	}
}

func TestDropRecordKeepsOthers(t *testing.T) {
	recs := dropRecord([]proc.Record{{Name: nEtcd, Pid: 1}, {Name: nAPIServer, Pid: 2}, {Name: nKCM, Pid: 3}}, nAPIServer, 2)
	if len(recs) != 2 || recs[0].Pid != 1 || recs[1].Pid != 3 {
		t.Errorf("records = %+v", recs)
	}
}
