package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	cluster "deskpod.io/tests/cluster"
	"deskpod.io/tests/cluster/internal/build"
	"deskpod.io/tests/cluster/internal/pki"
	"deskpod.io/tests/cluster/internal/proc"
)

// UpOptions configures `testcluster up`.
type UpOptions struct {
	Dir           string        // cluster directory; "" = new dir under DefaultRoot()
	Nodes         int           // number of kwok nodes
	NodeCPU       string        // capacity/allocatable cpu per node
	NodeMemory    string        // capacity/allocatable memory per node
	NodePods      int           // capacity/allocatable pods per node
	BinDir        string        // prebuilt binaries; "" = build/cached
	ComponentsDir string        // components/ source dir (for building)
	Keep          bool          // keep DIR after teardown
	NoStdin       bool          // do not tear down on EOF on stdin
	AuditLog      string        // "" = no audit log; else kube-apiserver writes one JSON line per request here
	Timeout       time.Duration // startup timeout (after the build)
	RealNode      bool          // also run a real node (kubelet, containerd, CNI); see node.go
	ImportImages  []string      // local Docker images to import into the real node once it is ready
}

// Process names, in start order. They are also the log file names.
const (
	nEtcd      = "etcd"
	nAPIServer = "kube-apiserver"
	nKCM       = "kube-controller-manager"
	nScheduler = "kube-scheduler"
	nKwok      = "kwok"
)

var requiredBinaries = []string{nEtcd, nAPIServer, nKCM, nScheduler, nKwok}

type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
	// expectExit is set (under supervisor.mu) when the supervisor stops the child on request
	// (`testcluster apiserver stop`): its exit does not take the cluster down.
	expectExit bool
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

type supervisor struct {
	opts   UpOptions
	dir    string
	binDir string
	stderr io.Writer

	mu       sync.Mutex
	pids     proc.File
	children []*child
	exitedCh chan *child
	stopping bool

	ca, admin *pki.CertKey
	api       *apiClient
	server    string
	ports     map[string]int
	node      *NodeState // the real node, once its network is claimed
	relay     *apiRelay  // the real node's pods' way to the API server (apiroute.go)
	// provisionCtx ends when teardown starts; it bounds the real node's volume provisioner.
	provisionCtx  context.Context
	stopProvision context.CancelFunc
}

