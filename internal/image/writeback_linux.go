//go:build linux

package image

import (
	"os"
	"syscall"
)

// startWriteback asks the kernel to begin writing the given range of f to
// disk without waiting (sync_file_range SYNC_FILE_RANGE_WRITE), so that the
// final fsync has little left to do. It is only a hint: durability still
// comes from the fsync before publishing, and errors are ignored.
func startWriteback(f *os.File, off, n int64) {
	const syncFileRangeWrite = 2
	_, _, _ = syscall.Syscall6(syscall.SYS_SYNC_FILE_RANGE, f.Fd(), uintptr(off), uintptr(n), syncFileRangeWrite, 0, 0)
}
