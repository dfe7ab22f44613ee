module polyllama/impls/go

go 1.19
