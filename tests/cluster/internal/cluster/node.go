package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"deskpod.io/tests/cluster/internal/pki"
	"deskpod.io/tests/cluster/internal/proc"
)

// The real node: a kubelet built from the control plane's own module, with Debian's containerd
// (started with its own config, socket, root and state under DIR/node) and Debian's CNI plugins
// (a bridge and a /24 of its own per cluster). Only pods that tolerate RealNodeTaint and select
// RealNodeLabel land on it.
const (
	// RealNodeName is the real node's name.
	RealNodeName = "deskpod-real-node"
	// RealNodeLabel = RealNodeLabelValue is on the real node: a pod's nodeSelector.
	RealNodeLabel      = "deskpod.io/node"
	RealNodeLabelValue = "real"
	// RealNodeTaint (value "true", effect NoSchedule) keeps pods that do not tolerate it away.
	RealNodeTaint = "deskpod.io/real-node"
	// PauseImage is the pod sandbox image the harness builds and imports (see pause.go).
	PauseImage = "deskpod.io/testcluster-pause:v1"

	nKubelet    = "kubelet"
	nContainerd = "containerd"
	nShim       = "containerd-shim"

	nodeFile = "node.json"
	// Pod networks are 10.200.<index>.0/24 on the bridge deskpodtc<index>.
	netPrefix    = "10.200."
	bridgePrefix = "deskpodtc"
	cniBinDir    = "/usr/lib/cni"
	// hostLock serializes the choice of a pod network and the kernel settings below between
	// clusters; sysctlFile keeps the settings the first running real node found.
	hostLock   = "/tmp/.deskpod-testcluster-node.lock"
	sysctlFile = "/tmp/.deskpod-testcluster-sysctl.json"
)

// kubeletSysctls are the kernel settings kubelet sets at start (unless protectKernelDefaults,
// which makes it refuse to start instead). The harness restores the host's values when the last
// real node stops.
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// NodeState is DIR/node.json: what `down` needs to clean up after a real node.
type NodeState struct {
	Name             string `json:"name"`
	Bridge           string `json:"bridge"`
	Subnet           string `json:"subnet"`
	Gateway          string `json:"gateway"`
	CNINetwork       string `json:"cniNetwork"`
	CgroupRoot       string `json:"cgroupRoot"`
	ContainerdSocket string `json:"containerdSocket"`
	Snapshotter      string `json:"snapshotter"`
	PodLogsDir       string `json:"podLogsDir"`
	// APIRelay is where the kubernetes Service's address leads from this node's pods (see
	// apiroute.go).
	APIRelay string `json:"apiRelay,omitempty"`
}

