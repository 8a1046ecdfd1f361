package osrelease

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const debianRelease = `PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
ID=debian
`

// tree is a file tree to build: a path maps to a file's contents, or to
// "->target" for a symlink; a path ending in / is a directory.
type tree map[string]string

func (tr tree) write(t testing.TB, dir string) {
	t.Helper()
	for p, v := range tr {
		full := filepath.Join(dir, p)
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if target, ok := strings.CutPrefix(v, "->"); ok {
			err = os.Symlink(target, full)
		} else {
			err = os.WriteFile(full, []byte(v), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// mkfs builds a file system of the given type and size from tr with
// mkfs -d (e2fsprogs) and returns its bytes. With index, e2fsck -D then
// indexes every directory of more than one block (htree).
func mkfs(t testing.TB, fstype, size string, tr tree, index bool, opts ...string) []byte {
	t.Helper()
	mk, err := exec.LookPath("mkfs." + fstype)
	if err != nil {
		if _, err = os.Stat("/usr/sbin/mkfs." + fstype); err != nil {
			t.Skip("e2fsprogs is not installed")
		}
		mk = "/usr/sbin/mkfs." + fstype
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	tr.write(t, root)
	img := filepath.Join(dir, "fs.img")
	args := append([]string{"-q", "-F", "-d", root}, opts...)
	args = append(args, img, size)
	if out, err := exec.Command(mk, args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.%s: %v: %s", fstype, err, out)
	}
	if index {
		// e2fsck exits 1 when it changed the file system (it indexed).
		out, err := exec.Command(filepath.Join(filepath.Dir(mk), "e2fsck"), "-fyD", img).CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
			t.Fatalf("e2fsck -D: %v: %s", err, out)
		}
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func find(t *testing.T, disk []byte) Release {
	t.Helper()
	rel, err := Find(bytes.NewReader(disk), int64(len(disk)))
	if err != nil {
		t.Fatalf("Find: %v", err)
	}
	return rel
}

func TestExt4Plain(t *testing.T) {
	disk := mkfs(t, "ext4", "8M", tree{"etc/os-release": debianRelease, "etc/hostname": "x\n", "usr/lib/": ""}, false)
	rel := find(t, disk)
	if got := rel.Name(); got != "Debian GNU/Linux 12 (bookworm)" {
		t.Errorf("Name = %q", got)
	}
	if rel["ID"] != "debian" || rel["VERSION_ID"] != "12" {
		t.Errorf("release = %v", rel)
	}
}

// bigEtc is a tree whose /etc has n files besides os-release, a symlink to
// ../usr/lib/os-release as on Debian.
func bigEtc(n int, release string) tree {
	tr := tree{"etc/os-release": "->../usr/lib/os-release", "usr/lib/os-release": release}
	for i := range n {
		tr[fmt.Sprintf("etc/file-with-a-longish-name-%05d.conf", i)] = ""
	}
	return tr
}

// TestExt4HtreeSymlink reads os-release through a symlink in an /etc of
// 1000 entries that e2fsck indexed (a hash tree).
func TestExt4HtreeSymlink(t *testing.T) {
	disk := mkfs(t, "ext4", "16M", bigEtc(1000, debianRelease), true, "-b", "1024")
	b := &budget{r: bytes.NewReader(disk), size: int64(len(disk)), left: MaxRead}
	f, err := openExt(b, span{0, int64(len(disk))})
	if err != nil {
		t.Fatal(err)
	}
	root, _ := f.inode(rootInode)
	n, err := f.lookup(root, "etc")
	if err != nil {
		t.Fatal(err)
	}
	etc, _ := f.inode(n)
	if etc.flags&flagIndex == 0 || etc.size <= f.bs {
		t.Fatalf("/etc is not a hash-indexed directory of several blocks (flags %#x, size %d)", etc.flags, etc.size)
	}
	if etc.flags&flagExtents == 0 {
		t.Errorf("/etc does not use extents")
	}
	if _, err := f.lookup(etc, "file-with-a-longish-name-00999.conf"); err != nil {
		t.Errorf("last file of /etc: %v", err)
	}
	if got := find(t, disk).Name(); got != "Debian GNU/Linux 12 (bookworm)" {
		t.Errorf("Name = %q", got)
	}
}

// TestExt2BlockMap reads through ext2's indirect blocks: 1 KiB blocks, a
// directory of many blocks and an os-release of 20 KiB (beyond the 12
// direct blocks).
func TestExt2BlockMap(t *testing.T) {
	long := debianRelease + "# " + strings.Repeat("padding ", 20<<10/8) + "\nBUILD_ID=last-line\n"
	disk := mkfs(t, "ext2", "16M", bigEtc(1500, long), false, "-b", "1024")
	rel := find(t, disk)
	if rel["BUILD_ID"] != "last-line" || rel.Name() != "Debian GNU/Linux 12 (bookworm)" {
		t.Errorf("release = %v", rel)
	}
}

// TestUsrLibFallback finds /usr/lib/os-release when /etc has none, and an
// absolute symlink that climbs above the root stays inside the file system.
func TestUsrLibFallback(t *testing.T) {
	disk := mkfs(t, "ext4", "8M", tree{"etc/": "", "usr/lib/os-release": "->/../../../opt/rel", "opt/rel": "NAME=Fallback\nVERSION=1\n"}, false)
	if got := find(t, disk).Name(); got != "Fallback 1" {
		t.Errorf("Name = %q", got)
	}
}

func TestNotFound(t *testing.T) {
	loop := mkfs(t, "ext4", "8M", tree{"etc/os-release": "->os-release", "usr/lib/os-release": "->/usr/lib/os-release"}, false)
	for name, disk := range map[string][]byte{
		"no file system":  make([]byte, 1<<20),
		"symlink loops":   loop,
		"empty":           nil,
		"no os-release":   mkfs(t, "ext4", "8M", tree{"etc/hostname": "h\n"}, false),
		"etc is a file":   mkfs(t, "ext4", "8M", tree{"etc": "not a dir"}, false),
		"os-release fifo": mkfs(t, "ext4", "8M", tree{"etc/os-release/": ""}, false),
	} {
		_, err := Find(bytes.NewReader(disk), int64(len(disk)))
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: err = %v, want ErrNotFound", name, err)
		}
	}
}

// partitioned returns a disk of the given partition table ("mbr", "gpt")
// with an empty first partition and fs in the second, at 32 KiB.
func partitioned(kind string, fs []byte) []byte {
	const start = 64 * sector
	disk := make([]byte, start+len(fs)+16<<10)
	copy(disk[start:], fs)
	le := binary.LittleEndian
	first := uint32(start / sector)
	fsSectors := uint32(len(fs) / sector)
	mbr := disk[446:]
	switch kind {
	case "mbr":
		mbr[4], mbr[16+4] = 0x0b, 0x83
		le.PutUint32(mbr[8:], 34)
		le.PutUint32(mbr[12:], 30)
		le.PutUint32(mbr[16+8:], first)
		le.PutUint32(mbr[16+12:], fsSectors)
	case "gpt":
		mbr[4] = 0xEE
		le.PutUint32(mbr[8:], 1)
		le.PutUint32(mbr[12:], uint32(len(disk)/sector-1))
		h := disk[sector:]
		copy(h, "EFI PART")
		le.PutUint64(h[72:], 2)
		le.PutUint32(h[80:], 128)
		le.PutUint32(h[84:], 128)
		for i, p := range [][2]uint32{{34, 63}, {first, first + fsSectors - 1}} {
			e := disk[2*sector+128*i:]
			e[0] = byte(i + 1) // a type GUID that is not zero
			le.PutUint64(e[32:], uint64(p[0]))
			le.PutUint64(e[40:], uint64(p[1]))
		}
	}
	disk[510], disk[511] = 0x55, 0xAA
	return disk
}

func TestPartitions(t *testing.T) {
	fs := mkfs(t, "ext4", "8M", tree{"etc/os-release": debianRelease}, false)
	for _, kind := range []string{"mbr", "gpt"} {
		disk := partitioned(kind, fs)
		b := &budget{r: bytes.NewReader(disk), size: int64(len(disk)), left: MaxRead}
		if got := partitions(b); len(got) != 2 || got[1] != (span{64 * sector, int64(len(fs))}) {
			t.Errorf("%s: partitions = %v", kind, got)
		}
		if got := find(t, disk).Name(); got != "Debian GNU/Linux 12 (bookworm)" {
			t.Errorf("%s: Name = %q", kind, got)
		}
	}
}

func TestParse(t *testing.T) {
	rel := Parse([]byte("# comment\nNAME='Single Quoted'\nVERSION=\"a \\\"b\\\" \\$c\"\nbad key=1\nID=plain\n=x\nnoequals\n"))
	want := Release{"NAME": "Single Quoted", "VERSION": `a "b" $c`, "ID": "plain"}
	if fmt.Sprint(rel) != fmt.Sprint(want) {
		t.Errorf("Parse = %v, want %v", rel, want)
	}
	if got := rel.Name(); got != `Single Quoted a "b" $c` {
		t.Errorf("Name = %q", got)
	}
}

// failingReader fails every read past its limit.
type failingReader struct {
	r     *bytes.Reader
	limit int64
}

var errDevice = errors.New("device gone")

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.limit {
		return 0, errDevice
	}
	return f.r.ReadAt(p, off)
}

// TestReaderError: an error of the disk's reader ends the search with it.
func TestReaderError(t *testing.T) {
	disk := mkfs(t, "ext4", "8M", tree{"etc/os-release": debianRelease}, false)
	_, err := Find(failingReader{bytes.NewReader(disk), 4096}, int64(len(disk)))
	if !errors.Is(err, errDevice) {
		t.Errorf("err = %v, want the reader's", err)
	}
}

// FuzzFind feeds Find corrupted file systems: it must return (found or
// not) without panicking, within its read budget. Its seeds are file
// systems of 128 KiB, too big for the fuzzer's minimizer: run it with
// -fuzzminimizetime 0 (go test -run XXX -fuzz FuzzFind -fuzzminimizetime 0).
func FuzzFind(f *testing.F) {
	small := func(fstype string, tr tree, index bool) []byte {
		return mkfs(f, fstype, "128K", tr, index, "-b", "1024", "-N", "64", "-O", "^has_journal,^resize_inode")
	}
	f.Add(small("ext4", tree{"etc/os-release": debianRelease}, false))
	f.Add(small("ext4", bigEtc(40, debianRelease), true))
	f.Add(small("ext2", tree{"etc/os-release": "->../usr/lib/os-release", "usr/lib/os-release": strings.Repeat("A=1\n", 5000)}, false))
	f.Add(partitioned("gpt", small("ext4", tree{"etc/os-release": "ID=x\n"}, false)))
	f.Fuzz(func(t *testing.T, disk []byte) {
		r := &countingReader{r: bytes.NewReader(disk)}
		rel, err := Find(r, int64(len(disk)))
		if err == nil && rel == nil {
			t.Fatal("no release and no error")
		}
		if r.n > MaxRead {
			t.Fatalf("read %d bytes, more than MaxRead", r.n)
		}
	})
}

type countingReader struct {
	r *bytes.Reader
	n int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.n += int64(len(p))
	return c.r.ReadAt(p, off)
}
