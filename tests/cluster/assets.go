// Package cluster holds the files that the Deskpod test-cluster supervisor
// (cmd/testcluster) carries with it. The control-plane components themselves
// are built from the separate build-only modules under components/.
package cluster

import _ "embed"

// KwokStages is the kwok Stage configuration (kwok-stages.yaml) that every
// test cluster's kwok controller loads.
//
//go:embed kwok-stages.yaml
var KwokStages []byte