func readNodeState(dir string) (*NodeState, error) {
	data, err := os.ReadFile(filepath.Join(dir, nodeFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ns NodeState
	return &ns, json.Unmarshal(data, &ns)
}

// startRealNode sets up the network, containerd, the sandbox image and the kubelet. The node
// state is written before anything is created on the host, so that `down` can undo it.
func (s *supervisor) startRealNode(ctx context.Context, nodeBin string) error {
	t0 := time.Now()
	nd := filepath.Join(s.dir, "node")
	for _, sub := range []string{"containerd/root", "containerd/state", "cni/net.d", "cni/ipam", "kubelet", "pod-logs"} {
		if err := os.MkdirAll(filepath.Join(nd, sub), 0o755); err != nil {
			return err
		}
	}
	ns := &NodeState{
		Name:             RealNodeName,
		CgroupRoot:       "/deskpod-testcluster-" + strconv.Itoa(os.Getpid()),
		ContainerdSocket: filepath.Join(nd, "containerd.sock"),
		PodLogsDir:       filepath.Join(nd, "pod-logs"),
		Snapshotter:      pickSnapshotter(nd),
	}
	if err := withHostLock(func() error { return claimNetwork(s.dir, ns) }); err != nil {
		return fmt.Errorf("pod network: %w", err)
	}
	s.node = ns
	s.logf("real node: bridge %s, pods in %s, snapshotter %s", ns.Bridge, ns.Subnet, ns.Snapshotter)
	for _, sub := range cgroupSubsystems() {
		if err := os.MkdirAll(filepath.Join("/sys/fs/cgroup", sub, ns.CgroupRoot), 0o755); err != nil {
			return fmt.Errorf("creating cgroup %s: %w", ns.CgroupRoot, err)
		}
	}

	// CNI: bridge + host-local, no masquerading (pods reach the host and each other only).
	cni := map[string]any{
		"cniVersion": "0.4.0",
		"name":       ns.CNINetwork,
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": ns.Bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": ns.Subnet, "gateway": ns.Gateway}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": filepath.Join(nd, "cni", "ipam"),
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	data, _ := json.MarshalIndent(cni, "", "  ")
	if err := os.WriteFile(filepath.Join(nd, "cni", "net.d", "10-deskpod.conflist"), data, 0o644); err != nil {
		return err
	}

	// The API server at the kubernetes Service's address, for pods that use their ServiceAccount.
	relay, err := startAPIRelay(ns.Gateway, fmt.Sprintf("127.0.0.1:%d", s.ports["apiserver"]))
	if err != nil {
		return err
	}
	s.relay = relay
	ns.APIRelay = relay.Addr()
	if err := addNodeRules(ctx, ns, ns.APIRelay); err != nil {
		return fmt.Errorf("the real node's iptables rules (kubernetes Service, bridge): %w", err)
	}

	// containerd.
	conf := filepath.Join(nd, "containerd.toml")
	if err := os.WriteFile(conf, []byte(containerdConfig(nd, ns)), 0o644); err != nil {
		return err
	}
	if _, err := s.spawnPath(nContainerd, "containerd", []string{"--config", conf, "--log-level", "warn"}); err != nil {
		return err
	}
	ctr := func(ctx context.Context, args ...string) error {
		out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", ns.ContainerdSocket, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	c := s.find(nContainerd)
	if err := s.waitHealthy(ctx, c, func(ctx context.Context) error { return ctr(ctx, "version") }); err != nil {
		return err
	}
	tContainerd := time.Now()

	// The sandbox image.
	tarball := filepath.Join(nd, "pause.tar")
	if err := writePauseImage(tarball, filepath.Join(nodeBin, "pause"), PauseImage); err != nil {
		return fmt.Errorf("building the sandbox image: %w", err)
	}
	if err := ctr(ctx, "images", "import", "--snapshotter", ns.Snapshotter, tarball); err != nil {
		return err
	}

	// kubelet: certificates, kubeconfig, configuration.
	pkiDir := filepath.Join(s.dir, "pki")
	gw := net.ParseIP(ns.Gateway).To4()
	client, err := s.ca.Sign(pki.Request{CommonName: "system:node:" + ns.Name, Organizations: []string{"system:nodes"}, Client: true})
	if err != nil {
		return err
	}
	serving, err := s.ca.Sign(pki.Request{CommonName: ns.Name, DNSNames: []string{ns.Name, "localhost"},
		IPs: []net.IP{gw, net.IPv4(127, 0, 0, 1).To4()}, Server: true})
	if err != nil {
		return err
	}
	if err := serving.Write(pkiDir, "kubelet-serving"); err != nil {
		return err
	}
	kubeconfig := filepath.Join(s.dir, "kubeconfigs", "kubelet.kubeconfig")
	if err := pki.WriteKubeconfig(kubeconfig, s.server, s.ca.CertPEM, "system:node:"+ns.Name, client); err != nil {
		return err
	}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	kcfg := kubeletConfig(ns, filepath.Join(pkiDir, "ca.crt"), filepath.Join(pkiDir, "kubelet-serving"), ports[0], ports[1])
	data, _ = json.MarshalIndent(kcfg, "", "  ")
	kcfgPath := filepath.Join(nd, "kubelet-config.json")
	if err := os.WriteFile(kcfgPath, data, 0o644); err != nil {
		return err
	}
	if err := withHostLock(saveSysctls); err != nil {
		return err
	}
	data, _ = json.MarshalIndent(ns, "", "  ")
	if err := pki.WriteFileAtomic(filepath.Join(s.dir, nodeFile), append(data, '\n'), 0o644); err != nil {
		return err
	}
	k, err := s.spawnPath(nKubelet, filepath.Join(nodeBin, "kubelet"), []string{
		"--config=" + kcfgPath,
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + filepath.Join(nd, "kubelet"),
		"--hostname-override=" + ns.Name,
		"--node-ip=" + ns.Gateway,
		"--node-labels=" + RealNodeLabel + "=" + RealNodeLabelValue,
		"--v=1",
	})
	if err != nil {
		return err
	}
	healthz := fmt.Sprintf("http://127.0.0.1:%d/healthz", ports[1])
	if err := s.waitHealthy(ctx, k, func(ctx context.Context) error { return plainGet(ctx, healthz) }); err != nil {
		return err
	}
	s.ports["kubelet"] = ports[0]
	s.logf("real node: containerd up in %s, kubelet healthy after %s", tContainerd.Sub(t0).Round(100*time.Millisecond),
		time.Since(t0).Round(100*time.Millisecond))
	return nil
}

func containerdConfig(nd string, ns *NodeState) string {
	q := strconv.Quote
	return fmt.Sprintf(`# Written by testcluster: the real node's own containerd, apart from the system's (root, state, socket).
version = 2
root = %s
state = %s
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = %s

[ttrpc]
  address = %s

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %s

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %s
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  disable_tcp_service = true
  netns_mounts_under_state_dir = true
  # Without CAP_SYS_RESOURCE (as on this machine) no process may lower its oom_score_adj; keep
  # containers at or above containerd's own.
  restrict_oom_score_adj = true
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = %s
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %s
    conf_dir = %s
    max_conf_num = 1
`, q(filepath.Join(nd, "containerd", "root")), q(filepath.Join(nd, "containerd", "state")),
		q(ns.ContainerdSocket), q(ns.ContainerdSocket+".ttrpc"), q(filepath.Join(nd, "containerd", "opt")),
		q(PauseImage), q(ns.Snapshotter), q(cniBinDir), q(filepath.Join(nd, "cni", "net.d")))
}

func kubeletConfig(ns *NodeState, caFile, servingBase string, port, healthzPort int) map[string]any {
	return map[string]any{
		"apiVersion":         "kubelet.config.k8s.io/v1beta1",
		"kind":               "KubeletConfiguration",
		"address":            ns.Gateway,
		"port":               port,
		"readOnlyPort":       0,
		"healthzBindAddress": "127.0.0.1",
		"healthzPort":        healthzPort,
		"tlsCertFile":        servingBase + ".crt",
		"tlsPrivateKeyFile":  servingBase + ".key",
		"authentication": map[string]any{
			"anonymous": map[string]bool{"enabled": false},
			"webhook":   map[string]bool{"enabled": true},
			"x509":      map[string]string{"clientCAFile": caFile},
		},
		"authorization":            map[string]string{"mode": "Webhook"},
		"cgroupDriver":             "cgroupfs",
		"cgroupRoot":               ns.CgroupRoot,
		"failCgroupV1":             false,
		"failSwapOn":               false,
		"containerRuntimeEndpoint": "unix://" + ns.ContainerdSocket,
		"imageServiceEndpoint":     "unix://" + ns.ContainerdSocket,
		"podLogsDir":               ns.PodLogsDir,
		// Host-wide iptables chains would be shared between clusters; nothing here needs them.
		"makeIPTablesUtilChains": false,
		"rotateCertificates":     false,
		"serverTLSBootstrap":     false,
		"staticPodPath":          "",
		"resolvConf":             "/etc/resolv.conf",
		"registerWithTaints": []map[string]string{
			{"key": RealNodeTaint, "value": "true", "effect": "NoSchedule"},
		},
		// The machine's disk is shared and may be fuller than kubelet's defaults allow; imported
		// images must never be garbage-collected (they cannot be pulled again).
		"evictionHard": map[string]string{
			"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%",
		},
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"serializeImagePulls":         false,
		"shutdownGracePeriod":         "0s",
		"maxPods":                     110,
	}
}

// pickSnapshotter returns "overlayfs" when an overlay mount works under nd, else "native".
func pickSnapshotter(nd string) string {
	d := filepath.Join(nd, "overlay-check")
	defer os.RemoveAll(d)
	for _, sub := range []string{"lower", "upper", "work", "merged"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return "native"
		}
	}
	merged := filepath.Join(d, "merged")
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", filepath.Join(d, "lower"), filepath.Join(d, "upper"), filepath.Join(d, "work"))
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return "native"
	}
	syscall.Unmount(merged, 0)
	return "overlayfs"
}

// withHostLock runs f holding an exclusive lock shared by every cluster on this machine.
func withHostLock(f func() error) error {
	lf, err := os.OpenFile(hostLock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	return f()
}

// liveBridges returns the indexes of this harness's bridges that exist, and whether any host
// address lies in 10.200.<i>.0/24, by index.
func usedNetworks() (map[int]bool, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	used := map[int]bool{}
	for _, itf := range ifs {
		if i, err := strconv.Atoi(strings.TrimPrefix(itf.Name, bridgePrefix)); err == nil && strings.HasPrefix(itf.Name, bridgePrefix) {
			used[i] = true
		}
		addrs, _ := itf.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if v4 := ipn.IP.To4(); v4 != nil && v4[0] == 10 && v4[1] == 200 {
					used[int(v4[2])] = true
				}
			}
		}
	}
	return used, nil
}

