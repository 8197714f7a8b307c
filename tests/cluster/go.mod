module deskpod.io/tests/cluster

go 1.26.0
