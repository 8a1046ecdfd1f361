package vmx

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func samples(t testing.TB) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "*.vmx"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) < 4 {
		t.Fatalf("expected the sample .vmx files in testdata, found %v", paths)
	}
	out := map[string][]byte{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(p)] = data
	}
	return out
}

// TestRoundTripSamples proves that an unedited file is written back byte for
// byte: comments, blank lines, odd spacing, CRLF, a non-UTF-8 encoding and a
// missing final newline all survive.
func TestRoundTripSamples(t *testing.T) {
	for name, data := range samples(t) {
		t.Run(name, func(t *testing.T) {
			f := Parse(data)
			if got := f.Bytes(); !bytes.Equal(got, data) {
				t.Fatalf("round trip changed the file:\n got %q\nwant %q", got, data)
			}
			// Through a file on disk too.
			p := filepath.Join(t.TempDir(), name)
			if err := f.WriteFile(p, 0o644); err != nil {
				t.Fatal(err)
			}
			back, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back, data) {
				t.Fatal("WriteFile changed the file")
			}
		})
	}
}

// TestGet proves values are found case-insensitively, unquoted and decoded.
func TestGet(t *testing.T) {
	s := samples(t)
	fusion := Parse(s["fusion-macos.vmx"])
	win := Parse(s["workstation-windows.vmx"])
	linux := Parse(s["linux-debian.vmx"])
	cases := []struct {
		f    *File
		key  string
		want string
	}{
		{fusion, "guestOS", "darwin23-64"},
		{fusion, "GUESTOS", "darwin23-64"},
		{fusion, "sata0:0.fileName", "macOS 14.vmdk"},
		{fusion, "annotation", "CI base image\nbuilt by packer\nuser=ci, password=\"see vault\""},
		{fusion, ".encoding", "UTF-8"},
		{win, "memsize", "8192"},
		{win, "sata0:1.fileName", `C:\Users\ci\Downloads\Win11_23H2_English_x64.iso`},
		{win, "sharedFolder0.hostPath", "D:\\builds\\caf\xe9 artefacts"},
		{win, "guestOS.detailed.data", `bitness="64" distroName="Windows 11 Pro"`},
		{linux, "numvcpus", "1"},
		{linux, "memsize", "1024"},
		{linux, "ide1:0.present", "TRUE"},
		{linux, "ide1:0.deviceType", "cdrom-raw"},
		{linux, "ide1:0.autodetect", "TRUE"},
		{linux, "guestinfo.kernel.cmdline", "console=ttyS0,115200n8 init=/sbin/init quiet"},
		{linux, "guestinfo.userdata", "I2Nsb3VkLWNvbmZpZwp1c2VyczogW2NpXQo="},
		{linux, "broken.quote", "no closing quote"},
		{linux, "trailing.comment", "yes"},
		{linux, "displayname", "debian-12-amd64 (duplicate, last wins)"},
	}
	for _, c := range cases {
		got, ok := c.f.Get(c.key)
		if !ok || got != c.want {
			t.Errorf("Get(%q) = %q, %v; want %q", c.key, got, ok, c.want)
		}
	}
	if _, ok := linux.Get("odd line without an equals sign"); ok {
		t.Error("a line without '=' must not be an entry")
	}
	if _, ok := linux.Get("#!/usr/bin/vmware"); ok {
		t.Error("a comment must not be an entry")
	}
	if got := win.Encoding(); got != "windows-1252" {
		t.Errorf("Encoding = %q", got)
	}
}

