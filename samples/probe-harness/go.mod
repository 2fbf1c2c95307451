module example.com/probe-harness

go 1.19
