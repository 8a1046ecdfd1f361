//go:build unix

package image

import (
	"io/fs"
	"syscall"
)

// allocated returns the bytes fi occupies on disk (holes excluded).
func allocated(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int64(st.Blocks) * 512
	}
	return fi.Size()
}
