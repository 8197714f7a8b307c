package cluster

import (
	"io"
	"net"
	"slices"
	"testing"
)

func TestSplitRuleReadsIptablesOutputBack(t *testing.T) {
	ns := &NodeState{Bridge: "deskpodtc3", Subnet: "10.200.3.0/24"}
	rule, err := serviceRouteRule(ns, "10.200.3.1:40000")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rule, "10.96.0.1/32") || !slices.Contains(rule, "deskpod-testcluster deskpodtc3") {
		t.Fatalf("rule %q: want the kubernetes Service address and the bridge's comment", rule)
	}
	// As `iptables -S` prints such a rule.
	printed := `-s 10.200.3.0/24 -d 10.96.0.1/32 -i deskpodtc3 -p tcp -m tcp --dport 443 -m comment --comment "deskpod-testcluster deskpodtc3" -j DNAT --to-destination 10.200.3.1:40000`
	got, err := splitRule(printed)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"-s", "10.200.3.0/24", "-d", "10.96.0.1/32", "-i", "deskpodtc3", "-p", "tcp", "-m", "tcp",
		"--dport", "443", "-m", "comment", "--comment", "deskpod-testcluster deskpodtc3", "-j", "DNAT",
		"--to-destination", "10.200.3.1:40000"}
	if !slices.Equal(got, want) {
		t.Fatalf("splitRule:\n got %q\nwant %q", got, want)
	}
	if _, err := splitRule(`--comment "unterminated`); err == nil {
		t.Fatal("an unterminated quote must be an error")
	}
}

func TestAPIRelayPipesBothWaysAndCloseEndsOpenConnections(t *testing.T) {
	upstream, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer upstream.Close()
	go func() {
		for {
			c, err := upstream.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }() // echo
		}
	}()
	relay, err := startAPIRelay("127.0.0.1", upstream.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", relay.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through the relay: %q %v", buf, err)
	}
	relay.Close() // returns only once the open connection is ended
	if n, err := conn.Read(buf); err == nil {
		t.Fatalf("read %d bytes after Close; want the connection ended", n)
	}
	if c, err := net.Dial("tcp", relay.Addr()); err == nil {
		c.Close()
		t.Fatal("the relay still accepts after Close")
	}
}
