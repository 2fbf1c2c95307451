module github.com/arangodb/kube-arangodb

go 1.19

require example.com/probe-harness v0.0.0

replace example.com/probe-harness => ../probe-harness