// auditPolicy records every request at the Metadata level (who, verb, object; no bodies), once,
// when the response is complete.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
`

// auditArgs are kube-apiserver's audit flags for --audit-log: blocking mode, so that every
// request is in the file when its response has been sent (benchmarks count them).
func (s *supervisor) auditArgs() ([]string, error) {
	if s.opts.AuditLog == "" {
		return nil, nil
	}
	path, err := filepath.Abs(s.opts.AuditLog)
	if err != nil {
		return nil, err
	}
	policy := filepath.Join(s.dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return nil, err
	}
	return []string{
		"--audit-policy-file=" + policy,
		"--audit-log-path=" + path,
		"--audit-log-format=json",
		"--audit-log-mode=blocking",
		"--audit-log-maxbackup=0",
	}, nil
}

func (s *supervisor) logf(format string, args ...any) {
	fmt.Fprintf(s.stderr, "testcluster: "+format+"\n", args...)
}

// Up runs `testcluster up`: it returns the process exit code.
func Up(opts UpOptions, stdin io.Reader, stdout, stderr io.Writer) int {
	s := &supervisor{opts: opts, stderr: stderr, exitedCh: make(chan *child, 16), ports: map[string]int{}}
	s.provisionCtx, s.stopProvision = context.WithCancel(context.Background())

	// Shutdown triggers: signals, EOF on stdin.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigCh := make(chan os.Signal, 4)
	signal.Notify(sigCh, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigCh)
	go func() {
		select {
		case sig := <-sigCh:
			cancel(fmt.Errorf("received %s", sig))
		case <-ctx.Done():
		}
	}()
	if !opts.NoStdin {
		go func() {
			io.Copy(io.Discard, stdin)
			cancel(errors.New("stdin closed (pass --no-stdin to run without holding stdin open)"))
		}()
	}

	if err := s.prepareDir(); err != nil {
		s.logf("error: %v", err)
		return 1
	}
	err := s.start(ctx)
	if err == nil {
		st := State{
			Server: s.server, Kubeconfig: filepath.Join(s.dir, "kubeconfig"), Dir: s.dir,
			BinDir: s.binDir, Ports: s.ports, RealNode: s.node,
		}
		st.Version, err = s.version(ctx)
		if err == nil {
			data, _ := json.MarshalIndent(st, "", "  ")
			err = pki.WriteFileAtomic(filepath.Join(s.dir, stateFile), append(data, '\n'), 0o644)
		}
		if err == nil {
			line, _ := json.Marshal(ReadyLine{
				Kubeconfig: st.Kubeconfig, Server: st.Server, Dir: st.Dir, BinDir: st.BinDir, Version: st.Version,
				RealNode: st.RealNode,
			})
			if _, err = fmt.Fprintf(stdout, "%s\n", line); err == nil {
				if f, ok := stdout.(*os.File); ok {
					f.Sync()
				}
			}
		}
	}
	code := 0
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			s.logf("startup interrupted: %v", cause)
		} else {
			s.logf("error: %v", err)
			code = 1
		}
	} else {
		s.logf("cluster ready: %s (dir %s)", s.server, s.dir)
		if opts.NoStdin {
			s.logf("running; stop with Ctrl-C / SIGTERM")
		} else {
			s.logf("running; stop by closing stdin, Ctrl-C or SIGTERM")
		}
		requests := make(chan controlRequest)
		closeControl, err := serveControl(ctx, s.dir, requests)
		if err != nil {
			s.logf("warning: %v (`testcluster apiserver` will not work)", err)
			closeControl = func() {}
		}
	serve:
		for {
			select {
			case <-ctx.Done():
				s.logf("shutting down: %v", context.Cause(ctx))
				break serve
			case c := <-s.exitedCh:
				s.logf("error: %s exited unexpectedly (%v); last lines of %s:\n%s",
					c.name, c.err, c.logPath, tail(c.logPath, 20))
				code = 1
				break serve
			case req := <-requests:
				// On this goroutine (the main OS thread): see spawn.
				req.reply <- s.control(ctx, req.command)
			}
		}
		closeControl()
	}
	s.teardown()
	if mps, err := mountsUnder(s.dir); err != nil || len(mps) > 0 {
		// Never recurse into a mount: it could be a host directory.
		s.logf("error: not removing %s: mounts left under it: %v %v", s.dir, mps, err)
		code = 1
	} else if opts.Keep {
		s.logf("kept %s", s.dir)
	} else if err := os.RemoveAll(s.dir); err != nil {
		s.logf("error: removing %s: %v", s.dir, err)
		code = 1
	}
	return code
}

func (s *supervisor) prepareDir() error {
	dir := s.opts.Dir
	if dir == "" {
		root := DefaultRoot()
		if err := os.MkdirAll(root, 0o755); err != nil {
			return err
		}
		d, err := os.MkdirTemp(root, "c-")
		if err != nil {
			return err
		}
		dir = d
	} else {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return err
		}
		dir = abs
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if empty, err := dirEmpty(dir); err != nil {
			return err
		} else if !empty {
			return fmt.Errorf("--dir %s is not empty (a leftover cluster? run `testcluster down --dir %s`)", dir, dir)
		}
	}
	s.dir = dir
	for _, sub := range []string{"logs", "pki", "kubeconfigs", "etcd", "kwok-home"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	// Order matters for `cleanup`: once the marker exists, pids.json names the supervisor.
	argv, err := proc.Cmdline(os.Getpid())
	if err != nil || len(argv) == 0 {
		argv = os.Args
	}
	s.pids.Supervisor = &proc.Record{Name: "testcluster", Pid: os.Getpid(), Argv: argv}
	if err := proc.Write(filepath.Join(dir, pidsFile), s.pids); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, supervisorFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, markerFile), []byte("deskpod testcluster directory; remove with `testcluster down --dir`\n"), 0o644)
}

func (s *supervisor) start(ctx context.Context) error {
	t0 := time.Now()
	// Binaries.
	if s.opts.BinDir != "" {
		abs, err := filepath.Abs(s.opts.BinDir)
		if err != nil {
			return err
		}
		s.binDir = abs
	} else {
		comp := s.opts.ComponentsDir
		if comp == "" {
			var err error
			if comp, err = build.FindComponentsDir(); err != nil {
				return err
			}
		}
		bin, err := build.Ensure(ctx, comp, s.stderr)
		if err != nil {
			return err
		}
		s.binDir = bin
	}
	nodeBin := s.binDir
	if s.opts.RealNode && s.opts.ComponentsDir != "" {
		bin, err := build.EnsureNode(ctx, s.opts.ComponentsDir, s.stderr)
		if err != nil {
			return err
		}
		nodeBin = bin
	}
	for _, b := range requiredBinaries {
		if _, err := os.Stat(filepath.Join(s.binDir, b)); err != nil {
			return fmt.Errorf("binary %s missing in %s: %v", b, s.binDir, err)
		}
	}
	if s.opts.RealNode {
		for _, b := range build.NodeBinaries() {
			if _, err := os.Stat(filepath.Join(nodeBin, b)); err != nil {
				return fmt.Errorf("binary %s missing in %s: %v", b, nodeBin, err)
			}
		}
		for _, b := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip"} {
			if _, err := exec.LookPath(b); err != nil {
				return fmt.Errorf("the real node needs %s (Debian packages containerd, runc, iproute2): %v", b, err)
			}
		}
		if _, err := os.Stat(filepath.Join(cniBinDir, "bridge")); err != nil {
			return fmt.Errorf("the real node needs the CNI plugins in %s (Debian package containernetworking-plugins): %v", cniBinDir, err)
		}
	}
	tBuild := time.Now()

	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()

	if err := s.makePKI(); err != nil {
		return fmt.Errorf("generating certificates: %w", err)
	}
	stages := filepath.Join(s.dir, "kwok-stages.yaml")
	if err := os.WriteFile(stages, cluster.KwokStages, 0o644); err != nil {
		return err
	}
	pkiDir := filepath.Join(s.dir, "pki")
	p := func(name string) string { return filepath.Join(pkiDir, name) }

	// etcd.
	etcdPorts, err := s.startWithRetry(ctx, nEtcd, 2, func(pt []int) []string {
		client := fmt.Sprintf("http://127.0.0.1:%d", pt[0])
		peer := fmt.Sprintf("http://127.0.0.1:%d", pt[1])
		return []string{
			"--name=default",
			"--data-dir=" + filepath.Join(s.dir, "etcd"),
			"--listen-client-urls=" + client,
			"--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peer,
			"--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=default=" + peer,
			"--initial-cluster-state=new",
			"--unsafe-no-fsync=true", // throwaway data: skip fsync for speed
			"--log-level=warn",
		}
	}, func(ctx context.Context, pt []int) error {
		return plainGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/health", pt[0]))
	})
	if err != nil {
		return err
	}
	s.ports["etcdClient"], s.ports["etcdPeer"] = etcdPorts[0], etcdPorts[1]

	// kube-apiserver.
	auditArgs, err := s.auditArgs()
	if err != nil {
		return err
	}
	apiPorts, err := s.startWithRetry(ctx, nAPIServer, 1, func(pt []int) []string {
		return append(auditArgs,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			// Since 1.37 the lease endpoint reconciler rejects a loopback
			// advertise address; the kubernetes Service then has no endpoints,
			// which nothing here needs (kwok pods do not run).
			"--endpoint-reconciler-type=none",
			"--secure-port="+strconv.Itoa(pt[0]),
			"--cert-dir="+filepath.Join(s.dir, "pki"),
			"--tls-cert-file="+p("apiserver.crt"),
			"--tls-private-key-file="+p("apiserver.key"),
			"--client-ca-file="+p("ca.crt"),
			"--etcd-servers="+fmt.Sprintf("http://127.0.0.1:%d", s.ports["etcdClient"]),
			"--authorization-mode=Node,RBAC",
			"--allow-privileged=true",
			"--service-cluster-ip-range="+ServiceCIDR,
			"--service-account-issuer=https://kubernetes.default.svc."+ClusterDomain,
			"--service-account-key-file="+p("sa.pub"),
			"--service-account-signing-key-file="+p("sa.key"),
			// Aggregation-layer front proxy, as kubeadm sets it up; without it
			// every delegating component logs missing requestheader CA errors.
			"--requestheader-client-ca-file="+p("front-proxy-ca.crt"),
			"--requestheader-allowed-names=front-proxy-client",
			"--requestheader-username-headers=X-Remote-User",
			"--requestheader-group-headers=X-Remote-Group",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--proxy-client-cert-file="+p("front-proxy-client.crt"),
			"--proxy-client-key-file="+p("front-proxy-client.key"),
			"--kubelet-client-certificate="+p("apiserver-kubelet-client.crt"),
			"--kubelet-client-key="+p("apiserver-kubelet-client.key"),
			// kwok's and the real kubelet's serving certificates are signed by the cluster CA.
			"--kubelet-certificate-authority="+p("ca.crt"),
			// Nodes are kwok nodes whose InternalIP is 127.0.0.1; never resolve hostnames.
			"--kubelet-preferred-address-types=InternalIP",
			"--profiling=false",
		)
	}, func(ctx context.Context, pt []int) error {
		if err := s.setServer(pt[0]); err != nil {
			return err
		}
		return s.api.okGet(ctx, "/readyz")
	})
	if err != nil {
		return err
	}
	s.ports["apiserver"] = apiPorts[0]
	if err := s.writeKubeconfigs(); err != nil {
		return err
	}
	kc := func(name string) string { return filepath.Join(s.dir, "kubeconfigs", name+".kubeconfig") }

	// Nodes can be created right away; kwok picks them up when it starts.
	if err := s.createNodes(ctx); err != nil {
		return err
	}

	// kube-controller-manager, kube-scheduler, kwok.
	securePortHealth := func(ctx context.Context, pt []int) error {
		return s.api.okGet(ctx, fmt.Sprintf("https://127.0.0.1:%d/healthz", pt[0]))
	}
	kcmPorts, err := s.startWithRetry(ctx, nKCM, 1, func(pt []int) []string {
		return []string{
			"--kubeconfig=" + kc(nKCM),
			"--authentication-kubeconfig=" + kc(nKCM),
			"--authorization-kubeconfig=" + kc(nKCM),
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(pt[0]),
			"--tls-cert-file=" + p("serving.crt"),
			"--tls-private-key-file=" + p("serving.key"),
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + p("sa.key"),
			"--root-ca-file=" + p("ca.crt"),
			"--cluster-signing-cert-file=" + p("ca.crt"),
			"--cluster-signing-key-file=" + p("ca.key"),
			"--allocate-node-cidrs=true",
			"--cluster-cidr=" + ClusterCIDR,
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--leader-elect=false",
			"--profiling=false",
			// Quotas are recounted at this period (default 5m). The quota controller discovers a
			// new CRD within 30 s, but a quota created before that keeps an unknown count for the
			// CRD's objects until the next full resync. Tests install CRDs seconds before use.
			"--resource-quota-sync-period=15s",
			// Dynamic provisioning for the default StorageClass (see StorageClassObject).
			"--enable-hostpath-provisioner=true",
			// The default client limits (20 requests/s per controller) make the volume binder
			// provision about one claim a second: hundreds of workspaces would wait minutes.
			"--kube-api-qps=200",
			"--kube-api-burst=400",
		}
	}, securePortHealth)
	if err != nil {
		return err
	}
	s.ports["kubeControllerManager"] = kcmPorts[0]

	schedPorts, err := s.startWithRetry(ctx, nScheduler, 1, func(pt []int) []string {
		return []string{
			"--kubeconfig=" + kc(nScheduler),
			"--authentication-kubeconfig=" + kc(nScheduler),
			"--authorization-kubeconfig=" + kc(nScheduler),
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(pt[0]),
			"--tls-cert-file=" + p("serving.crt"),
			"--tls-private-key-file=" + p("serving.key"),
			"--leader-elect=false",
			"--profiling=false",
		}
	}, securePortHealth)
	if err != nil {
		return err
	}
	s.ports["kubeScheduler"] = schedPorts[0]

	kwokPorts, err := s.startWithRetry(ctx, nKwok, 1, func(pt []int) []string {
		return []string{
			"--config=" + stages,
			"--kubeconfig=" + kc(nKwok),
			"--manage-all-nodes=false",
			"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
			"--cidr=" + ClusterCIDR, // fallback only: pod IPs come from each node's podCIDR
			"--node-ip=127.0.0.1",
			"--node-port=" + strconv.Itoa(pt[0]),
			"--server-address=" + fmt.Sprintf("127.0.0.1:%d", pt[0]),
			"--tls-cert-file=" + p("serving.crt"),
			"--tls-private-key-file=" + p("serving.key"),
			"--node-lease-duration-seconds=40",
		}
	}, securePortHealth)
	if err != nil {
		return err
	}
	s.ports["kwok"] = kwokPorts[0]

	if s.opts.RealNode {
		if err := s.startRealNode(ctx, nodeBin); err != nil {
			return fmt.Errorf("real node: %w", err)
		}
	}
	if err := s.waitReady(ctx); err != nil {
		return err
	}
	if s.opts.RealNode {
		s.logf("real node %s ready %s after start", s.node.Name, time.Since(t0).Round(100*time.Millisecond))
		code, body, err := s.api.do(ctx, http.MethodPost, "/apis/storage.k8s.io/v1/storageclasses", RealNodeStorageClassObject())
		if err != nil || (code != http.StatusCreated && code != http.StatusConflict) {
			return fmt.Errorf("creating StorageClass %s: HTTP %d %v %s", RealNodeStorageClass, code, err, body)
		}
		go s.provisionRealNodeVolumes(s.provisionCtx)
		for _, img := range s.opts.ImportImages {
			if err := importImage(ctx, s.node, img, s.stderr); err != nil {
				return err
			}
		}
	}
	s.logf("ready in %s (build check %s, start %s)", time.Since(t0).Round(100*time.Millisecond),
		tBuild.Sub(t0).Round(100*time.Millisecond), time.Since(tBuild).Round(100*time.Millisecond))
	return nil
}

// startWithRetry allocates nports free loopback ports, starts the component
// and waits for health. If the component dies because a port was taken in
// the meantime, it retries with new ports.
func (s *supervisor) startWithRetry(ctx context.Context, name string, nports int,
	args func([]int) []string, health func(context.Context, []int) error) ([]int, error) {
	const attempts = 3
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(nports)
		if err != nil {
			return nil, err
		}
		c, err := s.spawn(name, args(ports))
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		err = s.waitHealthy(ctx, c, func(ctx context.Context) error { return health(ctx, ports) })
		if err == nil {
			s.logf("%s up (pid %d, ports %v) in %s", name, c.cmd.Process.Pid, ports, time.Since(t0).Round(100*time.Millisecond))
			return ports, nil
		}
		if c.exited() && attempt < attempts && strings.Contains(tail(c.logPath, 50), "address already in use") {
			s.logf("%s: a port was taken meanwhile, retrying with new ports", name)
			continue
		}
		return nil, err
	}
}

func (s *supervisor) waitHealthy(ctx context.Context, c *child, health func(context.Context) error) error {
	var last error
	for {
		if c.exited() {
			return fmt.Errorf("%s exited during startup (%v); last lines of %s:\n%s", c.name, c.err, c.logPath, tail(c.logPath, 25))
		}
		hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		last = health(hctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy: %v (last check: %v); last lines of %s:\n%s",
				c.name, ctx.Err(), last, c.logPath, tail(c.logPath, 25))
		case <-c.done:
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// spawn starts a component in its own process group, with SIGKILL as the
// parent-death signal, output to DIR/logs/<name>.log, and records it in
// pids.json. It must run on the locked main OS thread (see main), because the
// parent-death signal fires when the forking thread exits.
func (s *supervisor) spawn(name string, args []string) (*child, error) {
	return s.spawnPath(name, filepath.Join(s.binDir, name), args)
}

// spawnPath is spawn for a binary at path (a bare name is looked up in PATH).
func (s *supervisor) spawnPath(name, path string, args []string) (*child, error) {
	logPath := filepath.Join(s.dir, "logs", name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== testcluster: starting %s at %s\n", name, time.Now().Format(time.RFC3339))
	cmd := exec.Command(path, args...)
	cmd.Dir = s.dir
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = os.Environ()
	if name == nKwok {
		// kwok also loads ~/.kwok/kwok.yaml if present; keep it to ours.
		cmd.Env = append(cmd.Env, "HOME="+filepath.Join(s.dir, "kwok-home"))
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return nil, errors.New("shutting down")
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	s.children = append(s.children, c)
	s.pids.Processes = append(s.pids.Processes, proc.Record{Name: name, Pid: cmd.Process.Pid, Argv: cmd.Args})
	if err := proc.Write(filepath.Join(s.dir, pidsFile), s.pids); err != nil {
		s.logf("warning: writing pids.json: %v", err)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
		s.mu.Lock()
		stopping := s.stopping || c.expectExit
		s.mu.Unlock()
		if !stopping {
			select {
			case s.exitedCh <- c:
			default:
			}
		}
	}()
	return c, nil
}

// teardown stops every child: SIGTERM to each process group, clients first
// (kwok, scheduler, controller-manager), then kube-apiserver, then etcd (an
// apiserver whose etcd is gone hangs in shutdown); up to 10 s grace in all,
// then SIGKILL; it returns once all are reaped.
func (s *supervisor) teardown() {
	s.mu.Lock()
	s.stopping = true
	children := append([]*child(nil), s.children...)
	s.mu.Unlock()
	if len(children) == 0 {
		return
	}
	t0 := time.Now()
	s.stopProvision()
	if s.node != nil {
		// Nothing new may land on the real node while it is drained: ReplicaSets and Deskpod's
		// own controllers (running there as pods) would otherwise replace what the drain deletes.
		s.stopNamed(5*time.Second, nScheduler, nKCM)
	}
	s.stopRealNode()
	s.logf("stopping %d processes", len(children))
	tier := func(c *child) int {
		switch c.name {
		case nEtcd:
			return 2
		case nAPIServer:
			return 1
		}
		return 0
	}
	deadline := time.After(10 * time.Second)
	expired := false
	for t := 0; t <= 2 && !expired; t++ {
		for _, c := range children {
			if tier(c) == t && !c.exited() {
				syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
			}
		}
		for _, c := range children {
			if tier(c) != t || expired {
				continue
			}
			select {
			case <-c.done:
			case <-deadline:
				expired = true
			}
		}
	}
	for _, c := range children {
		if !c.exited() {
			s.logf("%s (pid %d) did not stop in 10s; killing", c.name, c.cmd.Process.Pid)
		}
		// Also reaches anything left in the group after the leader exited.
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	}
	for _, c := range children {
		<-c.done
	}
	s.logf("all processes stopped in %s", time.Since(t0).Round(100*time.Millisecond))
}

// stopNamed stops the named children (SIGTERM, then SIGKILL after wait) and waits for them.
func (s *supervisor) stopNamed(wait time.Duration, names ...string) {
	s.mu.Lock()
	var stopping []*child
	for _, c := range s.children {
		if slices.Contains(names, c.name) && !c.exited() {
			stopping = append(stopping, c)
		}
	}
	s.mu.Unlock()
	for _, c := range stopping {
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.After(wait)
	for _, c := range stopping {
		select {
		case <-c.done:
		case <-deadline:
			syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.done
		}
	}
}

func (s *supervisor) makePKI() error {
	dir := filepath.Join(s.dir, "pki")
	ca, err := pki.NewCA("deskpod-testcluster-ca")
	if err != nil {
		return err
	}
	if err := ca.Write(dir, "ca"); err != nil {
		return err
	}
	s.ca = ca
	dns, ips, err := pki.APIServerSANs(ServiceCIDR, ClusterDomain)
	if err != nil {
		return err
	}
	loop := []net.IP{net.IPv4(127, 0, 0, 1).To4()}
	certs := []struct {
		file string
		req  pki.Request
	}{
		{"apiserver", pki.Request{CommonName: "kube-apiserver", DNSNames: dns, IPs: ips, Server: true}},
		{"apiserver-kubelet-client", pki.Request{CommonName: "kube-apiserver-kubelet-client", Organizations: []string{"system:masters"}, Client: true}},
		{"serving", pki.Request{CommonName: "127.0.0.1", DNSNames: []string{"localhost"}, IPs: loop, Server: true}},
		{"admin", pki.Request{CommonName: "deskpod-admin", Organizations: []string{"system:masters"}, Client: true}},
		{nKCM, pki.Request{CommonName: "system:kube-controller-manager", Client: true}},
		{nScheduler, pki.Request{CommonName: "system:kube-scheduler", Client: true}},
		{nKwok, pki.Request{CommonName: "kwok-controller", Organizations: []string{"system:masters"}, Client: true}},
	}
	for _, c := range certs {
		ck, err := ca.Sign(c.req)
		if err != nil {
			return err
		}
		if err := ck.Write(dir, c.file); err != nil {
			return err
		}
		if c.file == "admin" {
			s.admin = ck
		}
	}
	fpCA, err := pki.NewCA("deskpod-testcluster-front-proxy-ca")
	if err != nil {
		return err
	}
	if err := fpCA.Write(dir, "front-proxy-ca"); err != nil {
		return err
	}
	fp, err := fpCA.Sign(pki.Request{CommonName: "front-proxy-client", Client: true})
	if err != nil {
		return err
	}
	if err := fp.Write(dir, "front-proxy-client"); err != nil {
		return err
	}
	return pki.WriteSigningKeyPair(dir, "sa")
}

func (s *supervisor) setServer(port int) error {
	server := fmt.Sprintf("https://127.0.0.1:%d", port)
	if s.api != nil && s.server == server {
		return nil
	}
	api, err := newAPIClient(server, s.ca, s.admin)
	if err != nil {
		return err
	}
	s.server, s.api = server, api
	return nil
}

func (s *supervisor) writeKubeconfigs() error {
	pkiDir := filepath.Join(s.dir, "pki")
	if err := pki.WriteKubeconfig(filepath.Join(s.dir, "kubeconfig"), s.server, s.ca.CertPEM, "deskpod-admin", s.admin); err != nil {
		return err
	}
	for _, n := range []string{nKCM, nScheduler, nKwok} {
		ck, err := pki.Load(pkiDir, n)
		if err != nil {
			return err
		}
		if err := pki.WriteKubeconfig(filepath.Join(s.dir, "kubeconfigs", n+".kubeconfig"), s.server, s.ca.CertPEM, n, ck); err != nil {
			return err
		}
	}
	return nil
}

// NodeObject returns the Node that `up` creates for kwok node i.
// StorageClassName is the cluster's default StorageClass. kube-controller-manager's
// test-only hostPath provisioner (--enable-hostpath-provisioner) serves it: each claim gets a
// new directory under /tmp/hostpath_pv/, removed when a claim with reclaim policy Delete goes.
const StorageClassName = "standard"

// StorageClassObject is the default StorageClass, so PersistentVolumeClaims bind and pods that
// mount them can be scheduled.
func StorageClassObject() map[string]any {
	return map[string]any{
		"apiVersion": "storage.k8s.io/v1",
		"kind":       "StorageClass",
		"metadata": map[string]any{
			"name":        StorageClassName,
			"annotations": map[string]string{"storageclass.kubernetes.io/is-default-class": "true"},
		},
		"provisioner":       "kubernetes.io/host-path",
		"reclaimPolicy":     "Delete",
		"volumeBindingMode": "Immediate",
	}
}

func NodeObject(i int, cpu, memory string, pods int) map[string]any {
	name := fmt.Sprintf("kwok-node-%d", i)
	res := map[string]string{"cpu": cpu, "memory": memory, "pods": strconv.Itoa(pods)}
	return map[string]any{
		"apiVersion": "v1",
		"kind":       "Node",
		"metadata": map[string]any{
			"name": name,
			"annotations": map[string]string{
				"kwok.x-k8s.io/node":           "fake",
				"node.alpha.kubernetes.io/ttl": "0",
			},
			"labels": map[string]string{
				"type":                   "kwok",
				"kubernetes.io/hostname": name,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
			},
		},
		"spec":   map[string]any{},
		"status": map[string]any{"capacity": res, "allocatable": res},
	}
}

func (s *supervisor) createNodes(ctx context.Context) error {
	for i := 0; i < s.opts.Nodes; i++ {
		node := NodeObject(i, s.opts.NodeCPU, s.opts.NodeMemory, s.opts.NodePods)
		code, body, err := s.api.do(ctx, http.MethodPost, "/api/v1/nodes", node)
		if err != nil {
			return fmt.Errorf("creating node %d: %w", i, err)
		}
		if code != http.StatusCreated && code != http.StatusConflict {
			return fmt.Errorf("creating node %d: HTTP %d: %s", i, code, body)
		}
	}
	code, body, err := s.api.do(ctx, http.MethodPost, "/apis/storage.k8s.io/v1/storageclasses", StorageClassObject())
	if err != nil {
		return fmt.Errorf("creating the default StorageClass: %w", err)
	}
	if code != http.StatusCreated && code != http.StatusConflict {
		return fmt.Errorf("creating the default StorageClass: HTTP %d: %s", code, body)
	}
	return nil
}

// waitReady waits until every kwok node is Ready, has a podCIDR and no taints
// (the not-ready taint is removed by the node lifecycle controller), and the
// default ServiceAccount exists (pods are rejected before that).
func (s *supervisor) waitReady(ctx context.Context) error {
	var last, prev string
	blame := nKwok
	t0 := time.Now()
	for {
		last, blame = s.readiness(ctx)
		if last == "" && s.node != nil {
			last, blame = s.realNodeReadiness(ctx), nKubelet
			s.recordShims()
		}
		if last == "" {
			return nil
		}
		if reason := strings.SplitN(last, ":", 2)[0]; reason != prev {
			s.logf("waiting (%s): %s", time.Since(t0).Round(100*time.Millisecond), last)
			prev = reason
		}
		for _, c := range s.children {
			if c.exited() {
				return fmt.Errorf("%s exited during startup (%v); last lines of %s:\n%s", c.name, c.err, c.logPath, tail(c.logPath, 25))
			}
		}
		select {
		case <-ctx.Done():
			c := s.find(blame)
			return fmt.Errorf("cluster not ready: %v: %s; last lines of %s:\n%s", ctx.Err(), last, c.logPath, tail(c.logPath, 25))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (s *supervisor) find(name string) *child {
	for _, c := range s.children {
		if c.name == name {
			return c
		}
	}
	return s.children[len(s.children)-1]
}

// readiness returns "" when ready, else what is missing and which component
// is responsible.
func (s *supervisor) readiness(ctx context.Context) (string, string) {
	if err := s.api.okGet(ctx, "/readyz"); err != nil {
		return "apiserver /readyz: " + err.Error(), nAPIServer
	}
	code, body, err := s.api.do(ctx, http.MethodGet, "/api/v1/nodes?labelSelector=type%3Dkwok", nil)
	if err != nil || code != http.StatusOK {
		return fmt.Sprintf("listing nodes: HTTP %d %v", code, err), nAPIServer
	}
	var nl nodeList
	if err := json.Unmarshal(body, &nl); err != nil {
		return "decoding nodes: " + err.Error(), nAPIServer
	}
	seen := map[string]bool{}
	for _, n := range nl.Items {
		seen[n.Metadata.Name] = true
		ready := false
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				ready = true
			}
		}
		switch {
		case !ready:
			return "node " + n.Metadata.Name + " not Ready", nKwok
		case n.Spec.PodCIDR == "":
			return "node " + n.Metadata.Name + " has no podCIDR yet", nKCM
		case len(n.Spec.Taints) > 0:
			return fmt.Sprintf("node %s still tainted (%s:%s)", n.Metadata.Name, n.Spec.Taints[0].Key, n.Spec.Taints[0].Effect), nKCM
		}
	}
	for i := 0; i < s.opts.Nodes; i++ {
		if name := fmt.Sprintf("kwok-node-%d", i); !seen[name] {
			return "node " + name + " missing", nAPIServer
		}
	}
	if err := s.api.okGet(ctx, "/api/v1/namespaces/default/serviceaccounts/default"); err != nil {
		return "default ServiceAccount: " + err.Error(), nKCM
	}
	return "", ""
}

func (s *supervisor) version(ctx context.Context) (string, error) {
	code, body, err := s.api.do(ctx, http.MethodGet, "/version", nil)
	if err != nil {
		return "", err
	}
	var v versionInfo
	if code != http.StatusOK || json.Unmarshal(body, &v) != nil || v.GitVersion == "" {
		return "", fmt.Errorf("GET /version: HTTP %d: %s", code, body)
	}
	return v.GitVersion, nil
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. All listeners are
// held until all ports are chosen so that they differ.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func plainGet(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	return nil
}