// claimNetwork picks a free 10.200.<i>.0/24 and creates its bridge (so that the next cluster
// sees it as taken), recording both in ns and DIR/node.json first. Call with the host lock held.
func claimNetwork(dir string, ns *NodeState) error {
	used, err := usedNetworks()
	if err != nil {
		return err
	}
	idx := -1
	for i := 0; i < 256; i++ {
		if !used[i] {
			idx = i
			break
		}
	}
	if idx < 0 {
		return errors.New("all of 10.200.0.0/16 is in use by other clusters")
	}
	ns.Bridge = bridgePrefix + strconv.Itoa(idx)
	ns.CNINetwork = "deskpod-testcluster-" + strconv.Itoa(idx)
	ns.Subnet = fmt.Sprintf("%s%d.0/24", netPrefix, idx)
	ns.Gateway = fmt.Sprintf("%s%d.1", netPrefix, idx)
	data, _ := json.MarshalIndent(ns, "", "  ")
	if err := pki.WriteFileAtomic(filepath.Join(dir, nodeFile), append(data, '\n'), 0o644); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"link", "add", "name", ns.Bridge, "type", "bridge"},
		{"addr", "add", ns.Gateway + "/24", "dev", ns.Bridge},
		{"link", "set", ns.Bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// saveSysctls records the host's kernel settings that kubelet changes, unless another real node
// already did (then they are the kubelet's values now). Call with the host lock held.
func saveSysctls() error {
	if _, err := os.Stat(sysctlFile); err == nil {
		return nil
	}
	vals := map[string]string{}
	for _, k := range kubeletSysctls {
		data, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			continue
		}
		vals[k] = strings.TrimSpace(string(data))
	}
	data, _ := json.Marshal(vals)
	return pki.WriteFileAtomic(sysctlFile, data, 0o644)
}

