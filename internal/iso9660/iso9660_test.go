package iso9660

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// need returns the path of a Debian tool the test reads volumes with,
// skipping (failing under CI=true) when it is not installed.
func need(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (apt-get install %s; scripts/deps.sh --test)", tool, pkg)
		}
		t.Skipf("%s not installed (apt-get install %s)", tool, pkg)
	}
	return p
}

func writeISO(t *testing.T, opt Options, files []File) string {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, opt, files); err != nil {
		t.Fatal(err)
	}
	if b.Len()%sector != 0 {
		t.Fatalf("size %d is not whole sectors", b.Len())
	}
	p := filepath.Join(t.TempDir(), "seed.iso")
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// seedFiles is a NoCloud seed with a file larger than a sector, an empty
// file, and names that need Joliet.
func seedFiles() []File {
	big := bytes.Repeat([]byte("#cloud-config line ü\n"), 400) // > 2 sectors
	return []File{
		{Name: "user-data", Data: big},
		{Name: "meta-data", Data: []byte("instance-id: vm-1\nlocal-hostname: vm-1\n")},
		{Name: "network-config", Data: []byte("version: 2\n")},
		{Name: "vendor-data", Data: nil},
	}
}

func TestIsoinfoReadsIt(t *testing.T) {
	isoinfo := need(t, "isoinfo", "genisoimage")
	mod := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	img := writeISO(t, Options{VolumeID: "cidata", Modified: mod}, seedFiles())

	pvd := run(t, isoinfo, "-d", "-i", img)
	for _, want := range []string{"Volume id: cidata", "Joliet with UCS level 3 found", "Logical block size is: 2048"} {
		if !strings.Contains(pvd, want) {
			t.Errorf("isoinfo -d lacks %q:\n%s", want, pvd)
		}
	}
	list := run(t, isoinfo, "-J", "-l", "-i", img)
	for _, name := range []string{"user-data", "meta-data", "network-config", "vendor-data"} {
		if !strings.Contains(list, " "+name) {
			t.Errorf("isoinfo -J -l does not list %s:\n%s", name, list)
		}
	}
	prim := run(t, isoinfo, "-l", "-i", img)
	for _, name := range []string{"META_DAT.;1", "USER_DAT.;1", "NETWORK_.;1"} {
		if !strings.Contains(prim, name) {
			t.Errorf("primary names lack %s:\n%s", name, prim)
		}
	}
	for _, f := range seedFiles() {
		got := run(t, isoinfo, "-J", "-i", img, "-x", "/"+f.Name)
		if got != string(f.Data) {
			t.Errorf("%s: isoinfo -x gave %d bytes, want %d", f.Name, len(got), len(f.Data))
		}
	}
}

func TestXorrisoReadsIt(t *testing.T) {
	xorriso := need(t, "xorriso", "xorriso")
	img := writeISO(t, Options{VolumeID: "cidata"}, seedFiles())
	// -indev loads the tree (Joliet names where there is no Rock Ridge);
	// -check_media reads every block; -osirrox extracts the files.
	out := t.TempDir()
	log := run(t, xorriso, "-abort_on", "WARNING", "-indev", img, "-pvd_info", "-find", "/", "-exec", "lsdl", "--",
		"-osirrox", "on", "-extract", "/", out)
	if !strings.Contains(log, "Volume Id    : cidata") {
		t.Errorf("xorriso -pvd_info lacks the volume id:\n%s", log)
	}
	for _, f := range seedFiles() {
		got, err := os.ReadFile(filepath.Join(out, f.Name))
		if err != nil {
			t.Errorf("xorriso did not extract %s: %v\n%s", f.Name, err, log)
			continue
		}
		if !bytes.Equal(got, f.Data) {
			t.Errorf("%s: extracted %d bytes, want %d", f.Name, len(got), len(f.Data))
		}
	}
}

func TestDeterministic(t *testing.T) {
	var a, b bytes.Buffer
	if err := Write(&a, Options{VolumeID: "cidata"}, seedFiles()); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, Options{VolumeID: "cidata"}, seedFiles()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two writes of the same input differ")
	}
}

func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		desc  string
		opt   Options
		files []File
	}{
		{"no volume id", Options{}, nil},
		{"volume id too long for Joliet", Options{VolumeID: strings.Repeat("x", 17)}, nil},
		{"slash in a name", Options{VolumeID: "v"}, []File{{Name: "a/b"}}},
		{"name given twice", Options{VolumeID: "v"}, []File{{Name: "A"}, {Name: "a"}}},
		{"name too long", Options{VolumeID: "v"}, []File{{Name: strings.Repeat("n", 65)}}},
		{"dot dot", Options{VolumeID: "v"}, []File{{Name: ".."}}},
	} {
		if err := Write(&bytes.Buffer{}, tc.opt, tc.files); err == nil {
			t.Errorf("%s: no error", tc.desc)
		}
	}
}

func TestPrimaryNamesUnique(t *testing.T) {
	used := map[string]bool{}
	got := []string{primaryName("meta-data", used), primaryName("meta-datum", used), primaryName("x.tar.gz", used)}
	want := []string{"META_DAT.;1", "META_DA1.;1", "X_TAR.GZ;1"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("got %q, want %q", got[i], want[i])
		}
	}
}