// TestSetInPlace proves Set rewrites only the value, keeping the key's case,
// the spacing, the line ending and everything else.
func TestSetInPlace(t *testing.T) {
	data := samples(t)["linux-debian.vmx"]
	f := Parse(data)
	if err := f.Set("NUMVCPUS", "4"); err != nil {
		t.Fatal(err)
	}
	if err := f.Set("MEMSIZE", "2048"); err != nil {
		t.Fatal(err)
	}
	if err := f.Set("ide1:0.deviceType", "cdrom-image"); err != nil {
		t.Fatal(err)
	}
	if err := f.Set("trailing.comment", `a "quoted" | value`); err != nil {
		t.Fatal(err)
	}
	want := string(data)
	want = strings.Replace(want, `numvcpus   =   "1"`, `numvcpus   =   "4"`, 1)
	want = strings.Replace(want, `memsize="1024"`, `memsize="2048"`, 1)
	want = strings.Replace(want, "ide1:0.deviceType = cdrom-raw", `ide1:0.deviceType = "cdrom-image"`, 1)
	want = strings.Replace(want, `trailing.comment = "yes" #`, `trailing.comment = "a |22quoted|22 |7C value" #`, 1)
	if got := f.String(); got != want {
		t.Fatalf("Set changed more than the values:\n got %q\nwant %q", got, want)
	}
	if v, _ := Parse(f.Bytes()).Get("trailing.comment"); v != `a "quoted" | value` {
		t.Fatalf("value did not survive a re-parse: %q", v)
	}
}

// TestSetDuplicate proves every occurrence of a repeated key is updated, so
// the file means the same whichever occurrence VMware honours.
func TestSetDuplicate(t *testing.T) {
	f := Parse(samples(t)["linux-debian.vmx"])
	if err := f.Set("DisplayName", "goldvm-x"); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(f.String(), `displayName = "goldvm-x"`); n != 2 {
		t.Fatalf("want both displayName lines updated, got %d:\n%s", n, f)
	}
}

// TestSetAppendCRLF proves a new key is appended with the file's own line
// ending, and the missing final newline is supplied first.
func TestSetAppendCRLF(t *testing.T) {
	data := samples(t)["workstation-windows.vmx"]
	if bytes.HasSuffix(data, []byte("\n")) {
		t.Fatal("sample should lack a final newline")
	}
	f := Parse(data)
	if err := f.Set("msg.autoAnswer", "TRUE"); err != nil {
		t.Fatal(err)
	}
	want := string(data) + "\r\n" + `msg.autoAnswer = "TRUE"` + "\r\n"
	if got := f.String(); got != want {
		t.Fatalf("append:\n got %q\nwant %q", got[len(got)-80:], want[len(want)-80:])
	}
	if strings.Contains(strings.ReplaceAll(f.String(), "\r\n", ""), "\n") {
		t.Fatal("a bare LF was written into a CRLF file")
	}
}

// TestSetAppendLF covers the LF file without a final newline and an empty file.
func TestSetAppendLF(t *testing.T) {
	f := Parse(samples(t)["no-final-newline.vmx"])
	if err := f.Set("uuid.action", "create"); err != nil {
		t.Fatal(err)
	}
	if got, want := f.String(), "no final newline = \"x\"\nlast = \"y\"\nuuid.action = \"create\"\n"; got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	var empty File
	if err := empty.Set(".encoding", "UTF-8"); err != nil {
		t.Fatal(err)
	}
	if got := empty.String(); got != ".encoding = \"UTF-8\"\n" {
		t.Fatalf("empty file: %q", got)
	}
}

// TestDelete proves Delete removes all lines of a key and nothing else.
func TestDelete(t *testing.T) {
	data := samples(t)["fusion-macos.vmx"]
	f := Parse(data)
	if !f.Delete("ETHERNET0.GENERATEDADDRESS") {
		t.Fatal("Delete reported nothing deleted")
	}
	if f.Delete("no.such.key") {
		t.Fatal("Delete of a missing key reported true")
	}
	want := strings.Replace(string(data), "ethernet0.generatedAddress = \"00:0c:29:4a:7e:11\"\n", "", 1)
	if got := f.String(); got != want {
		t.Fatal("Delete removed more than the key's line")
	}
	if !f.Has("ethernet0.generatedAddressOffset") {
		t.Fatal("Delete removed a key sharing the prefix")
	}
	lin := Parse(samples(t)["linux-debian.vmx"])
	lin.Delete("displayName")
	if lin.Has("displayname") || strings.Contains(lin.String(), "displayName") {
		t.Fatal("Delete left a duplicate behind")
	}
}

