package qemu

// A template's RAM for QEMUs that run under a user id of their own per VM.
//
// QEMU 7.2 opens a memory-backend-file read-write even for a private
// mapping, so such a QEMU is never given ram.bin (every VM's QEMU could then
// change the memory every later VM starts with). Instead the daemon copies
// ram.bin once into a memfd and seals it (F_SEAL_WRITE, F_SEAL_SHRINK,
// F_SEAL_GROW, F_SEAL_SEAL): from then on the kernel refuses every write to
// it, every change of its size, every shared writable mapping and every
// change of the seals, to every process, the daemon included. Each QEMU
// gets the memfd as a descriptor, opens it as /proc/self/fd/N (QEMU's
// memory-backend-file needs a path) and maps it privately (share=off):
// its guest's writes are copied on write into the QEMU's own memory, and
// the pages nobody wrote are shared by all VMs of the template, as with the
// RAM file. The restore loads the device state alone (state.bin), not the
// full stream with the RAM in it. The cost: the daemon holds one copy of the
// guest's RAM in memory (shmem) per template a VM has started from, until
// the template's image is dropped or the daemon exits.

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// sealedSeals are the seals a template's memfd carries.
const sealedSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL

// sealedTemplateRAM returns the sealed memfd copy of t's RAM file, made at
// its first use.
func (d *Driver) sealedTemplateRAM(t Template) (*os.File, error) {
	d.sealedMu.Lock()
	defer d.sealedMu.Unlock()
	if f, ok := d.sealed[t.Dir]; ok {
		return f, nil
	}
	f, err := sealedCopy(p(t.Dir, fileTplRAM), "goldvm-template-"+t.Key)
	if err != nil {
		return nil, err
	}
	if d.sealed == nil {
		d.sealed = map[string]*os.File{}
	}
	d.sealed[t.Dir] = f
	return f, nil
}

// dropSealedRAM closes the memfds of the templates under dir.
func (d *Driver) dropSealedRAM(dir string) {
	d.sealedMu.Lock()
	defer d.sealedMu.Unlock()
	for k, f := range d.sealed {
		if k == dir || strings.HasPrefix(k, dir+string(filepath.Separator)) {
			f.Close()
			delete(d.sealed, k)
		}
	}
}

// sealedCopy copies the file at path into a new memfd named name and seals
// it against any change.
func sealedCopy(path, name string) (*os.File, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	n, err := io.Copy(f, src)
	if err == nil && n != fi.Size() {
		err = fmt.Errorf("copied %d of %d bytes", n, fi.Size())
	}
	if err == nil {
		_, err = unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, sealedSeals)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("sealed copy of %s: %w", path, err)
	}
	return f, nil
}
