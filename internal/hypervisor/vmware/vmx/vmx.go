// Package vmx reads and edits VMware .vmx (and .vmsd, .vmxf) configuration
// files without disturbing anything it is not asked to change.
//
// A .vmx file is a list of lines of the form
//
//	key = "value"
//
// with '#' comment lines, blank lines and, by convention, a first line
// `.encoding = "UTF-8"` naming the character set of the values. Keys are
// case-insensitive for VMware. Inside a quoted value VMware escapes bytes
// that cannot appear literally (the double quote, the '|' escape character
// itself, control characters such as a newline) as '|' followed by two
// hexadecimal digits: a '"' is written "|22", a newline "|0A".
//
// A File keeps every line exactly as it was read, including its line ending
// (LF or CRLF), odd spacing, comments, lines it cannot make sense of, and a
// missing final newline, so that Bytes of an unedited File returns the input
// byte for byte. Set rewrites only the value of the line it changes and
// Delete removes only the lines of the key it deletes.
package vmx

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// File is a parsed .vmx file. The zero value is an empty file ready to use.
type File struct {
	lines []line
}

// line is one line of the file. raw is its full text including the line
// ending; for an entry, the value token spans raw[valStart:valEnd].
type line struct {
	raw      string
	entry    bool
	key      string // as written, trimmed
	valStart int
	valEnd   int
	quoted   bool
	closed   bool // quoted and the closing quote is present
}

// Parse parses data. It never fails: lines that are not `key = value`
// entries are kept verbatim as they are.
func Parse(data []byte) *File {
	f := &File{}
	s := string(data)
	for len(s) > 0 {
		i := strings.IndexByte(s, '\n')
		var raw string
		if i < 0 {
			raw, s = s, ""
		} else {
			raw, s = s[:i+1], s[i+1:]
		}
		f.lines = append(f.lines, parseLine(raw, len(f.lines) == 0))
	}
	return f
}

// ReadFile reads and parses the file at path.
func ReadFile(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data), nil
}

// bom is the UTF-8 byte order mark some editors put at the start of a file.
const bom = "\xef\xbb\xbf"

// parseLine classifies one raw line.
func parseLine(raw string, first bool) line {
	l := line{raw: raw}
	body := trimEOL(raw)
	start := 0
	if first && strings.HasPrefix(body, bom) {
		start = len(bom)
	}
	trimmed := strings.TrimLeft(body[start:], " \t")
	if trimmed == "" || trimmed[0] == '#' {
		return l
	}
	eq := strings.IndexByte(body[start:], '=')
	if eq < 0 {
		return l
	}
	eq += start
	key := strings.Trim(body[start:eq], " \t")
	if key == "" {
		return l
	}
	l.entry = true
	l.key = key
	// The value token starts at the first non-blank byte after '='.
	v := eq + 1
	for v < len(body) && (body[v] == ' ' || body[v] == '\t') {
		v++
	}
	l.valStart = v
	if v < len(body) && body[v] == '"' {
		l.quoted = true
		if j := strings.IndexByte(body[v+1:], '"'); j >= 0 {
			l.closed = true
			l.valEnd = v + 1 + j + 1
		} else {
			l.valEnd = len(body)
		}
		return l
	}
	// Unquoted value: up to trailing blanks.
	end := len(body)
	for end > v && (body[end-1] == ' ' || body[end-1] == '\t' || body[end-1] == '\r') {
		end--
	}
	l.valEnd = end
	return l
}

// trimEOL returns raw without its "\n" or "\r\n" terminator.
func trimEOL(raw string) string {
	if strings.HasSuffix(raw, "\n") {
		raw = raw[:len(raw)-1]
		return strings.TrimSuffix(raw, "\r")
	}
	return raw
}

// value returns the decoded value of an entry line.
func (l *line) value() string {
	tok := l.raw[l.valStart:l.valEnd]
	if l.quoted {
		tok = tok[1:]
		if l.closed {
			tok = tok[:len(tok)-1]
		}
		return Unescape(tok)
	}
	return tok
}

// Bytes returns the file's contents. For a File that has not been edited
// it is exactly the data given to Parse.
func (f *File) Bytes() []byte {
	var b bytes.Buffer
	for _, l := range f.lines {
		b.WriteString(l.raw)
	}
	return b.Bytes()
}

// String returns the file's contents as a string.
func (f *File) String() string { return string(f.Bytes()) }

// find returns the indexes of the entry lines whose key matches key,
// case-insensitively, in file order.
func (f *File) find(key string) []int {
	var idx []int
	for i := range f.lines {
		if f.lines[i].entry && strings.EqualFold(f.lines[i].key, key) {
			idx = append(idx, i)
		}
	}
	return idx
}

