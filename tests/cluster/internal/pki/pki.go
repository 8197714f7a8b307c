// Package pki generates the certificates, keys and kubeconfig files of a test
// cluster with crypto/x509 (ECDSA P-256 throughout).
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Validity of every certificate. Clusters live for a test run; a year keeps
// `--keep` clusters usable for a long debugging session.
const Validity = 365 * 24 * time.Hour

// CertKey is a certificate with its private key, parsed and PEM-encoded.
type CertKey struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	KeyPEM  []byte
}

// Request describes a leaf certificate to sign.
type Request struct {
	CommonName    string
	Organizations []string
	DNSNames      []string
	IPs           []net.IP
	Server        bool // ExtKeyUsageServerAuth
	Client        bool // ExtKeyUsageClientAuth
}

// NewKey returns a fresh ECDSA P-256 key.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewCA creates a self-signed CA.
func NewCA(commonName string) (*CertKey, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return newCertKey(der, key)
}

func newCertKey(der []byte, key *ecdsa.PrivateKey) (*CertKey, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &CertKey{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// Sign issues a leaf certificate for req, signed by ca.
func (ca *CertKey) Sign(req Request) (*CertKey, error) {
	if !req.Server && !req.Client {
		return nil, errors.New("pki: request must be for a server, a client, or both")
	}
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	var usages []x509.ExtKeyUsage
	if req.Server {
		usages = append(usages, x509.ExtKeyUsageServerAuth)
	}
	if req.Client {
		usages = append(usages, x509.ExtKeyUsageClientAuth)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: req.CommonName, Organization: req.Organizations},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(Validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usages,
		BasicConstraintsValid: true,
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, err
	}
	return newCertKey(der, key)
}

// Write stores the pair as dir/name.crt and dir/name.key (0600).
func (ck *CertKey) Write(dir, name string) error {
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), ck.CertPEM, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".key"), ck.KeyPEM, 0o600)
}

// Load reads dir/name.crt and dir/name.key as written by Write.
func Load(dir, name string) (*CertKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, name+".crt"))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, name+".key"))
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("pki: %s.crt: no CERTIFICATE block", name)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "EC PRIVATE KEY" {
		return nil, fmt.Errorf("pki: %s.key: no EC PRIVATE KEY block", name)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %s.key: %w", name, err)
	}
	return newCertKey(cb.Bytes, key)
}

// WriteSigningKeyPair writes a fresh service-account signing key pair as
// dir/name.key (EC PRIVATE KEY) and dir/name.pub (PKIX PUBLIC KEY).
func WriteSigningKeyPair(dir, name string) error {
	key, err := NewKey()
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".pub"),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644)
}

// FirstIP returns the first usable address of a CIDR (network address + 1):
// the ClusterIP of the `kubernetes` Service for a service CIDR.
func FirstIP(cidr string) (net.IP, error) {
	_, ipnet, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, err
	}
	ip := make(net.IP, len(ipnet.IP))
	copy(ip, ipnet.IP)
	for i := len(ip) - 1; i >= 0; i-- {
		ip[i]++
		if ip[i] != 0 {
			break
		}
	}
	if !ipnet.Contains(ip) {
		return nil, fmt.Errorf("pki: %s has no usable address", cidr)
	}
	if v4 := ip.To4(); v4 != nil {
		return v4, nil
	}
	return ip, nil
}

// APIServerSANs returns the subject alternative names of the kube-apiserver
// serving certificate: loopback, the in-cluster DNS names of the kubernetes
// Service, and its ClusterIP (the first IP of serviceCIDR).
func APIServerSANs(serviceCIDR, clusterDomain string) ([]string, []net.IP, error) {
	svcIP, err := FirstIP(serviceCIDR)
	if err != nil {
		return nil, nil, err
	}
	dns := []string{
		"localhost",
		"kubernetes",
		"kubernetes.default",
		"kubernetes.default.svc",
		"kubernetes.default.svc." + clusterDomain,
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1).To4(), svcIP}
	return dns, ips, nil
}
