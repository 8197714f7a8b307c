package build

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestModuleVersion(t *testing.T) {
	gomod := []byte(`module x

go 1.26.0

require k8s.io/kubernetes v1.37.2 // pinned

require (
	go.etcd.io/etcd/server/v3 v3.7.3
	github.com/x/y v0.1.0 // indirect
)

replace k8s.io/api => k8s.io/api v0.37.2
`)
	for mod, want := range map[string]string{
		"k8s.io/kubernetes":         "v1.37.2",
		"go.etcd.io/etcd/server/v3": "v3.7.3",
		"github.com/x/y":            "v0.1.0",
	} {
		if got, err := ModuleVersion(gomod, mod); err != nil || got != want {
			t.Errorf("ModuleVersion(%s) = %q, %v; want %s", mod, got, err, want)
		}
	}
	if _, err := ModuleVersion(gomod, "k8s.io/api"); err == nil {
		t.Error("replace line must not count as a requirement")
	}
}

func fakeComponents(t *testing.T) string {
	dir := t.TempDir()
	for _, c := range Components {
		d := filepath.Join(dir, c.Name)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "go.mod"), []byte("module m\n\nrequire "+c.Module+" v9.9.9\n"), 0o644)
		os.WriteFile(filepath.Join(d, "go.sum"), []byte(c.Name+" sum\n"), 0o644)
	}
	return dir
}

func TestKeyStable(t *testing.T) {
	dir := fakeComponents(t)
	k1, v, err := Key(dir)
	if err != nil {
		t.Fatal(err)
	}
	if v != (Versions{Kubernetes: "v9.9.9", Etcd: "v9.9.9", Kwok: "v9.9.9"}) {
		t.Errorf("versions = %+v", v)
	}
	if !regexp.MustCompile(`^k8s-v9\.9\.9_etcd-v9\.9\.9_kwok-v9\.9\.9_[0-9a-f]{12}$`).MatchString(k1) {
		t.Errorf("key format: %s", k1)
	}
	k2, _, _ := Key(dir)
	if k1 != k2 {
		t.Errorf("key not stable: %s vs %s", k1, k2)
	}
	// Files outside the key set do not matter.
	os.WriteFile(filepath.Join(dir, "kwok", "tools.go"), []byte("package tools\n"), 0o644)
	if k3, _, _ := Key(dir); k3 != k1 {
		t.Errorf("unrelated file changed the key")
	}
	// Any go.sum change does.
	os.WriteFile(filepath.Join(dir, "etcd", "go.sum"), []byte("etcd sum changed\n"), 0o644)
	if k4, _, _ := Key(dir); k4 == k1 {
		t.Errorf("go.sum change did not change the key")
	}
}

func TestKeyOfRealComponents(t *testing.T) {
	k, v, err := Key(filepath.Join("..", "..", "components"))
	if err != nil {
		t.Fatal(err)
	}
	if v.Kubernetes != "v1.37.2" || v.Etcd != "v3.7.3" || v.Kwok != "v0.8.0" {
		t.Errorf("versions = %+v", v)
	}
	if !strings.HasPrefix(k, "k8s-v1.37.2_etcd-v3.7.3_kwok-v0.8.0_") {
		t.Errorf("key = %s", k)
	}
}

func TestCommands(t *testing.T) {
	cmds, err := Commands(Versions{Kubernetes: "v1.37.2", Etcd: "v3.7.3", Kwok: "v0.8.0"}, "/bin-dir")
	if err != nil {
		t.Fatal(err)
	}
	k := strings.Join(cmds["kubernetes"], " ")
	for _, want := range []string{
		"-trimpath",
		"k8s.io/component-base/version.gitVersion=v1.37.2",
		"k8s.io/component-base/version.gitMajor=1",
		"k8s.io/component-base/version.gitMinor=37",
		"k8s.io/client-go/pkg/version.gitVersion=v1.37.2",
		"-s -w",
		"-o /bin-dir/",
		"k8s.io/kubernetes/cmd/kube-apiserver",
		"k8s.io/kubernetes/cmd/kubectl",
	} {
		if !strings.Contains(k, want) {
			t.Errorf("kubernetes build lacks %q: %s", want, k)
		}
	}
	e := cmds["etcd"]
	if i := slices.Index(e, "-o"); i < 0 || e[i+1] != "/bin-dir/etcd" || e[len(e)-1] != "go.etcd.io/etcd/server/v3" {
		t.Errorf("etcd build: %v", e)
	}
	if _, err := KubeLdflags("1.37"); err == nil {
		t.Error("version without v should be rejected")
	}
}

func TestComplete(t *testing.T) {
	root := t.TempDir()
	_, bin, stamp := Paths(root, "k")
	if Complete(root, "k") {
		t.Fatal("empty entry complete")
	}
	os.MkdirAll(bin, 0o755)
	for _, b := range Binaries() {
		os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\n"), 0o755)
	}
	if Complete(root, "k") {
		t.Fatal("entry without stamp complete")
	}
	os.WriteFile(stamp, []byte("{}"), 0o644)
	if !Complete(root, "k") {
		t.Fatal("entry with stamp and binaries not complete")
	}
	os.Remove(filepath.Join(bin, "kwok"))
	if Complete(root, "k") {
		t.Fatal("entry with a missing binary complete")
	}
}

func TestCacheRoot(t *testing.T) {
	t.Setenv("DESKPOD_CACHE_DIR", "/x/cache")
	if r, _ := CacheRoot(); r != "/x/cache/testcluster" {
		t.Errorf("CacheRoot = %s", r)
	}
	t.Setenv("DESKPOD_CACHE_DIR", "")
	t.Setenv("HOME", "/home/u")
	if r, _ := CacheRoot(); r != "/home/u/.cache/deskpod/testcluster" {
		t.Errorf("CacheRoot = %s", r)
	}
}
