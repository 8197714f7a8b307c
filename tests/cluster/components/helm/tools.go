//go:build tools

// Build-only module: pins the helm command that the chart tests
// (tests/support/tests/chart.rs) build with ./build and cache by version.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
