package diskfmttest

import (
	"encoding/binary"
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// Target makes a file in dir for hostile disks to aim at and watches it
// with inotify. opened reports how many times any process opened or read
// it since the watch began (the kernel tells, however short the open).
func Target(tb testing.TB, dir string) (path string, opened func() int) {
	tb.Helper()
	path = dir + "/target-secret.bin"
	if err := writeFile(path, []byte("goldvm test target: no disk may read this\n")); err != nil {
		tb.Fatal(err)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_OPEN|unix.IN_ACCESS); err != nil {
		tb.Fatal(err)
	}
	events := 0
	return path, func() int {
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if err != nil || n <= 0 {
				return events
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
				events++
				off += unix.SizeofInotifyEvent + nameLen
			}
		}
	}
}

// HasOpen reports whether process pid has file open.
func HasOpen(pid int, file string) bool {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && target == file {
			return true
		}
	}
	return false
}
