package image

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

// A package's machine.json is read at publish, migrated, recorded in the
// marker and given with the image ever after; a bad one fails the fetch
// with image-bad-machine and leaves nothing behind.
func TestMachineJSON(t *testing.T) {
	disk := diskBytes("QFI\xfb", 4096, 1)
	data := buildTar(t, []entry{
		{name: "machine.json", body: []byte(`{"version": 1, "network": "e1000", "cores": 2, "threads": 1, "sockets": 1, "graphics": "qxl-vga"}`)},
		{name: "disk.qcow2", body: disk},
	})
	srv := newServer(t, data)
	opts := testOptions()
	s := newStore(t, opts)
	g, err := ensure(t, s, specFor(srv.URL+"/a.tar", data))
	if err != nil {
		t.Fatal(err)
	}
	want := api.Machine{Version: 2, Network: "e1000", Cores: 2, Threads: 1, Sockets: 1, Graphics: "qxl"}
	if g.Machine == nil || *g.Machine != want {
		t.Fatalf("machine %+v, want %+v", g.Machine, want)
	}
	// From the marker, after a restart.
	s.Close()
	s2, err := NewStore(s.Dir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	g2, err := s2.Get(g.Key)
	if err != nil || g2.Machine == nil || *g2.Machine != want {
		t.Fatalf("after a restart: %+v %v", g2, err)
	}

	for _, bad := range []struct{ name, body string }{
		{"notjson", `{"version": 2,`},
		{"version", `{"version": 9}`},
		{"mac", `{"version": 2, "mac": "ff:ff:ff:ff:ff:ff"}`},
	} {
		t.Run(bad.name, func(t *testing.T) {
			data := buildTar(t, []entry{{name: "machine.json", body: []byte(bad.body)}, {name: "disk.qcow2", body: disk}})
			srv := newServer(t, data)
			s := newStore(t, testOptions())
			_, err := ensure(t, s, specFor(srv.URL+"/b.tar", data))
			wantCode(t, err, api.CodeImageBadMachine, errdefs.ErrInvalid)
			wantEmpty(t, s)
		})
	}
}

// A Verbatim store keeps a download as it is: a gzip-compressed initrd
// stays compressed, a file of no known format is accepted.
func TestVerbatim(t *testing.T) {
	opts := testOptions()
	opts.Verbatim = true
	s := newStore(t, opts)
	for _, data := range [][]byte{gz(t, []byte("an initrd")), []byte("MZ not a disk, a kernel")} {
		srv := newServer(t, data)
		g, err := ensure(t, s, specFor(srv.URL+"/vmlinuz", data))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(g.Dir, MediaFile))
		if err != nil || !bytes.Equal(got, data) || g.Format != "file" {
			t.Fatalf("stored %q (%v, format %s), want the download as it is", got, err, g.Format)
		}
	}
}
