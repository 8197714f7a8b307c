// Command testcluster builds, starts and stops Deskpod test clusters: a real
// Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler) built from source, plus kwok for simulated nodes and pods.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"deskpod.io/tests/cluster/internal/build"
	"deskpod.io/tests/cluster/internal/cluster"
)

func init() {
	// Children are started with a parent-death signal (SIGKILL), which Linux
	// ties to the thread that forked them. Keep the main goroutine, which
	// starts them, on the main thread, which lives as long as the process.
	runtime.LockOSThread()
}

const usage = `testcluster: real Kubernetes test clusters for Deskpod (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler built from source; kwok for nodes).

Usage:
  testcluster build      [--components DIR] [--real-node]
  testcluster up         [--dir DIR] [--nodes N] [--node-cpu Q] [--node-memory Q] [--node-pods N]
                         [--bin-dir DIR] [--components DIR] [--timeout D] [--keep] [--no-stdin]
                         [--real-node [--import-image IMAGE ...]]
  testcluster import-image --dir DIR IMAGE...
  testcluster down       --dir DIR
  testcluster cleanup    [--root DIR]
  testcluster kubeconfig --dir DIR --user NAME [--group G ...] --out FILE
  testcluster apiserver  --dir DIR stop|start

Run "testcluster <command> --help" for the flags of a command.

Binaries are cached in ${DESKPOD_CACHE_DIR:-$HOME/.cache/deskpod}/testcluster/<key>/bin.
Cluster directories default to ${TMPDIR:-/tmp}/deskpod-testcluster/<random>.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var code int
	switch cmd {
	case "build":
		code = cmdBuild(args)
	case "up":
		code = cmdUp(args)
	case "down":
		code = cmdDown(args)
	case "cleanup":
		code = cmdCleanup(args)
	case "kubeconfig":
		code = cmdKubeconfig(args)
	case "import-image":
		code = cmdImportImage(args)
	case "apiserver":
		code = cmdAPIServer(args)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(os.Stdout, usage)
	default:
		fmt.Fprintf(os.Stderr, "testcluster: unknown command %q\n\n%s", cmd, usage)
		code = 2
	}
	os.Exit(code)
}

func newFlagSet(name, synopsis, description string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: testcluster %s %s\n\n%s\n\nFlags:\n", name, synopsis, strings.TrimSpace(description))
		fs.PrintDefaults()
	}
	return fs
}

// parse handles -h/--help (exit 0) and errors (exit 2).
func parse(fs *flag.FlagSet, args []string) (ok bool, code int) {
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return false, 0
		}
		return false, 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "testcluster %s: unexpected arguments: %v\n", fs.Name(), fs.Args())
		return false, 2
	}
	return true, 0
}

func componentsFlag(fs *flag.FlagSet) *string {
	return fs.String("components", "",
		"directory of the component build modules (tests/cluster/components); default: "+
			"$DESKPOD_TESTCLUSTER_COMPONENTS, else found from the working directory upwards")
}

func resolveComponents(dir string) (string, error) {
	if dir != "" {
		return filepath.Abs(dir)
	}
	return build.FindComponentsDir()
}

func cmdBuild(args []string) int {
	fs := newFlagSet("build", "[--components DIR]", `
Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and
kwok from the pinned build modules into the cache
  ${DESKPOD_CACHE_DIR:-$HOME/.cache/deskpod}/testcluster/<key>/bin
where <key> = k8s-<v>_etcd-<v>_kwok-<v>_<sha256 of the build recipe and the
components' go.mod/go.sum, 12 hex digits>. Does nothing if that entry is
complete. Progress goes to stderr; the bin directory is printed on stdout.
The first build takes many minutes (Go module downloads via the Go proxy).
With --real-node it also builds the real node's kubelet and pod sandbox program
into their own entry, node-k8s-<v>_<hash>, and prints its bin directory too.`)
	comp := componentsFlag(fs)
	realNode := fs.Bool("real-node", false, "also build the real node's binaries (kubelet, pause)")
	if ok, code := parse(fs, args); !ok {
		return code
	}
	dir, err := resolveComponents(*comp)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testcluster build: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bin, err := build.Ensure(ctx, dir, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testcluster build: %v\n", err)
		return 1
	}
	if *realNode {
		nodeBin, err := build.EnsureNode(ctx, dir, os.Stderr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "testcluster build: %v\n", err)
			return 1
		}
		fmt.Println(nodeBin)
	}
	fmt.Println(bin)
	return 0
}

func cmdUp(args []string) int {
	fs := newFlagSet("up", "[flags]", `
