// Package build compiles the test-cluster components (Kubernetes control
// plane, etcd, kwok) from the build-only Go modules under components/ and
// caches the binaries under a content-addressed key.
package build

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Recipe identifies how the binaries are built (flags, tags, binary set).
// Bump it when build commands change so that caches are rebuilt.
const Recipe = "recipe-1"

// Component is one build-only module and what is built from it.
type Component struct {
	Name   string // directory name under components/
	Module string // the module it requires (its version is the component version)
	// Targets maps output binary name -> main package.
	Targets []Target
}

// Target is one binary built from a main package.
type Target struct {
	Binary  string
	Package string
}

// Components is the fixed set of components, in build order.
var Components = []Component{
	{Name: "etcd", Module: "go.etcd.io/etcd/server/v3", Targets: []Target{
		{"etcd", "go.etcd.io/etcd/server/v3"},
	}},
	{Name: "kwok", Module: "sigs.k8s.io/kwok", Targets: []Target{
		{"kwok", "sigs.k8s.io/kwok/cmd/kwok"},
	}},
	{Name: "kubernetes", Module: "k8s.io/kubernetes", Targets: []Target{
		{"kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"},
		{"kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager"},
		{"kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler"},
		{"kubectl", "k8s.io/kubernetes/cmd/kubectl"},
	}},
}

// NodeComponents are built only for a cluster with a real node (`up --real-node`), into a cache
// entry of their own (NodeKey), so clusters without one never wait for them: the kubelet from
// the same k8s.io/kubernetes module as the control plane, and the pod sandbox program.
var NodeComponents = []Component{
	{Name: "kubernetes", Module: "k8s.io/kubernetes", Targets: []Target{
		{"kubelet", "k8s.io/kubernetes/cmd/kubelet"},
	}},
	{Name: "pause", Module: "", Targets: []Target{
		{"pause", "."},
	}},
}

// NodeKeyFiles are the files, relative to componentsDir, hashed into NodeKey.
var NodeKeyFiles = []string{"kubernetes/go.mod", "kubernetes/go.sum", "pause/go.mod", "pause/main.go"}

// NodeBinaries lists the binaries of the node cache entry.
func NodeBinaries() []string {
	var out []string
	for _, c := range NodeComponents {
		for _, t := range c.Targets {
			out = append(out, t.Binary)
		}
	}
	return out
}

// Binaries lists every binary the cache holds.
func Binaries() []string {
	var out []string
	for _, c := range Components {
		for _, t := range c.Targets {
			out = append(out, t.Binary)
		}
	}
	return out
}

// Versions are the pinned component versions, read from the components' go.mod.
type Versions struct {
	Kubernetes string `json:"kubernetes"`
	Etcd       string `json:"etcd"`
	Kwok       string `json:"kwok"`
}