// restoreSysctls puts the saved kernel settings back when no real node is left. Call with the
// host lock held, after this cluster's bridge is gone.
func restoreSysctls() error {
	used, err := usedNetworks()
	if err != nil {
		return err
	}
	for i := range used {
		if _, err := net.InterfaceByName(bridgePrefix + strconv.Itoa(i)); err == nil {
			return nil // another real node still runs
		}
	}
	data, err := os.ReadFile(sysctlFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	vals := map[string]string{}
	if err := json.Unmarshal(data, &vals); err != nil {
		return err
	}
	var errs []error
	for k, v := range vals {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v+"\n"), 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		os.Remove(sysctlFile)
	}
	return errors.Join(errs...)
}

func cgroupSubsystems() []string {
	entries, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && !strings.Contains(e.Name(), ",") { // skip the cpu,cpuacct style links
			if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", e.Name(), "cgroup.procs")); err == nil {
				out = append(out, e.Name())
			}
		}
	}
	return out
}

// findShims returns the containerd shims that serve the containerd at socket: they outlive
// containerd on purpose, so they are found by the socket in their command line.
func findShims(socket string) []proc.Record {
	entries, _ := os.ReadDir("/proc")
	var out []proc.Record
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		argv, err := proc.Cmdline(pid)
		if err != nil || len(argv) == 0 || !strings.Contains(filepath.Base(argv[0]), "containerd-shim") {
			continue
		}
		for i, a := range argv {
			if a == "-address" && i+1 < len(argv) && argv[i+1] == socket {
				out = append(out, proc.Record{Name: nShim, Pid: pid, Argv: argv})
			}
		}
	}
	return out
}

