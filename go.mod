module github.com/goldvm/goldvm

go 1.26.8

require (
	github.com/klauspost/compress v1.20.4
	github.com/ulikunitz/xz v0.5.17
	go.etcd.io/bbolt v1.5.0
	golang.org/x/sys v0.45.0
)

require golang.org/x/sync v0.25.0