Builds the components if needed (as "build" does), then starts etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and kwok on 127.0.0.1
(free ports), creates the kwok nodes kwok-node-0..N-1 and waits until the API
server is ready, every node is Ready with a podCIDR and no taints, and the
default ServiceAccount exists.

Then it prints exactly one JSON line on stdout:
  {"kubeconfig":"<DIR>/kubeconfig","server":"https://127.0.0.1:<port>","dir":"<DIR>","binDir":"<bin>","version":"v1.37.2"}
and stays in the foreground until SIGINT/SIGTERM/SIGHUP or EOF on stdin
(unless --no-stdin). It then stops every process (SIGTERM to kwok, scheduler
and controller-manager, then kube-apiserver, then etcd; SIGKILL to whatever is
left after 10 s) and removes DIR unless --keep. Progress and errors go to stderr; component logs
are in DIR/logs. Exit status: 0 after a requested shutdown, 1 on failure.

With --real-node, a real node joins as well: kubelet (built from the same
Kubernetes module), Debian's containerd with its config, socket, root and state
under DIR/node, and Debian's CNI plugins on a bridge deskpodtc<i> with pods in
10.200.<i>.0/24 (reachable from the host). The node is
"`+cluster.RealNodeName+`", labelled `+cluster.RealNodeLabel+`=`+cluster.RealNodeLabelValue+` and tainted
`+cluster.RealNodeTaint+`=true:NoSchedule. Needs root and the Debian packages containerd and
containernetworking-plugins. --import-image copies local Docker images into
its containerd before the ready line is printed.`)
	o := cluster.UpOptions{}
	fs.StringVar(&o.Dir, "dir", "", "cluster directory (created; must be empty); default: a new directory under "+cluster.DefaultRoot())
	fs.IntVar(&o.Nodes, "nodes", 2, "number of kwok nodes")
	fs.StringVar(&o.NodeCPU, "node-cpu", "32", "cpu capacity and allocatable of each node")
	fs.StringVar(&o.NodeMemory, "node-memory", "128Gi", "memory capacity and allocatable of each node")
	fs.IntVar(&o.NodePods, "node-pods", 500, "pod capacity and allocatable of each node")
	fs.StringVar(&o.BinDir, "bin-dir", "", "use the binaries in this directory instead of building/caching them")
	comp := componentsFlag(fs)
	fs.DurationVar(&o.Timeout, "timeout", 3*time.Minute, "how long to wait for the cluster to become ready (after the build)")
	fs.BoolVar(&o.Keep, "keep", false, "keep DIR (logs, pki, kubeconfig, etcd data) after shutdown")
	fs.StringVar(&o.AuditLog, "audit-log", "", "write kube-apiserver's audit log (one JSON line per request, Metadata level) to this file")
	fs.BoolVar(&o.NoStdin, "no-stdin", false, "do not shut down on EOF on stdin (for interactive use; stop with Ctrl-C)")
	fs.BoolVar(&o.RealNode, "real-node", false, "also run a real node: kubelet, containerd and CNI (needs root)")
	var images stringList
	fs.Var(&images, "import-image", "with --real-node: a local Docker image to import into the node's containerd (repeatable)")
	if ok, code := parse(fs, args); !ok {
		return code
	}
	o.ImportImages = images
	if len(images) > 0 && !o.RealNode {
		fmt.Fprintln(os.Stderr, "testcluster up: --import-image needs --real-node")
		return 2
	}
	if o.Nodes < 0 {
		fmt.Fprintln(os.Stderr, "testcluster up: --nodes must be >= 0")
		return 2
	}
	if o.BinDir == "" {
		dir, err := resolveComponents(*comp)
		if err != nil {
			fmt.Fprintf(os.Stderr, "testcluster up: %v\n", err)
			return 1
		}
		o.ComponentsDir = dir
	}
	var stdin io.Reader = os.Stdin
	return cluster.Up(o, stdin, os.Stdout, os.Stderr)
}

func cmdDown(args []string) int {
	fs := newFlagSet("down", "--dir DIR", `
