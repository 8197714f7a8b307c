// Build-only module: the pod sandbox ("pause") program of the test cluster's real node. The
// harness builds it statically and packs it into the node's sandbox image itself, so nothing is
// pulled from a registry.
module deskpod.io/tests/cluster/components/pause

go 1.26.0