// ModuleVersion returns the version with which go.mod content requires module.
func ModuleVersion(gomod []byte, module string) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	inRequire := false
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.Index(line, "//"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		switch {
		case line == "require (":
			inRequire = true
			continue
		case inRequire && line == ")":
			inRequire = false
			continue
		}
		var f []string
		if inRequire {
			f = strings.Fields(line)
		} else if strings.HasPrefix(line, "require ") {
			f = strings.Fields(strings.TrimPrefix(line, "require "))
		}
		if len(f) == 2 && f[0] == module {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("go.mod does not require %s", module)
}

// ReadVersions reads the component versions from componentsDir/*/go.mod.
func ReadVersions(componentsDir string) (Versions, error) {
	var v Versions
	for _, c := range Components {
		data, err := os.ReadFile(filepath.Join(componentsDir, c.Name, "go.mod"))
		if err != nil {
			return v, err
		}
		ver, err := ModuleVersion(data, c.Module)
		if err != nil {
			return v, fmt.Errorf("%s/go.mod: %w", c.Name, err)
		}
		switch c.Name {
		case "kubernetes":
			v.Kubernetes = ver
		case "etcd":
			v.Etcd = ver
		case "kwok":
			v.Kwok = ver
		}
	}
	return v, nil
}

// KeyFiles are the files, relative to componentsDir, whose content is hashed
// into the cache key.
func KeyFiles() []string {
	var out []string
	for _, c := range Components {
		out = append(out, c.Name+"/go.mod", c.Name+"/go.sum")
	}
	return out
}

// Key returns the cache key: readable versions plus the first 12 hex digits
// of a sha256 over the build recipe and the components' go.mod/go.sum files.
func Key(componentsDir string) (string, Versions, error) {
	v, err := ReadVersions(componentsDir)
	if err != nil {
		return "", v, err
	}
	sum, err := hashFiles(componentsDir, Recipe, KeyFiles())
	if err != nil {
		return "", v, err
	}
	return fmt.Sprintf("k8s-%s_etcd-%s_kwok-%s_%s", v.Kubernetes, v.Etcd, v.Kwok, sum), v, nil
}

// NodeKey returns the cache key of the node binaries (kubelet, pause):
// node-k8s-<version>_<12 hex digits over the recipe and NodeKeyFiles>.
func NodeKey(componentsDir string) (string, Versions, error) {
	v, err := ReadVersions(componentsDir)
	if err != nil {
		return "", v, err
	}
	sum, err := hashFiles(componentsDir, Recipe+" node", NodeKeyFiles)
	if err != nil {
		return "", v, err
	}
	return fmt.Sprintf("node-k8s-%s_%s", v.Kubernetes, sum), v, nil
}

func hashFiles(componentsDir, recipe string, files []string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", recipe)
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(componentsDir, f))
		if err != nil {
			return "", err
		}
		// Length-prefix each file so that content cannot shift between files.
		fmt.Fprintf(h, "%s %d\n", f, len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// CacheRoot returns ${DESKPOD_CACHE_DIR:-$HOME/.cache/deskpod}/testcluster.
func CacheRoot() (string, error) {
	base := os.Getenv("DESKPOD_CACHE_DIR")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("neither DESKPOD_CACHE_DIR nor HOME is set: %w", err)
		}
		base = filepath.Join(home, ".cache", "deskpod")
	}
	return filepath.Abs(filepath.Join(base, "testcluster"))
}

// KubeLdflags returns the -X flags that stamp the Kubernetes version into
// component-base and client-go, as hack/lib/version.sh does, so that
// /version and `kubectl version` report it and the binary version used for
// compatibility-version checks is right.
func KubeLdflags(version string) ([]string, error) {
	v := strings.TrimPrefix(version, "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 || !strings.HasPrefix(version, "v") {
		return nil, fmt.Errorf("unexpected Kubernetes version %q", version)
	}
	minor := parts[1]
	var out []string
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		out = append(out,
			"-X", pkg+".gitVersion="+version,
			"-X", pkg+".gitMajor="+parts[0],
			"-X", pkg+".gitMinor="+minor,
			"-X", pkg+".gitTreeState=clean",
			"-X", pkg+".buildDate=1970-01-01T00:00:00Z",
		)
	}
	return out, nil
}

// Commands returns the `go build` argument lists for every component, with
// outputs in binDir.
func Commands(v Versions, binDir string) (map[string][]string, error) {
	return commands(Components, v, binDir)
}

// NodeCommands returns the `go build` argument lists for NodeComponents.
func NodeCommands(v Versions, binDir string) (map[string][]string, error) {
	return commands(NodeComponents, v, binDir)
}

func commands(components []Component, v Versions, binDir string) (map[string][]string, error) {
	kube, err := KubeLdflags(v.Kubernetes)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, c := range components {
		args := []string{"build", "-trimpath"}
		ld := []string{"-s", "-w"}
		switch c.Name {
		case "kubernetes":
			// Same tags as the Kubernetes release build (hack/lib/golang.sh).
			args = append(args, "-tags=selinux,notest,grpcnotrace")
			ld = append(ld, kube...)
		case "kwok":
			ld = append(ld, "-X", "sigs.k8s.io/kwok/pkg/consts.Version="+strings.TrimPrefix(v.Kwok, "v"))
		}
		args = append(args, "-ldflags="+joinLdflags(ld))
		if len(c.Targets) == 1 {
			args = append(args, "-o", filepath.Join(binDir, c.Targets[0].Binary), c.Targets[0].Package)
		} else {
			// With several packages, -o names a directory; binaries are named
			// after the last package path element.
			args = append(args, "-o", binDir+string(filepath.Separator))
			for _, t := range c.Targets {
				if filepath.Base(t.Package) != t.Binary {
					return nil, fmt.Errorf("%s: binary %s must match package base name", c.Name, t.Binary)
				}
				args = append(args, t.Package)
			}
		}
		out[c.Name] = args
	}
	return out, nil
}

