package cluster

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"strings"
	"testing"
)

func TestPauseImageTar(t *testing.T) {
	data, err := PauseImageTar([]byte("\x7fELF-pause"), PauseImage)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name], _ = io.ReadAll(tr)
	}
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("manifest.json: %v %s", err, files["manifest.json"])
	}
	m := manifest[0]
	if len(m.RepoTags) != 1 || m.RepoTags[0] != PauseImage || len(m.Layers) != 1 {
		t.Fatalf("manifest = %+v", m)
	}
	var config struct {
		Config struct {
			Entrypoint []string
			User       string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(files[m.Config], &config); err != nil {
		t.Fatal(err)
	}
	layer := files[m.Layers[0]]
	sum := sha256.Sum256(layer)
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Errorf("diff_ids %v do not match the layer", config.RootFS.DiffIDs)
	}
	if strings.Join(config.Config.Entrypoint, " ") != "/pause" || config.Config.User != "65535:65535" {
		t.Errorf("config = %+v", config.Config)
	}
	lr := tar.NewReader(bytes.NewReader(layer))
	h, err := lr.Next()
	if err != nil || h.Name != "pause" || h.Mode != 0o755 {
		t.Fatalf("layer entry %+v: %v", h, err)
	}
	if body, _ := io.ReadAll(lr); string(body) != "\x7fELF-pause" {
		t.Errorf("layer holds %q", body)
	}
}

func TestContainerdConfigKeepsEverythingUnderTheNodeDir(t *testing.T) {
	ns := &NodeState{ContainerdSocket: "/c/node/containerd.sock", Snapshotter: "overlayfs"}
	conf := containerdConfig("/c/node", ns)
	for _, want := range []string{
		`root = "/c/node/containerd/root"`,
		`state = "/c/node/containerd/state"`,
		`address = "/c/node/containerd.sock"`,
		`sandbox_image = "` + PauseImage + `"`,
		`snapshotter = "overlayfs"`,
		`conf_dir = "/c/node/cni/net.d"`,
		`netns_mounts_under_state_dir = true`,
		`SystemdCgroup = false`,
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("containerd config lacks %s:\n%s", want, conf)
		}
	}
	if strings.Contains(conf, "/var/lib/containerd") || strings.Contains(conf, "/run/containerd") {
		t.Error("containerd config names the system containerd's paths")
	}
}

func TestKubeletConfig(t *testing.T) {
	ns := &NodeState{Gateway: "10.200.3.1", CgroupRoot: "/deskpod-testcluster-1", ContainerdSocket: "/c/s.sock", PodLogsDir: "/c/logs"}
	data, _ := json.Marshal(kubeletConfig(ns, "/c/ca.crt", "/c/kubelet-serving", 4000, 4001))
	var c struct {
		Address            string
		CgroupDriver       string
		FailCgroupV1       *bool
		ReadOnlyPort       int
		PodLogsDir         string
		ContainerRuntimeEP string `json:"containerRuntimeEndpoint"`
		Authentication     struct {
			Anonymous struct{ Enabled bool }
			X509      struct{ ClientCAFile string }
		}
		Authorization      struct{ Mode string }
		RegisterWithTaints []struct{ Key, Value, Effect string }
	}
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	if c.Address != "10.200.3.1" || c.CgroupDriver != "cgroupfs" || c.FailCgroupV1 == nil || *c.FailCgroupV1 ||
		c.ReadOnlyPort != 0 || c.PodLogsDir != "/c/logs" || c.ContainerRuntimeEP != "unix:///c/s.sock" {
		t.Errorf("kubelet config = %+v", c)
	}
	if c.Authentication.Anonymous.Enabled || c.Authentication.X509.ClientCAFile != "/c/ca.crt" || c.Authorization.Mode != "Webhook" {
		t.Errorf("kubelet authn/authz = %+v %+v", c.Authentication, c.Authorization)
	}
	if len(c.RegisterWithTaints) != 1 || c.RegisterWithTaints[0].Key != RealNodeTaint || c.RegisterWithTaints[0].Effect != "NoSchedule" {
		t.Errorf("taints = %+v", c.RegisterWithTaints)
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/tmp/a\040b/c\011d`); got != "/tmp/a b/c\td" {
		t.Errorf("unescapeMount = %q", got)
	}
	if got := unescapeMount("/plain"); got != "/plain" {
		t.Errorf("unescapeMount = %q", got)
	}
}
