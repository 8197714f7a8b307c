package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"deskpod.io/tests/cluster/internal/pki"
)

// apiClient is a minimal HTTPS client for the cluster's endpoints, trusting
// only the cluster CA and optionally presenting a client certificate.
type apiClient struct {
	http   *http.Client
	server string
}

func newAPIClient(server string, ca *pki.CertKey, client *pki.CertKey) (*apiClient, error) {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if client != nil {
		pair, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return &apiClient{
		server: server,
		http: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				Proxy:             nil, // loopback only, never through a proxy
				TLSClientConfig:   cfg,
				DisableKeepAlives: false,
				MaxIdleConns:      4,
				IdleConnTimeout:   30 * time.Second,
			},
		},
	}, nil
}

// do sends a request to url (absolute) or path (relative to server) and
// returns status and body.
func (c *apiClient) do(ctx context.Context, method, url string, body any) (int, []byte, error) {
	if len(url) > 0 && url[0] == '/' {
		url = c.server + url
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, data, err
}

// okGet returns nil when GET url answers 200.
func (c *apiClient) okGet(ctx context.Context, url string) error {
	code, body, err := c.do(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		if len(body) > 300 {
			body = body[:300]
		}
		return fmt.Errorf("GET %s: HTTP %d: %s", url, code, bytes.TrimSpace(body))
	}
	return nil
}

// Minimal views of the API objects the supervisor reads.

type nodeList struct {
	Items []struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			PodCIDR string `json:"podCIDR"`
			Taints  []struct {
				Key    string `json:"key"`
				Effect string `json:"effect"`
			} `json:"taints"`
		} `json:"spec"`
		Status struct {
			Conditions []struct {
				Type   string `json:"type"`
				Status string `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
	} `json:"items"`
}

type versionInfo struct {
	GitVersion string `json:"gitVersion"`
}