// recordShims adds shims not yet in pids.json to it.
func (s *supervisor) recordShims() {
	if s.node == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	known := map[int]bool{}
	for _, r := range s.pids.Processes {
		known[r.Pid] = true
	}
	added := false
	for _, r := range findShims(s.node.ContainerdSocket) {
		if !known[r.Pid] {
			s.pids.Processes = append(s.pids.Processes, r)
			added = true
		}
	}
	if added {
		if err := proc.Write(filepath.Join(s.dir, pidsFile), s.pids); err != nil {
			s.logf("warning: writing pids.json: %v", err)
		}
	}
}

// drainRealNode deletes every pod bound to the real node and waits (bounded) until kubelet has
// stopped them, so that their sandboxes' networks are torn down through CNI.
func (s *supervisor) drainRealNode() {
	if s.api == nil || s.node == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sel := "/api/v1/pods?fieldSelector=" + url.QueryEscape("spec.nodeName="+s.node.Name)
	var list struct {
		Items []struct {
			Metadata struct{ Name, Namespace string } `json:"metadata"`
		} `json:"items"`
	}
	t0 := time.Now()
	deleted := false
	for {
		code, body, err := s.api.do(ctx, http.MethodGet, sel, nil)
		if err != nil || code != http.StatusOK || json.Unmarshal(body, &list) != nil {
			s.logf("real node: cannot list its pods (HTTP %d, %v); stopping it without draining", code, err)
			return
		}
		if len(list.Items) == 0 {
			if deleted {
				s.logf("real node: pods stopped in %s", time.Since(t0).Round(100*time.Millisecond))
			}
			return
		}
		if !deleted {
			s.logf("real node: deleting %d pods", len(list.Items))
			for _, p := range list.Items {
				path := fmt.Sprintf("/api/v1/namespaces/%s/pods/%s", p.Metadata.Namespace, p.Metadata.Name)
				s.api.do(ctx, http.MethodDelete, path, map[string]any{"gracePeriodSeconds": 1})
			}
			deleted = true
		}
		select {
		case <-ctx.Done():
			s.logf("real node: %d pods still there after 30s; stopping it anyway", len(list.Items))
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// stopRealNode stops the real node's processes (kubelet, then containerd) and undoes what it
// set up on the host. The control plane still runs.
func (s *supervisor) stopRealNode() {
	if s.node == nil {
		return
	}
	s.recordShims()
	s.drainRealNode()
	for _, name := range []string{nKubelet, nContainerd} {
		for _, c := range s.children {
			if c.name != name || c.exited() {
				continue
			}
			syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-c.done:
			case <-time.After(10 * time.Second):
				s.logf("%s (pid %d) did not stop in 10s; killing", c.name, c.cmd.Process.Pid)
				syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
				<-c.done
			}
		}
	}
	s.recordShims()
	if s.relay != nil {
		s.relay.Close()
	}
	if err := cleanupNodeHost(s.dir, s.node, s.pids.Processes, s.stderr); err != nil {
		s.logf("error: cleaning up the real node: %v", err)
	}
}

// cleanupNodeHost removes what a real node leaves on the host once kubelet and containerd are
// stopped: containers (every process in its cgroups), shims, mounts under dir, cgroups, the
// bridge, kubelet's log links and CNI's cached results, then restores kernel settings if no
// other real node runs. Used by teardown and by `down` after a crash.
func cleanupNodeHost(dir string, ns *NodeState, recorded []proc.Record, log io.Writer) error {
	var errs []error
	// Containers and sandboxes: everything in the node's cgroups.
	for round := 0; round < 50; round++ {
		pids := cgroupPids(ns.CgroupRoot)
		if len(pids) == 0 {
			break
		}
		if round == 0 {
			fmt.Fprintf(log, "testcluster: killing %d container processes of the real node\n", len(pids))
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Shims: recorded ones and any the record missed.
	var shims []proc.Record
	for _, r := range recorded {
		if r.Name == nShim {
			shims = append(shims, r)
		}
	}
	shims = append(shims, findShims(ns.ContainerdSocket)...)
	if left := proc.StopAll(shims, 5*time.Second); len(left) > 0 {
		errs = append(errs, fmt.Errorf("shims still running: %v", left))
	}
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	for _, sub := range cgroupSubsystems() {
		if err := removeCgroupTree(filepath.Join("/sys/fs/cgroup", sub, ns.CgroupRoot)); err != nil {
			errs = append(errs, err)
		}
	}
	// kubelet links every container's log from /var/log/containers.
	if links, err := filepath.Glob("/var/log/containers/*.log"); err == nil {
		for _, l := range links {
			if t, err := os.Readlink(l); err == nil && strings.HasPrefix(t, ns.PodLogsDir+"/") {
				os.Remove(l)
			}
		}
	}
	if ns.CNINetwork != "" {
		if cached, err := filepath.Glob("/var/lib/cni/results/" + ns.CNINetwork + "-*"); err == nil {
			for _, f := range cached {
				os.Remove(f)
			}
		}
	}
	if ns.Bridge != "" {
		if err := removeNodeRules(context.Background(), ns.Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	if err := withHostLock(func() error {
		if ns.Bridge != "" {
			if _, err := net.InterfaceByName(ns.Bridge); err == nil {
				if out, err := exec.Command("ip", "link", "del", ns.Bridge).CombinedOutput(); err != nil {
					return fmt.Errorf("ip link del %s: %v: %s", ns.Bridge, err, strings.TrimSpace(string(out)))
				}
			}
		}
		return restoreSysctls()
	}); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// cgroupPids lists the processes in every cgroup under root, in all hierarchies.
func cgroupPids(root string) []int {
	seen := map[int]bool{}
	var out []int
	for _, sub := range cgroupSubsystems() {
		base := filepath.Join("/sys/fs/cgroup", sub, root)
		filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			data, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
					seen[pid] = true
					out = append(out, pid)
				}
			}
			return nil
		})
	}
	return out
}

// removeCgroupTree removes a cgroup directory and its children, deepest first.
func removeCgroupTree(base string) error {
	var dirs []string
	filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("rmdir %s: %w", dirs[i], err))
		}
	}
	return errors.Join(errs...)
}

