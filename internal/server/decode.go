package server

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// decodeJSON reads a JSON request body into v, strictly: the media type must
// be application/json, the body at most MaxBodyBytes, no unknown fields, one
// value only. Syntax errors name the line and column.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return errdefs.Newf(errdefs.ErrUnsupportedMedia, "unsupported-media-type",
			"request body must be application/json (Content-Type was %s)", quote(r.Header.Get("Content-Type")))
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errdefs.Newf(errdefs.ErrInvalid, "request-too-large", "request body is larger than %d bytes", MaxBodyBytes)
		}
		return errdefs.New(errdefs.ErrInvalid, "invalid-json", "could not read request body", err)
	}
	return DecodeStrict(data, v)
}

// DecodeStrict decodes one JSON value from data into v with the API's rules
// and error codes: "invalid-json" for malformed JSON (with line and column)
// and for an object that gives one key twice; "invalid-request" for
// well-formed JSON with wrong or unknown fields, including a key that names
// a field only when case is ignored ("CPUS"). encoding/json alone would
// take the last of two equal keys and match keys in any case; another
// parser reading the same body could then see other values than goldvm.
func DecodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if dec.More() {
			line, col := position(data, int(dec.InputOffset()))
			return errdefs.Newf(errdefs.ErrInvalid, "invalid-json", "unexpected data after the JSON object at line %d, column %d", line, col)
		}
		var extra json.RawMessage
		if dec.Decode(&extra) != io.EOF {
			line, col := position(data, int(dec.InputOffset()))
			return errdefs.Newf(errdefs.ErrInvalid, "invalid-json", "unexpected data after the JSON object at line %d, column %d", line, col)
		}
		return checkKeys(data, reflect.TypeOf(v))
	}
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		// Offset counts the bytes read including the offending one.
		line, col := position(data, max(int(syn.Offset)-1, 0))
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-json", "malformed JSON at line %d, column %d: %s", line, col, syn.Error())
	case errors.Is(err, io.EOF):
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-json", "request body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		line, col := position(data, len(data))
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-json", "malformed JSON: body ends early at line %d, column %d", line, col)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "body"
		}
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-request", "field %s must be %s, not JSON %s", quote(field), typ.Type, typ.Value)
	}
	// An unknown field ("json: unknown field \"x\"") is reported by
	// checkKeys with the field name cut short; it also tells a key in
	// the wrong case from an unknown one.
	if kerr := checkKeys(data, reflect.TypeOf(v)); kerr != nil {
		return kerr
	}
	// Errors from our own UnmarshalJSON methods (memory, durations).
	return errdefs.Newf(errdefs.ErrInvalid, "invalid-request", "%s", strings.TrimPrefix(err.Error(), "json: "))
}

// checkKeys walks the JSON value in data (already known to be well formed)
// along the Go type t it decodes into, and refuses an object that gives a
// key twice, and a key that is not the exact JSON name of a field of the
// struct it fills.
func checkKeys(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return walkKeys(dec, data, t)
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// walkKeys reads one JSON value from dec. t is the type it decodes into,
// or nil when that is opaque (any, or a type with its own UnmarshalJSON):
// then keys are only checked for duplicates.
func walkKeys(dec *json.Decoder, data []byte, t reflect.Type) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && (reflect.PointerTo(t).Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler)) {
		t = nil
	}
	tok, err := dec.Token()
	if err != nil {
		return nil // malformed: the decoder has said so
	}
	switch tok {
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for dec.More() {
			if err := walkKeys(dec, data, elem); err != nil {
				return err
			}
		}
		dec.Token() // ]
	case json.Delim('{'):
		var fields map[string]reflect.Type
		var elem reflect.Type
		switch {
		case t != nil && t.Kind() == reflect.Struct:
			fields = jsonFields(t)
		case t != nil && t.Kind() == reflect.Map:
			elem = t.Elem()
		}
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return nil
			}
			key, _ := tok.(string)
			if seen[key] {
				line, col := position(data, int(dec.InputOffset()))
				return errdefs.Newf(errdefs.ErrInvalid, "invalid-json", "key %s appears twice in one object (again at line %d, column %d)", quote(key), line, col)
			}
			seen[key] = true
			ft := elem
			if fields != nil {
				f, ok := fields[key]
				if !ok {
					for name := range fields {
						if strings.EqualFold(name, key) {
							return errdefs.Newf(errdefs.ErrInvalid, "invalid-request", "unknown field %s: field names are case-sensitive; did you mean %q?", quote(key), name)
						}
					}
					return errdefs.Newf(errdefs.ErrInvalid, "invalid-request", "unknown field %s", quote(key))
				}
				ft = f
			}
			if err := walkKeys(dec, data, ft); err != nil {
				return err
			}
		}
		dec.Token() // }
	}
	return nil
}

// jsonFields returns the JSON names of t's fields and their types, as
// encoding/json names them (tag name, else the Go name; embedded structs
// without a tag lend their fields).
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for n, typ := range jsonFields(ft) {
					if _, ok := out[n]; !ok {
						out[n] = typ
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = ft
	}
	return out
}

// position turns a byte offset into a 1-based line and column.
func position(data []byte, off int) (line, col int) {
	off = min(off, len(data))
	line, col = 1, 1
	for _, c := range data[:off] {
		if c == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return line, col
}

// maxEcho is how much of a caller's input (an id, a key, a field name, a
// header) an error message quotes; longer input is cut, with its length.
const maxEcho = 64

// quote returns s quoted as %q does, cut to its first maxEcho bytes (on a
// character boundary) when longer.
func quote(s string) string {
	if len(s) <= maxEcho {
		return fmt.Sprintf("%q", s)
	}
	cut := maxEcho
	for cut > 0 && !isRuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%q… (%d bytes)", s[:cut], len(s))
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }
