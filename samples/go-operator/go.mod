module example.com/sample-operator

go 1.19
