package image

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// TestDamagedImageKeptForItsVMs proves a gold image that fails its start-up
// check (here: a file written into its tree after publishing, as VMware
// once wrote a .vmsd beside the gold .vmx) is kept while VMs depend on it:
// reported as damaged, refused to new VMs, removed by Release once unused,
// and fetched again by the next Ensure. Unused, it is removed at start-up
// as before.
func TestDamagedImageKeptForItsVMs(t *testing.T) {
	data := buildTar(t, sampleEntries())
	srv := newServer(t, data)
	spec := specFor(srv.URL+"/x", data)
	dir := filepath.Join(t.TempDir(), "images")
	damage := func(g *Gold) {
		t.Helper()
		must(t, os.Chmod(g.Dir, 0o755))
		must(t, os.WriteFile(filepath.Join(g.Dir, "gold.vmsd"), []byte("snapshot.numSnapshots = \"1\"\n"), 0o444))
		must(t, os.Chmod(g.Dir, 0o555))
	}

	s := newStoreAt(t, dir, testOptions())
	g, err := ensure(t, s, spec)
	must(t, err)
	s.Close()
	damage(g)

	users := 1
	opts := testOptions()
	opts.InUse = func(key string) int {
		if key == g.Key {
			return users
		}
		return 0
	}
	s2 := newStoreAt(t, dir, opts)
	info, err := s2.Info(g.Key)
	must(t, err)
	if info.Damaged == "" {
		t.Fatalf("Info of the damaged image: %+v, want it marked damaged", info)
	}
	if _, err := os.Stat(filepath.Join(g.Dir, "disk.qcow2")); err != nil {
		t.Fatalf("the damaged image's disk is gone although a VM depends on it: %v", err)
	}
	_, err = ensure(t, s2, spec)
	wantCode(t, err, CodeDamaged, errdefs.ErrConflict)
	inUse := func(string) int { return users }
	must(t, s2.Release(g.Key, inUse))
	if _, err := s2.Info(g.Key); err != nil {
		t.Fatalf("Release removed an image still in use: %v", err)
	}
	users = 0
	must(t, s2.Release(g.Key, inUse))
	if names := storeNames(t, s2); slices.Contains(names, g.Key) {
		t.Fatalf("Release kept the unused damaged image: %v", names)
	}
	g2, err := ensure(t, s2, spec)
	must(t, err)
	s2.Close()

	// Without users it is removed at start-up.
	damage(g2)
	s3 := newStoreAt(t, dir, opts)
	if names := storeNames(t, s3); slices.Contains(names, g.Key) {
		t.Fatalf("an unused damaged image was kept: %v", names)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
