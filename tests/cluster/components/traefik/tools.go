//go:build tools

// Build-only module: pins the Traefik command that the forward-auth end-to-end test
// (portal/tests/ingress_forward_auth.rs) builds with ./build and caches by version.
package tools

import _ "github.com/traefik/traefik/v3/cmd/traefik"
