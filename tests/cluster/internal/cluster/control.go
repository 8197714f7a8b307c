package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"deskpod.io/tests/cluster/internal/proc"
)

// controlSocket is the supervisor's control socket in DIR: one request line
// ("apiserver stop", "apiserver start"), one reply line ("ok" or "error: ...").
// It lets a test take a cluster's API server away and bring it back (same port,
// same etcd) while everything else keeps running, as when a member cluster's
// control plane is unreachable for a while.
const controlSocket = "control.sock"

// Control commands the supervisor understands.
const (
	ctlAPIServerStop  = "apiserver stop"
	ctlAPIServerStart = "apiserver start"
)

// controlRequest is one command received on the control socket; the handler
// sends the outcome on reply (nil: done).
type controlRequest struct {
	command string
	reply   chan error
}

// serveControl accepts connections on DIR/control.sock until ctx ends and
// hands each request to requests. The supervisor answers them on its main
// goroutine: starting a process must happen on the main OS thread (see spawn).
func serveControl(ctx context.Context, dir string, requests chan<- controlRequest) (func(), error) {
	path := filepath.Join(dir, controlSocket)
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go handleControl(ctx, conn, requests)
		}
	}()
	return func() { ln.Close() }, nil
}

func handleControl(ctx context.Context, conn net.Conn, requests chan<- controlRequest) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return
	}
	conn.SetReadDeadline(time.Time{})
	req := controlRequest{command: strings.TrimSpace(line), reply: make(chan error, 1)}
	var outcome error
	select {
	case requests <- req:
		select {
		case outcome = <-req.reply:
		case <-ctx.Done():
			outcome = errors.New("the cluster is shutting down")
		}
	case <-ctx.Done():
		outcome = errors.New("the cluster is shutting down")
	}
	if outcome != nil {
		fmt.Fprintf(conn, "error: %s\n", strings.ReplaceAll(outcome.Error(), "\n", " | "))
		return
	}
	fmt.Fprintln(conn, "ok")
}

// SendControl sends one command to the supervisor of the cluster in dir and
// waits (up to timeout) for its answer.
func SendControl(dir, command string, timeout time.Duration) error {
	conn, err := net.DialTimeout("unix", filepath.Join(dir, controlSocket), 5*time.Second)
	if err != nil {
		return fmt.Errorf("reaching the supervisor of %s (is `testcluster up` running?): %w", dir, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintln(conn, command); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("waiting for the supervisor's answer: %w", err)
	}
	line = strings.TrimSpace(line)
	if line == "ok" {
		return nil
	}
	return errors.New(strings.TrimPrefix(line, "error: "))
}

// control carries out a control command on the supervisor's main goroutine.
func (s *supervisor) control(ctx context.Context, command string) error {
	switch command {
	case ctlAPIServerStop:
		return s.stopAPIServer()
	case ctlAPIServerStart:
		return s.startAPIServer(ctx)
	default:
		return fmt.Errorf("unknown command %q (want %q or %q)", command, ctlAPIServerStop, ctlAPIServerStart)
	}
}

// apiServer is the current kube-apiserver child.
func (s *supervisor) apiServer() *child {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.children) - 1; i >= 0; i-- {
		if s.children[i].name == nAPIServer {
			return s.children[i]
		}
	}
	return nil
}

// stopAPIServer kills kube-apiserver (SIGKILL: an outage, as a crash or a lost
// machine looks to clients; on SIGTERM it would drain for 10 s or more) and waits
// until it has exited. Its exit is expected: the cluster keeps running.
func (s *supervisor) stopAPIServer() error {
	c := s.apiServer()
	if c == nil {
		return errors.New("no kube-apiserver was started")
	}
	if c.exited() {
		return nil
	}
	s.mu.Lock()
	c.expectExit = true
	s.mu.Unlock()
	syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	<-c.done
	s.logf("%s stopped on request", nAPIServer)
	return nil
}

// startAPIServer starts kube-apiserver again with the arguments it had (same
// port, same etcd, same certificates) and waits until it is ready.
func (s *supervisor) startAPIServer(ctx context.Context) error {
	old := s.apiServer()
	if old == nil {
		return errors.New("no kube-apiserver was started")
	}
	if !old.exited() {
		return nil
	}
	c, err := s.spawnPath(nAPIServer, old.cmd.Path, old.cmd.Args[1:])
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.pids.Processes = dropRecord(s.pids.Processes, nAPIServer, old.cmd.Process.Pid)
	if err := proc.Write(filepath.Join(s.dir, pidsFile), s.pids); err != nil {
		s.logf("warning: writing pids.json: %v", err)
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := s.waitHealthy(ctx, c, func(ctx context.Context) error { return s.api.okGet(ctx, "/readyz") }); err != nil {
		return err
	}
	s.logf("%s started again on request (pid %d) in %s", nAPIServer, c.cmd.Process.Pid, time.Since(t0).Round(100*time.Millisecond))
	return nil
}

// dropRecord removes the record of a process that has exited.
func dropRecord(recs []proc.Record, name string, pid int) []proc.Record {
	out := recs[:0]
	for _, r := range recs {
		if r.Name != name || r.Pid != pid {
			out = append(out, r)
		}
	}
	return out
}