// mountsUnder returns the mount points at or below dir, deepest (last mounted) first.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	// mountinfo lists in mount order; undo in reverse, and deeper paths first.
	sort.SliceStable(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, sc.Err()
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount at or below dir (containers' root filesystems, pod volumes,
// network namespaces, kubelet's own bind mount of its root dir).
func unmountUnder(dir string) error {
	for round := 0; round < 5; round++ {
		mps, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mps) == 0 {
			return nil
		}
		for _, mp := range mps {
			syscall.Unmount(mp, syscall.MNT_DETACH)
		}
	}
	mps, _ := mountsUnder(dir)
	if len(mps) > 0 {
		return fmt.Errorf("still mounted under %s: %v", dir, mps)
	}
	return nil
}

// realNodeReadiness returns "" once the real node is Ready, has no taint but RealNodeTaint,
// and its sandbox image is known to the runtime.
func (s *supervisor) realNodeReadiness(ctx context.Context) string {
	code, body, err := s.api.do(ctx, http.MethodGet, "/api/v1/nodes/"+s.node.Name, nil)
	if err != nil || code != http.StatusOK {
		return fmt.Sprintf("real node %s: HTTP %d %v", s.node.Name, code, err)
	}
	var n struct {
		Spec struct {
			Taints []struct{ Key, Effect string } `json:"taints"`
		} `json:"spec"`
		Status struct {
			Conditions []struct{ Type, Status, Message string } `json:"conditions"`
		} `json:"status"`
	}
	if err := json.Unmarshal(body, &n); err != nil {
		return "decoding the real node: " + err.Error()
	}
	ready := false
	msg := ""
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			ready, msg = c.Status == "True", c.Message
		}
	}
	if !ready {
		return "real node not Ready: " + msg
	}
	for _, t := range n.Spec.Taints {
		if t.Key != RealNodeTaint {
			return fmt.Sprintf("real node still tainted (%s:%s)", t.Key, t.Effect)
		}
	}
	return ""
}

