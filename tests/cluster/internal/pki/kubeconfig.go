package pki

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Kubeconfig renders a single-cluster, single-user kubeconfig that embeds the
// CA and the client certificate and key. Strings are emitted as JSON strings,
// which are valid YAML double-quoted scalars.
func Kubeconfig(server string, caPEM []byte, user string, client *CertKey) []byte {
	q := func(s string) string {
		b, _ := json.Marshal(s)
		return string(b)
	}
	b64 := base64.StdEncoding.EncodeToString
	const clusterName = "deskpod-test"
	ctxName := clusterName
	var sb strings.Builder
	fmt.Fprintf(&sb, "apiVersion: v1\nkind: Config\n")
	fmt.Fprintf(&sb, "clusters:\n- name: %s\n  cluster:\n    server: %s\n    certificate-authority-data: %s\n",
		q(clusterName), q(server), b64(caPEM))
	fmt.Fprintf(&sb, "users:\n- name: %s\n  user:\n    client-certificate-data: %s\n    client-key-data: %s\n",
		q(user), b64(client.CertPEM), b64(client.KeyPEM))
	fmt.Fprintf(&sb, "contexts:\n- name: %s\n  context:\n    cluster: %s\n    user: %s\n",
		q(ctxName), q(clusterName), q(user))
	fmt.Fprintf(&sb, "current-context: %s\npreferences: {}\n", q(ctxName))
	return []byte(sb.String())
}

// WriteKubeconfig writes Kubeconfig(...) to path (0600) atomically.
func WriteKubeconfig(path, server string, caPEM []byte, user string, client *CertKey) error {
	return WriteFileAtomic(path, Kubeconfig(server, caPEM, user, client), 0o600)
}

// WriteFileAtomic writes data to a temporary file next to path and renames it.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