// Get returns the decoded value of key (compared case-insensitively) and
// whether it is present. When a key appears more than once the last
// occurrence wins.
func (f *File) Get(key string) (string, bool) {
	idx := f.find(key)
	if len(idx) == 0 {
		return "", false
	}
	return f.lines[idx[len(idx)-1]].value(), true
}

// Has reports whether key is present.
func (f *File) Has(key string) bool {
	return len(f.find(key)) > 0
}

// Keys returns the keys of the file, each once, as first written and in
// file order.
func (f *File) Keys() []string {
	var keys []string
	seen := map[string]bool{}
	for _, l := range f.lines {
		if !l.entry {
			continue
		}
		k := strings.ToLower(l.key)
		if !seen[k] {
			seen[k] = true
			keys = append(keys, l.key)
		}
	}
	return keys
}

// Encoding returns the value of the `.encoding` key, or "" when absent.
// Values are returned and stored as bytes in that encoding; goldvm only
// writes ASCII values.
func (f *File) Encoding() string {
	v, _ := f.Get(".encoding")
	return v
}

// ErrBadKey is returned by Set for a key that cannot be written.
var ErrBadKey = errors.New("vmx: invalid key")

// validKey reports whether key can be written as an entry key.
func validKey(key string) bool {
	if key == "" || key[0] == '#' || strings.HasPrefix(key, bom) {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c == '=' || c == '"' || c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// Set sets key to value. Every existing line of key (compared
// case-insensitively) keeps its place, its key spelling, its spacing and
// its line ending; only the value is rewritten, quoted and escaped.
// A new key is appended at the end of the file.
func (f *File) Set(key, value string) error {
	if !validKey(key) {
		return fmt.Errorf("%w: %q", ErrBadKey, key)
	}
	quoted := `"` + Escape(value) + `"`
	idx := f.find(key)
	for _, i := range idx {
		l := f.lines[i]
		raw := l.raw[:l.valStart] + quoted + l.raw[l.valEnd:]
		f.lines[i] = parseLine(raw, i == 0)
	}
	if len(idx) > 0 {
		return nil
	}
	eol := f.eol()
	if n := len(f.lines); n > 0 && !strings.HasSuffix(f.lines[n-1].raw, "\n") {
		// The last line had no terminator; give it one before appending.
		f.lines[n-1] = parseLine(f.lines[n-1].raw+eol, n == 1)
	}
	f.lines = append(f.lines, parseLine(key+" = "+quoted+eol, len(f.lines) == 0))
	return nil
}

// Delete removes every line of key (compared case-insensitively) and
// reports whether there was any.
func (f *File) Delete(key string) bool {
	idx := f.find(key)
	if len(idx) == 0 {
		return false
	}
	kept := f.lines[:0:0]
	j := 0
	for i, l := range f.lines {
		if j < len(idx) && idx[j] == i {
			j++
			continue
		}
		kept = append(kept, l)
	}
	f.lines = kept
	return true
}

// eol returns the line ending the file uses: that of its first terminated
// line, "\n" by default.
func (f *File) eol() string {
	for _, l := range f.lines {
		if strings.HasSuffix(l.raw, "\r\n") {
			return "\r\n"
		}
		if strings.HasSuffix(l.raw, "\n") {
			return "\n"
		}
	}
	return "\n"
}

// WriteFile writes the file to path atomically: to a temporary file in the
// same directory, synced, then renamed over path, and the directory synced.
// An existing file's permission bits are kept; perm is used for a new one.
func (f *File) WriteFile(path string, perm os.FileMode) error {
	if st, err := os.Stat(path); err == nil {
		perm = st.Mode().Perm()
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmpName)
		return err
	}
	if _, err := tmp.Write(f.Bytes()); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmpName)
		return err
	}
	if err := os.Rename(tmpName, path); err != nil {
		os.Remove(tmpName)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		// Best effort: not every platform can sync a directory.
		_ = d.Sync()
		d.Close()
	}
	return nil
}

const hexDigits = "0123456789ABCDEF"

// Escape encodes s for use inside a quoted .vmx value: '"', '|' and control
// bytes become '|' and two upper-case hexadecimal digits.
func Escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '"' || c == '|' || c < 0x20 || c == 0x7f {
			b.WriteByte('|')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xf])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Unescape decodes a quoted .vmx value: each '|' followed by two hexadecimal
// digits becomes that byte; any other '|' is kept as it is.
func Unescape(s string) string {
	if !strings.Contains(s, "|") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '|' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}