// ImportImages copies local Docker images into the real node's containerd of the cluster in
// dir (`docker save IMAGE | ctr -n k8s.io images import -`). Pods use them with
// imagePullPolicy IfNotPresent; nothing is pulled.
func ImportImages(ctx context.Context, dir string, images []string, log io.Writer) error {
	ns, err := readNodeState(dir)
	if err != nil {
		return err
	}
	if ns == nil {
		return fmt.Errorf("%s has no real node (start it with `up --real-node`)", dir)
	}
	for _, img := range images {
		if err := importImage(ctx, ns, img, log); err != nil {
			return err
		}
	}
	return nil
}

func importImage(ctx context.Context, ns *NodeState, image string, log io.Writer) error {
	t0 := time.Now()
	save := exec.CommandContext(ctx, "docker", "save", image)
	imp := exec.CommandContext(ctx, "ctr", "--address", ns.ContainerdSocket, "--namespace", "k8s.io",
		"images", "import", "--snapshotter", ns.Snapshotter, "-")
	pipe, err := save.StdoutPipe()
	if err != nil {
		return err
	}
	imp.Stdin = pipe
	var saveErr, impOut strings.Builder
	save.Stderr = &saveErr
	imp.Stdout = &impOut
	imp.Stderr = &impOut
	if err := save.Start(); err != nil {
		return fmt.Errorf("docker save %s: %w", image, err)
	}
	if err := imp.Start(); err != nil {
		save.Process.Kill()
		save.Wait()
		return fmt.Errorf("ctr images import: %w", err)
	}
	impErr := imp.Wait()
	if impErr != nil {
		save.Process.Kill()
	}
	if err := save.Wait(); err != nil {
		return fmt.Errorf("docker save %s: %v: %s", image, err, strings.TrimSpace(saveErr.String()))
	}
	if impErr != nil {
		return fmt.Errorf("importing %s into the real node: %v: %s", image, impErr, strings.TrimSpace(impOut.String()))
	}
	fmt.Fprintf(log, "testcluster: imported %s into the real node in %s\n", image, time.Since(t0).Round(100*time.Millisecond))
	return nil
}

// RealNodeStorageClass is a StorageClass whose claims the supervisor itself provisions, for pods
// on the real node: a directory under DIR/node/volumes, world-writable because a hostPath volume
// ignores fsGroup and pods run as non-root users. (The default class's hostPath provisioner in
// kube-controller-manager makes root-owned 0750 directories under /tmp/hostpath_pv, which such a
// pod can mount but not write.)
const RealNodeStorageClass = "real-node"

// RealNodeStorageClassObject is the StorageClass for RealNodeStorageClass. Its volumes go with
// their claims (reclaim policy Delete), as a cloud provider's would.
func RealNodeStorageClassObject() map[string]any {
	return map[string]any{
		"apiVersion":        "storage.k8s.io/v1",
		"kind":              "StorageClass",
		"metadata":          map[string]any{"name": RealNodeStorageClass},
		"provisioner":       "deskpod.io/testcluster-real-node",
		"reclaimPolicy":     "Delete",
		"volumeBindingMode": "Immediate",
	}
}