func joinLdflags(ld []string) string {
	// -X values contain no spaces, so a plain join is safe.
	return strings.Join(ld, " ")
}

// Stamp is written last into a completed cache entry.
type Stamp struct {
	Key       string   `json:"key"`
	Versions  Versions `json:"versions"`
	Recipe    string   `json:"recipe"`
	GoVersion string   `json:"goVersion"`
	BuiltAt   string   `json:"builtAt"`
	Seconds   float64  `json:"buildSeconds"`
	Binaries  []string `json:"binaries"`
}

// Paths returns the cache entry directory, its bin dir and its stamp file.
func Paths(cacheRoot, key string) (entry, bin, stamp string) {
	entry = filepath.Join(cacheRoot, key)
	return entry, filepath.Join(entry, "bin"), filepath.Join(entry, "stamp.json")
}

// Complete reports whether a cache entry is complete: stamp present and all
// binaries present.
func Complete(cacheRoot, key string) bool {
	return complete(cacheRoot, key, Binaries())
}

func complete(cacheRoot, key string, binaries []string) bool {
	_, bin, stamp := Paths(cacheRoot, key)
	if _, err := os.Stat(stamp); err != nil {
		return false
	}
	for _, b := range binaries {
		if fi, err := os.Stat(filepath.Join(bin, b)); err != nil || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// Ensure makes sure the binaries for the components in componentsDir are in
// the cache and returns the bin directory. Progress goes to log. Concurrent
// callers serialize on a lock file; a build happens in a temporary directory
// that is renamed into place only after the stamp is written.
func Ensure(ctx context.Context, componentsDir string, log io.Writer) (string, error) {
	key, versions, err := Key(componentsDir)
	if err != nil {
		return "", err
	}
	return ensure(ctx, componentsDir, key, versions, Components, Commands, log)
}

// EnsureNode is Ensure for the node binaries (kubelet, pause; see NodeComponents).
func EnsureNode(ctx context.Context, componentsDir string, log io.Writer) (string, error) {
	key, versions, err := NodeKey(componentsDir)
	if err != nil {
		return "", err
	}
	return ensure(ctx, componentsDir, key, versions, NodeComponents, NodeCommands, log)
}

func ensure(ctx context.Context, componentsDir, key string, versions Versions, components []Component,
	commands func(Versions, string) (map[string][]string, error), log io.Writer) (string, error) {
	cacheRoot, err := CacheRoot()
	if err != nil {
		return "", err
	}
	var binaries []string
	for _, c := range components {
		for _, t := range c.Targets {
			binaries = append(binaries, t.Binary)
		}
	}
	entry, bin, _ := Paths(cacheRoot, key)
	if complete(cacheRoot, key, binaries) {
		return bin, nil
	}
	if err := os.MkdirAll(cacheRoot, 0o755); err != nil {
		return "", err
	}
	unlock, err := lock(ctx, filepath.Join(cacheRoot, "."+key+".lock"), log)
	if err != nil {
		return "", err
	}
	defer unlock()
	if complete(cacheRoot, key, binaries) { // built by another process meanwhile
		return bin, nil
	}
	// Holding the lock, no other build of this key runs: temp dirs of
	// killed builds can go.
	if stale, _ := filepath.Glob(filepath.Join(cacheRoot, "."+key+".tmp-*")); len(stale) > 0 {
		for _, d := range stale {
			os.RemoveAll(d)
		}
	}

	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building the test cluster needs the go tool: %w", err)
	}
	tmp, err := os.MkdirTemp(cacheRoot, "."+key+".tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp) // no-op after a successful rename
	tmpBin := filepath.Join(tmp, "bin")
	if err := os.Mkdir(tmpBin, 0o755); err != nil {
		return "", err
	}
	cmds, err := commands(versions, tmpBin)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(log, "testcluster: building %s into %s (this takes a while the first time)\n", key, bin)
	start := time.Now()
	for _, c := range components {
		t0 := time.Now()
		var names []string
		for _, t := range c.Targets {
			names = append(names, t.Binary)
		}
		fmt.Fprintf(log, "testcluster: building %s (%s) ...\n", c.Name, strings.Join(names, ", "))
		if err := runGo(ctx, goBin, filepath.Join(componentsDir, c.Name), cmds[c.Name], log); err != nil {
			return "", fmt.Errorf("building %s: %w", c.Name, err)
		}
		fmt.Fprintf(log, "testcluster: built %s in %s\n", c.Name, time.Since(t0).Round(time.Second))
	}
	goVersion := runtime.Version()
	if out, err := exec.Command(goBin, "env", "GOVERSION").Output(); err == nil {
		goVersion = strings.TrimSpace(string(out))
	}
	st := Stamp{
		Key: key, Versions: versions, Recipe: Recipe, GoVersion: goVersion,
		BuiltAt: time.Now().UTC().Format(time.RFC3339), Seconds: time.Since(start).Seconds(),
		Binaries: binaries,
	}
	data, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "stamp.json"), append(data, '\n'), 0o644); err != nil {
		return "", err
	}
	// An incomplete entry (no stamp) can only come from outside this code;
	// clear it so the rename can succeed.
	if _, err := os.Stat(entry); err == nil {
		if err := os.RemoveAll(entry); err != nil {
			return "", err
		}
	}
	if err := os.Rename(tmp, entry); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "testcluster: build complete in %s\n", time.Since(start).Round(time.Second))
	return bin, nil
}

