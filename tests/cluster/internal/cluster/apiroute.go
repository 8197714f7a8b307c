package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"

	"deskpod.io/tests/cluster/internal/pki"
)

// Pods on the real node reach the API server the way they do in any cluster: at the kubernetes
// Service's address, which kubelet gives them as KUBERNETES_SERVICE_HOST (the first address of
// ServiceCIDR) and KUBERNETES_SERVICE_PORT (443), and which the API server's certificate already
// names. There is no kube-proxy here. Instead one DNAT rule, limited to the node's bridge and pod
// subnet, sends that address to a TCP relay on the bridge's gateway address, and the relay
// forwards each connection to the API server on loopback. The API server itself stays on
// 127.0.0.1; the relay is reachable from the host and this node's pods only. A second rule lets
// the node's pods reach each other across its bridge (see bridgeForwardRule).

// apiRelay accepts connections on the gateway address and pipes each to the API server.
type apiRelay struct {
	listener net.Listener
	target   string
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// startAPIRelay listens on gateway:0 and forwards to target (host:port of the API server).
func startAPIRelay(gateway, target string) (*apiRelay, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(gateway, "0"))
	if err != nil {
		return nil, fmt.Errorf("API relay: %w", err)
	}
	r := &apiRelay{listener: l, target: target, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

// Addr is where the relay listens (gateway:port).
func (r *apiRelay) Addr() string { return r.listener.Addr().String() }

func (r *apiRelay) serve() {
	defer r.wg.Done()
	for {
		conn, err := r.listener.Accept()
		if err != nil {
			return // closed
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.pipe(conn)
		}()
	}
}

// track records a live connection (false once the relay is closing).
func (r *apiRelay) track(c net.Conn, add bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !add {
		delete(r.conns, c)
		return true
	}
	if r.conns == nil {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *apiRelay) pipe(client net.Conn) {
	defer client.Close()
	upstream, err := net.Dial("tcp", r.target)
	if err != nil {
		return // the API server is stopped (`testcluster apiserver stop`): the pod sees a reset
	}
	defer upstream.Close()
	for _, c := range []net.Conn{client, upstream} {
		if !r.track(c, true) {
			return
		}
		defer r.track(c, false)
	}
	done := make(chan struct{}, 2)
	copyHalf := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go copyHalf(upstream, client)
	go copyHalf(client, upstream)
	<-done
	<-done
}

// Close stops accepting, ends every relayed connection and waits for the relay's goroutines.
func (r *apiRelay) Close() {
	r.listener.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.conns = nil
	r.mu.Unlock()
	r.wg.Wait()
}

// nodeRuleComment marks the iptables rules of the node on bridge, so that they can be found
// and removed even after a crash.
func nodeRuleComment(bridge string) string { return "deskpod-testcluster " + bridge }

// serviceRouteRule is the DNAT rule (iptables -t nat arguments after the chain) that sends the
// pod subnet's connections to the kubernetes Service to the relay.
func serviceRouteRule(ns *NodeState, relay string) ([]string, error) {
	svcIP, err := pki.FirstIP(ServiceCIDR)
	if err != nil {
		return nil, err
	}
	return []string{
		"-i", ns.Bridge, "-s", ns.Subnet, "-d", svcIP.String() + "/32", "-p", "tcp", "--dport", "443",
		"-m", "comment", "--comment", nodeRuleComment(ns.Bridge),
		"-j", "DNAT", "--to-destination", relay,
	}, nil
}

// bridgeForwardRule lets pods on the node's bridge reach each other. With br_netfilter loaded
// (Docker loads it), bridged packets pass the filter table's FORWARD chain, whose policy Docker
// sets to DROP; Docker accepts docker0-to-docker0 the same way.
func bridgeForwardRule(ns *NodeState) []string {
	return []string{"-i", ns.Bridge, "-o", ns.Bridge, "-m", "comment", "--comment", nodeRuleComment(ns.Bridge), "-j", "ACCEPT"}
}

// The chains the node's rules go into: table and chain.
var ruleChains = [][2]string{{"nat", "PREROUTING"}, {"filter", "FORWARD"}}

// addNodeRules installs the node's two rules, the DNAT for the kubernetes Service and the
// bridge's FORWARD accept (after removing any left by an earlier cluster on the same bridge).
func addNodeRules(ctx context.Context, ns *NodeState, relay string) error {
	if err := removeNodeRules(ctx, ns.Bridge); err != nil {
		return err
	}
	rule, err := serviceRouteRule(ns, relay)
	if err != nil {
		return err
	}
	if err := iptables(ctx, append([]string{"-t", "nat", "-I", "PREROUTING"}, rule...)...); err != nil {
		return err
	}
	return iptables(ctx, append([]string{"-t", "filter", "-I", "FORWARD"}, bridgeForwardRule(ns)...)...)
}

// removeNodeRules deletes every rule carrying bridge's comment from the node's chains.
func removeNodeRules(ctx context.Context, bridge string) error {
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil // then no rule was ever added
	}
	var errs []error
	for _, tc := range ruleChains {
		table, chain := tc[0], tc[1]
		out, err := exec.CommandContext(ctx, "iptables", "-t", table, "-S", chain).Output()
		if err != nil {
			errs = append(errs, fmt.Errorf("iptables -t %s -S %s: %w", table, chain, err))
			continue
		}
		prefix := "-A " + chain + " "
		for _, line := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(line, prefix) || !strings.Contains(line, strconv.Quote(nodeRuleComment(bridge))) {
				continue
			}
			args, err := splitRule(strings.TrimPrefix(line, prefix))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			errs = append(errs, iptables(ctx, append([]string{"-t", table, "-D", chain}, args...)...))
		}
	}
	return errors.Join(errs...)
}

// splitRule splits a rule as `iptables -S` prints it: words, and double-quoted strings (the
// comment) with backslash escapes.
func splitRule(s string) ([]string, error) {
	var out []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if s[0] != '"' {
			word, rest, _ := strings.Cut(s, " ")
			out, s = append(out, word), rest
			continue
		}
		prefix, err := strconv.QuotedPrefix(s)
		if err != nil {
			return nil, fmt.Errorf("iptables rule %q: %w", s, err)
		}
		word, _ := strconv.Unquote(prefix)
		out, s = append(out, word), s[len(prefix):]
	}
	return out, nil
}

func iptables(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "iptables", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