// provisionRealNodeVolumes runs until ctx ends: every pending claim of RealNodeStorageClass gets
// a directory and a PersistentVolume bound to it, pinned to the real node; a volume whose claim
// is gone (Released) is removed with its directory.
func (s *supervisor) provisionRealNodeVolumes(ctx context.Context) {
	done := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		s.reclaimRealNodeVolumes(ctx)
		code, body, err := s.api.do(ctx, http.MethodGet, "/api/v1/persistentvolumeclaims", nil)
		if err != nil || code != http.StatusOK {
			continue
		}
		var list struct {
			Items []struct {
				Metadata struct{ Name, Namespace, UID string } `json:"metadata"`
				Spec     struct {
					StorageClassName *string  `json:"storageClassName"`
					VolumeName       string   `json:"volumeName"`
					AccessModes      []string `json:"accessModes"`
					Resources        struct {
						Requests map[string]string `json:"requests"`
					} `json:"resources"`
				} `json:"spec"`
			} `json:"items"`
		}
		if json.Unmarshal(body, &list) != nil {
			continue
		}
		for _, c := range list.Items {
			if c.Spec.StorageClassName == nil || *c.Spec.StorageClassName != RealNodeStorageClass ||
				c.Spec.VolumeName != "" || done[c.Metadata.UID] {
				continue
			}
			path := filepath.Join(s.dir, "node", "volumes", c.Metadata.UID)
			if err := os.MkdirAll(path, 0o777); err != nil {
				s.logf("real node: volume for %s/%s: %v", c.Metadata.Namespace, c.Metadata.Name, err)
				continue
			}
			os.Chmod(path, 0o777) // not subject to the umask
			size := c.Spec.Resources.Requests["storage"]
			if size == "" {
				size = "1Gi"
			}
			pv := map[string]any{
				"apiVersion": "v1",
				"kind":       "PersistentVolume",
				"metadata":   map[string]any{"name": "real-node-" + c.Metadata.UID},
				"spec": map[string]any{
					"capacity":                      map[string]string{"storage": size},
					"accessModes":                   c.Spec.AccessModes,
					"persistentVolumeReclaimPolicy": "Delete",
					"storageClassName":              RealNodeStorageClass,
					"hostPath":                      map[string]string{"path": path, "type": "Directory"},
					"claimRef": map[string]string{
						"namespace": c.Metadata.Namespace, "name": c.Metadata.Name, "uid": c.Metadata.UID,
					},
					"nodeAffinity": map[string]any{"required": map[string]any{"nodeSelectorTerms": []any{
						map[string]any{"matchExpressions": []any{map[string]any{
							"key": "kubernetes.io/hostname", "operator": "In", "values": []string{s.node.Name},
						}}},
					}}},
				},
			}
			code, body, err := s.api.do(ctx, http.MethodPost, "/api/v1/persistentvolumes", pv)
			if err == nil && (code == http.StatusCreated || code == http.StatusConflict) {
				done[c.Metadata.UID] = true
			} else if ctx.Err() == nil {
				s.logf("real node: creating a volume for %s/%s: HTTP %d %v %s", c.Metadata.Namespace, c.Metadata.Name, code, err, body)
			}
		}
	}
}

// reclaimRealNodeVolumes deletes the Released volumes of RealNodeStorageClass whose policy is
// Delete, and their directories. The directory goes first: a volume still listed is retried.
func (s *supervisor) reclaimRealNodeVolumes(ctx context.Context) {
	code, body, err := s.api.do(ctx, http.MethodGet, "/api/v1/persistentvolumes", nil)
	if err != nil || code != http.StatusOK {
		return
	}
	var list struct {
		Items []struct {
			Metadata struct{ Name string } `json:"metadata"`
			Spec     struct {
				StorageClassName string                `json:"storageClassName"`
				ReclaimPolicy    string                `json:"persistentVolumeReclaimPolicy"`
				HostPath         struct{ Path string } `json:"hostPath"`
			} `json:"spec"`
			Status struct{ Phase string } `json:"status"`
		} `json:"items"`
	}
	if json.Unmarshal(body, &list) != nil {
		return
	}
	volumes := filepath.Join(s.dir, "node", "volumes")
	for _, pv := range list.Items {
		if pv.Spec.StorageClassName != RealNodeStorageClass || pv.Spec.ReclaimPolicy != "Delete" || pv.Status.Phase != "Released" {
			continue
		}
		// Only ever a directory this supervisor made.
		if filepath.Dir(pv.Spec.HostPath.Path) == volumes {
			if err := os.RemoveAll(pv.Spec.HostPath.Path); err != nil {
				s.logf("real node: removing the volume %s: %v", pv.Metadata.Name, err)
				continue
			}
		}
		code, body, err := s.api.do(ctx, http.MethodDelete, "/api/v1/persistentvolumes/"+pv.Metadata.Name, nil)
		if (err != nil || (code != http.StatusOK && code != http.StatusNotFound)) && ctx.Err() == nil {
			s.logf("real node: deleting the volume %s: HTTP %d %v %s", pv.Metadata.Name, code, err, body)
		}
	}
}
