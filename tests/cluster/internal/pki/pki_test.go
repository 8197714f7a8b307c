package pki

import (
	"crypto/x509"
	"net"
	"slices"
	"strings"
	"testing"
)

func TestFirstIP(t *testing.T) {
	for cidr, want := range map[string]string{
		"10.96.0.0/16":  "10.96.0.1",
		"10.0.0.0/24":   "10.0.0.1",
		"10.0.0.255/32": "",
		"fd00::/108":    "fd00::1",
	} {
		ip, err := FirstIP(cidr)
		if want == "" {
			if err == nil {
				t.Errorf("FirstIP(%s) = %v, want error", cidr, ip)
			}
			continue
		}
		if err != nil || ip.String() != want {
			t.Errorf("FirstIP(%s) = %v, %v; want %s", cidr, ip, err, want)
		}
	}
}

func TestAPIServerCertSANs(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	dns, ips, err := APIServerSANs("10.96.0.0/16", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Sign(Request{CommonName: "kube-apiserver", DNSNames: dns, IPs: ips, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	wantDNS := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	for _, d := range wantDNS {
		if !slices.Contains(srv.Cert.DNSNames, d) {
			t.Errorf("DNS SAN %s missing: %v", d, srv.Cert.DNSNames)
		}
	}
	for _, ip := range []string{"127.0.0.1", "10.96.0.1"} {
		if !slices.ContainsFunc(srv.Cert.IPAddresses, func(x net.IP) bool { return x.Equal(net.ParseIP(ip)) }) {
			t.Errorf("IP SAN %s missing: %v", ip, srv.Cert.IPAddresses)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, host := range append(wantDNS, "127.0.0.1", "10.96.0.1") {
		if _, err := srv.Cert.Verify(x509.VerifyOptions{DNSName: host, Roots: roots}); err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	if _, err := srv.Cert.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: roots}); err == nil {
		t.Error("certificate unexpectedly valid for example.com")
	}
}

func TestClientCertAndLoad(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.Write(dir, "ca"); err != nil {
		t.Fatal(err)
	}
	loaded, err := Load(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) || !loaded.Key.Equal(ca.Key) {
		t.Fatal("Load did not round-trip the CA")
	}
	cl, err := loaded.Sign(Request{CommonName: "alice", Organizations: []string{"dev", "qa"}, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	if cl.Cert.Subject.CommonName != "alice" || !slices.Equal(slices.Sorted(slices.Values(cl.Cert.Subject.Organization)), []string{"dev", "qa"}) {
		t.Errorf("subject = %v", cl.Cert.Subject)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := cl.Cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client cert does not verify for client auth: %v", err)
	}
	if _, err := cl.Cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("client cert unexpectedly valid for server auth")
	}
	if _, err := ca.Sign(Request{CommonName: "nobody"}); err == nil {
		t.Error("Sign without usage should fail")
	}
	if err := WriteSigningKeyPair(dir, "sa"); err != nil {
		t.Fatal(err)
	}
}

func TestKubeconfig(t *testing.T) {
	ca, _ := NewCA("ca")
	cl, _ := ca.Sign(Request{CommonName: "u", Client: true})
	kc := string(Kubeconfig("https://127.0.0.1:6443", ca.CertPEM, "u\"x", cl))
	for _, want := range []string{
		`server: "https://127.0.0.1:6443"`,
		"certificate-authority-data: ",
		"client-certificate-data: ",
		"client-key-data: ",
		`user: "u\"x"`,
		`current-context: "deskpod-test"`,
	} {
		if !strings.Contains(kc, want) {
			t.Errorf("kubeconfig lacks %q:\n%s", want, kc)
		}
	}
}