// TestKeys proves Keys returns original spelling, each key once, in order.
func TestKeys(t *testing.T) {
	f := Parse([]byte("B = \"1\"\na = \"2\"\nb = \"3\"\n# c = \"4\"\n"))
	got := strings.Join(f.Keys(), ",")
	if got != "B,a" {
		t.Fatalf("Keys = %s", got)
	}
}

// TestSetBadKey proves keys that would corrupt the file are refused.
func TestSetBadKey(t *testing.T) {
	var f File
	for _, k := range []string{"", "a=b", "#x", "a b", "a\nb", `a"b`} {
		if err := f.Set(k, "v"); err == nil {
			t.Errorf("Set(%q) accepted", k)
		}
	}
	if len(f.Bytes()) != 0 {
		t.Fatal("refused Set wrote something")
	}
}

// TestEscape proves the |XX encoding round-trips every byte and leaves a
// stray '|' alone when decoding.
func TestEscape(t *testing.T) {
	var all []byte
	for i := 0; i < 256; i++ {
		all = append(all, byte(i))
	}
	enc := Escape(string(all))
	if strings.ContainsAny(enc, "\"\n\r") {
		t.Fatal("escaped value contains a quote or line break")
	}
	if Unescape(enc) != string(all) {
		t.Fatal("escape round trip failed")
	}
	if got := Unescape("a|b|2|zz|22"); got != "a|b|2|zz\"" {
		t.Fatalf("Unescape = %q", got)
	}
	if got := Escape(`say "hi"|bye`); got != "say |22hi|22|7Cbye" {
		t.Fatalf("Escape = %q", got)
	}
}

// TestWriteFileKeepsMode proves the atomic write keeps the file's mode and
// leaves no temporary file behind.
func TestWriteFileKeepsMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.vmx")
	if err := os.WriteFile(p, []byte("a = \"1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Set("a", "2"); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteFile(p, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v", st.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("leftover files: %v", ents)
	}
	if got, _ := os.ReadFile(p); string(got) != "a = \"2\"\n" {
		t.Fatalf("content %q", got)
	}
}

// FuzzRoundTrip proves Parse never panics and Bytes gives back the input
// exactly, and that a value set on any parsed file reads back unchanged.
func FuzzRoundTrip(f *testing.F) {
	for _, data := range samples(f) {
		f.Add(data)
	}
	for _, s := range []string{
		"", "\n", "\r\n", "\r", "=", "a=", "=b", `a = "`, `a = ""`, `a = "|"`, `a = "|2"`,
		"\xef\xbb\xbf.encoding = \"UTF-8\"\n", "#a = \"b\"", " \t# x\r\n", "a = b = c\n",
		"a = \"x\" \"y\"\r\n", "\x00=\x00\n", "k = \"v\"\r\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := Parse(data)
		if got := p.Bytes(); !bytes.Equal(got, data) {
			t.Fatalf("round trip:\n got %q\nwant %q", got, data)
		}
		for _, k := range p.Keys() {
			p.Get(k)
		}
		// Setting a value must read back, also after a re-parse.
		val := string(data)
		if len(val) > 64 {
			val = val[:64]
		}
		if err := p.Set("goldvm.fuzz", val); err != nil {
			t.Fatal(err)
		}
		if got, _ := p.Get("goldvm.fuzz"); got != val {
			t.Fatalf("Get after Set = %q want %q", got, val)
		}
		if got, _ := Parse(p.Bytes()).Get("goldvm.fuzz"); got != val {
			t.Fatalf("Get after re-parse = %q want %q", got, val)
		}
	})
}
