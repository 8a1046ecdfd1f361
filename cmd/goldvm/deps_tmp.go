package main

import (
	_ "github.com/digitalocean/go-qemu/qmp"
	_ "github.com/klauspost/compress/gzip"
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/ulikunitz/xz"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/sync/singleflight"
)

func main() {}