Cleans up a cluster directory, typically of a crashed run: asks a still
running supervisor to shut down, stops every process recorded in DIR/pids.json
whose /proc/<pid>/cmdline still matches the recorded argv (a recycled pid is
never signalled), then removes DIR. Refuses directories not created by "up".`)
	dir := fs.String("dir", "", "cluster directory (required)")
	if ok, code := parse(fs, args); !ok {
		return code
	}
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "testcluster down: --dir is required")
		return 2
	}
	if err := cluster.Down(*dir, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "testcluster down: %v\n", err)
		return 1
	}
	return 0
}

func cmdCleanup(args []string) int {
	fs := newFlagSet("cleanup", "[--root DIR]", `
Runs "down" on every cluster directory under the root whose supervisor is no
longer running (its pid, also in DIR/supervisor.pid, and argv are recorded in
DIR/pids.json; a pid now running something else counts as dead). Clusters
whose supervisor still runs, and directories not created by "up", are left
alone.`)
	root := fs.String("root", cluster.DefaultRoot(), "directory holding cluster directories (${TMPDIR:-/tmp}/deskpod-testcluster)")
	if ok, code := parse(fs, args); !ok {
		return code
	}
	n, err := cluster.Cleanup(*root, os.Stderr)
	fmt.Fprintf(os.Stderr, "testcluster cleanup: removed %d cluster directories\n", n)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testcluster cleanup: %v\n", err)
		return 1
	}
	return 0
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func cmdKubeconfig(args []string) int {
	fs := newFlagSet("kubeconfig", "--dir DIR --user NAME [--group G ...] --out FILE", `
Mints a client certificate signed by the cluster's CA (CN=NAME, O=each group)
and writes a kubeconfig for it (embedded CA, certificate and key) to FILE.
The user has no permissions until RBAC grants them (groups such as
system:masters do grant them).`)
	dir := fs.String("dir", "", "cluster directory of a running cluster (required)")
	user := fs.String("user", "", "user name: the certificate's CommonName (required)")
	var groups stringList
	fs.Var(&groups, "group", "group: a certificate Organization (repeatable)")
	out := fs.String("out", "", "kubeconfig file to write (required)")
	if ok, code := parse(fs, args); !ok {
		return code
	}
	if *dir == "" || *user == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "testcluster kubeconfig: --dir, --user and --out are required")
		return 2
	}
	if err := cluster.MintKubeconfig(*dir, *user, groups, *out); err != nil {
		fmt.Fprintf(os.Stderr, "testcluster kubeconfig: %v\n", err)
		return 1
	}
	return 0
}

func cmdImportImage(args []string) int {
	fs := newFlagSet("import-image", "--dir DIR IMAGE...", `
Imports local Docker images into the containerd of a running cluster's real
node (docker save IMAGE | ctr -n k8s.io images import -), so that pods with
imagePullPolicy IfNotPresent (or Never) run them without pulling.`)
	dir := fs.String("dir", "", "cluster directory of a running cluster started with --real-node (required)")
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *dir == "" || fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "testcluster import-image: --dir and at least one IMAGE are required")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cluster.ImportImages(ctx, *dir, fs.Args(), os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "testcluster import-image: %v\n", err)
		return 1
	}
	return 0
}

func cmdAPIServer(args []string) int {
	fs := newFlagSet("apiserver", "--dir DIR stop|start", `
Stops or starts again the kube-apiserver of a running cluster, through its
supervisor's control socket (DIR/control.sock). "stop" kills it (SIGKILL, an
outage as clients see a crash) and returns once it has exited; the rest of the cluster keeps
running and the supervisor does not treat the exit as a failure. "start" runs
it again with the same arguments (same port, certificates and etcd) and returns
once /readyz answers.`)
	dir := fs.String("dir", "", "cluster directory of a running cluster (required)")
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *dir == "" || fs.NArg() != 1 || (fs.Arg(0) != "stop" && fs.Arg(0) != "start") {
		fmt.Fprintln(os.Stderr, "testcluster apiserver: --dir and one of stop, start are required")
		return 2
	}
	if err := cluster.SendControl(*dir, "apiserver "+fs.Arg(0), 2*time.Minute); err != nil {
		fmt.Fprintf(os.Stderr, "testcluster apiserver %s: %v\n", fs.Arg(0), err)
		return 1
	}
	return 0
}
