package diskfmt_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/goldvm/goldvm/internal/diskfmt"
	"github.com/goldvm/goldvm/internal/diskfmt/diskfmttest"
)

// Every hostile disk is either in a format goldvm refuses or names the
// target (directly, climbing out, or through a protocol).
func TestHostileDisksAreCaught(t *testing.T) {
	const target = "/srv/secret/target.bin"
	for _, c := range diskfmttest.Hostile(target) {
		t.Run(c.Name, func(t *testing.T) {
			caught := false
			for _, f := range c.Files {
				format, err := diskfmt.Detect(bytes.NewReader(f.Data), f.Name)
				if err != nil {
					t.Fatal(err)
				}
				if format == "" {
					continue
				}
				if !format.Served() {
					caught = true
					continue
				}
				refs, err := diskfmt.Refs(bytes.NewReader(f.Data), int64(len(f.Data)), format)
				if err != nil {
					t.Fatalf("%s: %v", f.Name, err)
				}
				for _, r := range refs {
					if strings.Contains(r.Name, strings.TrimPrefix(target, "/")) {
						caught = true
					}
				}
			}
			if !caught {
				t.Fatalf("nothing in %s names %s", c.Name, target)
			}
		})
	}
}

func TestBenignDisks(t *testing.T) {
	tests := []struct {
		name     string
		data     []byte
		format   diskfmt.Format
		wantRefs []diskfmt.Ref
	}{
		{"disk.qcow2", diskfmttest.Qcow2(3, "", "", false), diskfmt.Qcow2, nil},
		{"disk.qcow2", diskfmttest.Qcow2(2, "", "", false), diskfmt.Qcow2, nil},
		{"disk.img", make([]byte, 4096), diskfmt.Raw, nil},
		{"notes.txt", []byte("hello"), "", nil},
		{"empty.img", nil, "", nil},
		{"machine.vmx", []byte(".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\n"), "", nil},
		{"disk.vmdk", []byte("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n" +
			"RW 4192256 SPARSE \"disk-s001.vmdk\"\nRW 4192256 SPARSE \"disk-s002.vmdk\"\n\nddb.adapterType = \"lsilogic\"\n"),
			diskfmt.VMDK, []diskfmt.Ref{{Kind: "extent", Name: "disk-s001.vmdk"}, {Kind: "extent", Name: "disk-s002.vmdk"}}},
		{"disk.vmdk", diskfmttest.Sparse(2048, 1, 20, []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicSparse\"\nRW 2048 SPARSE \"disk.vmdk\"\n")),
			diskfmt.VMDK, []diskfmt.Ref{{Kind: "extent", Name: "disk.vmdk"}}},
	}
	for _, tt := range tests {
		format, err := diskfmt.Detect(bytes.NewReader(tt.data), tt.name)
		if err != nil || format != tt.format {
			t.Errorf("%s: Detect = %q, %v; want %q", tt.name, format, err, tt.format)
			continue
		}
		refs, err := diskfmt.Refs(bytes.NewReader(tt.data), int64(len(tt.data)), format)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
		if len(refs) != len(tt.wantRefs) {
			t.Errorf("%s: refs %v, want %v", tt.name, refs, tt.wantRefs)
			continue
		}
		for i := range refs {
			if refs[i] != tt.wantRefs[i] {
				t.Errorf("%s: refs %v, want %v", tt.name, refs, tt.wantRefs)
			}
		}
	}
}

func TestPlainName(t *testing.T) {
	for name, want := range map[string]bool{
		"disk-flat.vmdk": true, "sub/disk.vmdk": true, "": false, "/etc/passwd": false,
		"nbd://host/x": false, "json:{}": false, `a\b`: false, "a\x00b": false,
	} {
		if got := diskfmt.PlainName(name); got != want {
			t.Errorf("PlainName(%q) = %v", name, got)
		}
	}
}