func runGo(ctx context.Context, goBin, dir string, args []string, log io.Writer) error {
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"CGO_ENABLED=0",
		"GOWORK=off", // a go.work higher up must not pull these modules in
	)
	cmd.Stdout = log
	cmd.Stderr = log
	// Own process group, so that cancellation also stops the compilers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	shown := make([]string, len(args))
	for i, a := range args {
		shown[i] = a
		if strings.ContainsAny(a, " \t'\"") {
			shown[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	fmt.Fprintf(log, "  (cd %s && go %s)\n", dir, strings.Join(shown, " "))
	return cmd.Run()
}

func lock(ctx context.Context, path string, log io.Writer) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	told := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		if !told {
			fmt.Fprintf(log, "testcluster: waiting for another build of the same cache entry (%s)\n", path)
			told = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// FindComponentsDir locates tests/cluster/components: $DESKPOD_TESTCLUSTER_COMPONENTS,
// else the working directory and its parents (as …/components or
// …/tests/cluster/components), else the source location of this package.
func FindComponentsDir() (string, error) {
	ok := func(d string) bool {
		_, err := os.Stat(filepath.Join(d, "kubernetes", "go.mod"))
		return err == nil
	}
	if d := os.Getenv("DESKPOD_TESTCLUSTER_COMPONENTS"); d != "" {
		if !ok(d) {
			return "", fmt.Errorf("DESKPOD_TESTCLUSTER_COMPONENTS=%s has no kubernetes/go.mod", d)
		}
		return filepath.Abs(d)
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			for _, c := range []string{
				filepath.Join(d, "components"),
				filepath.Join(d, "tests", "cluster", "components"),
			} {
				if ok(c) && isHarnessModule(filepath.Dir(c)) {
					return c, nil
				}
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	if _, file, _, ok2 := runtime.Caller(0); ok2 && filepath.IsAbs(file) {
		// file = <root>/internal/build/build.go
		c := filepath.Join(filepath.Dir(file), "..", "..", "components")
		if ok(c) {
			return filepath.Abs(c)
		}
	}
	return "", errors.New("cannot find tests/cluster/components: run from inside the Deskpod checkout, " +
		"or set DESKPOD_TESTCLUSTER_COMPONENTS or pass --components")
}

func isHarnessModule(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "module deskpod.io/tests/cluster" {
			return true
		}
	}
	return false
}
